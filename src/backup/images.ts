import Docker from 'dockerode';
import { request } from 'undici';
import { BackupError } from './errors.js';
import type { ImageEntry } from './manifest.js';

/**
 * Container images in snapshots: `docker commit` of an instance's container, tagged
 * with the service, version and time, pushed to the configured registry, and pulled
 * back by digest on restore, so the image restored is byte for byte the one kept.
 */
export class ImageKeeper {
  private readonly docker: Docker;

  constructor(
    socket: string,
    /** e.g. "127.0.0.1:5000" */
    readonly registry: string,
  ) {
    this.docker = new Docker({ socketPath: socket });
  }

  /** Commits `container` and pushes it as REGISTRY/understudy/SERVICE:VERSION-TIME. */
  async keep(container: string, ids: { service: string; instance: string; version: string; time: number }): Promise<ImageEntry> {
    const repository = `${this.registry}/understudy/${ids.service}`;
    const tag = `${sanitize(ids.version)}-${stamp(ids.time)}`;
    const ref = `${repository}:${tag}`;
    try {
      await this.docker.getContainer(container).commit({ repo: repository, tag, comment: `understudy snapshot of ${ids.service}/${ids.instance} at version ${ids.version}`, pause: false });
    } catch (error) {
      throw new BackupError('IMAGES_FAILED', `could not commit container ${container}: ${engineMessage(error)}`, {}, { cause: error });
    }
    let digest: string | undefined;
    try {
      // The engine wants an X-Registry-Auth header even for a registry without auth.
      const stream = await this.docker.getImage(ref).push({ authconfig: { serveraddress: this.registry } });
      const events = await follow(this.docker, stream);
      const failed = events.find((e) => e.error !== undefined);
      if (failed) throw new Error(failed.errorDetail?.message ?? failed.error);
      digest = events.map((e) => e.aux?.Digest).find((d): d is string => typeof d === 'string');
    } catch (error) {
      // The committed image stays local under its tag; nothing in the registry changed.
      throw new BackupError('IMAGES_FAILED', `could not push ${ref} to the registry ${this.registry}: ${engineMessage(error)}`, {}, { cause: error });
    }
    if (!digest) throw new BackupError('IMAGES_FAILED', `the registry ${this.registry} did not return a digest for ${ref}`);
    const { Size } = await this.docker.getImage(ref).inspect();
    return { instance: ids.instance, ref, digest, size: Size };
  }

  /** Whether the registry still has the image (its manifest, by digest). */
  async inRegistry(entry: ImageEntry): Promise<{ ok: boolean; detail: string }> {
    const { host, name } = splitRef(entry.ref);
    try {
      const answer = await request(`http://${host}/v2/${name}/manifests/${entry.digest}`, {
        method: 'HEAD',
        headers: { accept: 'application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json' },
        signal: AbortSignal.timeout(10_000),
      });
      await answer.body.dump();
      if (answer.statusCode === 200) return { ok: true, detail: 'in the registry' };
      return { ok: false, detail: `the registry ${host} answered ${answer.statusCode} for ${entry.ref}@${entry.digest}` };
    } catch (error) {
      return { ok: false, detail: `the registry ${host} is not reachable: ${(error as Error).message}` };
    }
  }

  /** Pulls the kept image by digest and tags it `as` (the image an instance runs), unless that tag already is it. */
  async restore(entry: ImageEntry, as: string): Promise<'present' | 'pulled'> {
    const { repository } = splitRef(entry.ref);
    const byDigest = `${repository}@${entry.digest}`;
    const current = await this.imageId(as);
    const kept = await this.imageId(byDigest);
    if (current !== undefined && current === kept) return 'present';
    if (kept === undefined) {
      try {
        const stream = await this.docker.pull(byDigest);
        const events = await follow(this.docker, stream);
        const failed = events.find((e) => e.error !== undefined);
        if (failed) throw new Error(failed.errorDetail?.message ?? failed.error);
      } catch (error) {
        throw new BackupError('IMAGES_FAILED', `could not pull ${byDigest}: ${engineMessage(error)}`, {}, { cause: error });
      }
    }
    const [repo, tag] = splitTag(as);
    await this.docker.getImage(byDigest).tag({ repo, tag });
    return 'pulled';
  }

  async imageId(ref: string): Promise<string | undefined> {
    try {
      return (await this.docker.getImage(ref).inspect()).Id;
    } catch (error) {
      if ((error as { statusCode?: number }).statusCode === 404) return undefined;
      throw error;
    }
  }
}

interface ProgressEvent {
  error?: string;
  errorDetail?: { message?: string };
  aux?: { Digest?: string };
}

function follow(docker: Docker, stream: NodeJS.ReadableStream): Promise<ProgressEvent[]> {
  return new Promise((resolve, reject) =>
    docker.modem.followProgress(stream, (error: Error | null, output: ProgressEvent[]) => (error ? reject(error) : resolve(output))),
  );
}

/** `host:port/name:tag` → its parts; the first component is a registry host when it has a dot, a colon or is localhost. */
function splitRef(ref: string): { host: string; name: string; repository: string } {
  const [repository] = splitTag(ref.split('@')[0]!);
  const slash = repository.indexOf('/');
  const first = repository.slice(0, slash);
  if (slash > 0 && /[.:]|^localhost$/.test(first)) return { host: first, name: repository.slice(slash + 1), repository };
  return { host: 'registry-1.docker.io', name: repository, repository };
}

/** `repo:tag` → [repo, tag]; a colon inside the registry host is not a tag. */
function splitTag(ref: string): [string, string] {
  const colon = ref.lastIndexOf(':');
  if (colon > ref.lastIndexOf('/')) return [ref.slice(0, colon), ref.slice(colon + 1)];
  return [ref, 'latest'];
}

function sanitize(version: string): string {
  return version.replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 80);
}

function stamp(time: number): string {
  return new Date(time).toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
}

function engineMessage(error: unknown): string {
  const json = (error as { json?: { message?: string } }).json;
  return json?.message ?? (error as Error).message;
}
