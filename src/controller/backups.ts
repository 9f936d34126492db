import { createHash } from 'node:crypto';
import { lstat, readFile } from 'node:fs/promises';
import path from 'node:path';
import { Cron } from 'croner';
import {
  BackupError,
  entrySource,
  ImageKeeper,
  parseSnapshotId,
  type ImageEntry,
  type Manifest,
  type SnapshotStore,
  type SnapshotSummary,
  type VerifyReport,
} from '../backup/index.js';
import { atVersion, pathsAtVersion, type Config, type ServiceConfig } from '../config/index.js';
import type { EventBody } from '../core/index.js';
import { DurableFile } from '../jobs/index.js';
import type { DeployBackups } from './deploy.js';
import type { ServiceController } from './service.js';

type Trigger = 'manual' | 'schedule' | 'config-change' | 'deploy' | 'known-good';

/**
 * Snapshots of what each service needs to serve: taken on demand, on a schedule,
 * when the config changed, before every deploy and when a version becomes known-good;
 * pruned by retention after each one; put back on a rollback when the files or image
 * a version needs are missing or changed.
 */
export class Backups implements DeployBackups {
  private readonly schedules: Cron[] = [];
  private readonly images: ImageKeeper | undefined;

  constructor(
    private readonly config: Config,
    readonly store: SnapshotStore,
    private readonly deps: {
      services: (name: string) => ServiceController | undefined;
      publish(service: string, event: EventBody): void;
      onError(message: string, error: unknown): void;
      /** Why this node may not take scheduled snapshots now (in a cluster, only the leader does), or undefined. */
      notLeader?: () => string | undefined;
    },
  ) {
    this.images = config.backup.registry === undefined ? undefined : new ImageKeeper(config.docker.socket, config.backup.registry);
  }

  /** Starts the schedules and takes the snapshots a config change calls for. */
  async start(): Promise<void> {
    const stateFile = path.join(this.config.stateDir, 'backup-state.json');
    const known = await readJson(stateFile);
    const next: Record<string, string> = {};
    for (const service of this.config.services) {
      const backup = service.backup;
      if (!backup || !keepsAnything(service)) continue;
      const fingerprint = createHash('sha256').update(JSON.stringify(service)).digest('hex');
      next[service.name] = fingerprint;
      if (backup.onConfigChange && known[service.name] !== undefined && known[service.name] !== fingerprint) {
        void this.snapshot(service.name, this.versionOf(service.name), 'config-change').catch(() => {});
      }
      if (backup.schedule) {
        this.schedules.push(
          new Cron(backup.schedule, { protect: true }, () => {
            // In a cluster every node has the schedule and the leader takes the snapshot.
            if (this.deps.notLeader?.() !== undefined) return;
            void this.snapshot(service.name, this.versionOf(service.name), 'schedule').catch(() => {});
          }),
        );
      }
    }
    const file = await DurableFile.create(stateFile);
    await file.write(`${JSON.stringify({ ...known, ...next }, null, 2)}\n`);
    await file.commit();
  }

  close(): void {
    for (const schedule of this.schedules) schedule.stop();
  }

  /** When each service's next scheduled snapshot is due. */
  nextRuns(): Record<string, number | null> {
    const runs: Record<string, number | null> = {};
    for (const [i, service] of this.config.services.filter((s) => s.backup?.schedule).entries()) {
      runs[service.name] = this.schedules[i]?.nextRun()?.getTime() ?? null;
    }
    return runs;
  }

  /**
   * Takes a snapshot of `service` at `version`, then applies retention. Resolves with
   * its id, or undefined when the service keeps nothing; rejects (after an event) when it fails.
   */
  async snapshot(service: string, version: string | null, trigger: Trigger): Promise<string | undefined> {
    const config = this.serviceConfig(service);
    if (!keepsAnything(config)) return undefined;
    const backup = config.backup!;
    try {
      const manifest = await this.store.create({
        service,
        version,
        trigger,
        paths: version === null ? backup.paths : pathsAtVersion(backup.paths, version),
        images: backup.images ? () => this.keepImages(config, version) : undefined,
      });
      const { bytes, newBytes } = manifest.totals;
      this.deps.publish(service, {
        type: 'snapshot-created',
        snapshot: manifest.id,
        version,
        trigger,
        bytes,
        newBytes,
        reason: `${trigger} snapshot of ${version === null ? service : `version ${version}`}: ${manifest.totals.files} files, ${bytes} bytes, ${newBytes} new${manifest.images.length ? `, image ${manifest.images[0]!.ref}` : ''}`,
      });
      await this.prune(false).catch((error: unknown) => this.deps.onError('could not apply snapshot retention', error));
      return manifest.id;
    } catch (error) {
      this.deps.publish(service, { type: 'snapshot-failed', version, trigger, reason: (error as Error).message });
      throw error;
    }
  }

  async markKnownGood(snapshot: string): Promise<void> {
    await this.store.setKnownGood(snapshot);
  }

  /** Applies retention to every service's snapshots; the newest known-good of each is always kept. */
  async prune(dryRun: boolean) {
    const perService = new Map(this.config.services.filter((s) => s.backup?.retention).map((s) => [s.name, s.backup!.retention!]));
    const result = await this.store.prune(this.config.backup.retention, { dryRun, perService });
    if (!dryRun && result.deleted.length > 0) {
      for (const service of new Set(result.deleted.map((id) => id.slice(0, id.lastIndexOf('-', id.lastIndexOf('-') - 1))))) {
        const deleted = result.deleted.filter((id) => id.startsWith(`${service}-`));
        this.deps.publish(service, {
          type: 'snapshots-pruned',
          deleted,
          freedBytes: result.freedBytes,
          reason: `retention deleted ${deleted.length} snapshot(s); ${result.freedBytes} bytes freed`,
        });
      }
    }
    return result;
  }

  /**
   * Re-reads every blob of one snapshot (or all) and records the outcome as a
   * `snapshots-verified` event per service, so the dashboard can say when each was
   * last found whole, and a damaged one raises an alert.
   */
  async verify(id?: string): Promise<VerifyReport> {
    const report = await this.store.verify(id);
    const byService = new Map<string, { checked: string[]; damaged: string[] }>();
    for (const snapshot of report.snapshots) {
      const service = parseSnapshotId(snapshot.id)?.service;
      if (service === undefined) continue;
      const tally = byService.get(service) ?? { checked: [], damaged: [] };
      tally.checked.push(snapshot.id);
      if (!snapshot.ok) tally.damaged.push(snapshot.id);
      byService.set(service, tally);
    }
    for (const [service, { checked, damaged }] of byService) {
      const first = report.problems.find((p) => damaged.includes(p.snapshot));
      this.deps.publish(service, {
        type: 'snapshots-verified',
        checked,
        damaged,
        reason:
          damaged.length === 0
            ? `${checked.length} snapshot(s) re-read: every one whole`
            : `${damaged.length} of ${checked.length} snapshot(s) damaged (${damaged.join(', ')})${first ? `: ${first.kind}: ${first.path}` : ''}`,
      });
    }
    return report;
  }

  /** Restores a snapshot's files (through staging, then a swap) and its image. */
  async restore(id: string, reason: string): Promise<{ files: number; bytes: number; images: string[] }> {
    const { manifest } = await this.store.get(id);
    // Refused before anything changes when a blob is damaged: the store's restore verifies first.
    const result = manifest.roots.length > 0 ? await this.store.restore(id) : { files: 0, bytes: 0 };
    const images = await this.restoreImages(manifest);
    this.deps.publish(manifest.service, { type: 'snapshot-restored', snapshot: id, version: manifest.version, reason });
    return { files: result.files, bytes: result.bytes, images };
  }

  /** Puts back what `version` needs when a file is missing or changed, or its image is not here. */
  async ensure(service: string, version: string): Promise<string | undefined> {
    const config = this.serviceConfig(service);
    if (!keepsAnything(config)) return undefined;
    const snapshot = await this.newestOf(service, version);
    if (!snapshot) return undefined;
    const { manifest } = await this.store.get(snapshot.id);
    if (await filesDiffer(manifest)) {
      await this.restore(snapshot.id, `rollback to ${version}: its files were missing or changed`);
      return `restored the files of version ${version} from snapshot ${snapshot.id}`;
    }
    const images = await this.restoreImages(manifest);
    return images.length > 0 ? `pulled ${images.join(', ')} from the registry` : undefined;
  }

  private async restoreImages(manifest: Manifest): Promise<string[]> {
    if (manifest.images.length === 0) return [];
    if (!this.images) throw new BackupError('IMAGES_FAILED', `snapshot ${manifest.id} keeps an image, but backup.registry is not set`);
    const config = this.serviceConfig(manifest.service);
    const pulled: string[] = [];
    const entry = manifest.images[0]!;
    const tags = new Set<string>();
    for (const instance of config.instances) {
      const resolved = manifest.version === null ? instance : atVersion(instance, manifest.version);
      if (resolved.runtime.type === 'docker') tags.add(resolved.runtime.image);
    }
    for (const tag of tags) {
      if ((await this.images.restore(entry, tag)) === 'pulled') pulled.push(`${tag} (${entry.digest.slice(0, 19)})`);
    }
    return pulled;
  }

  private async keepImages(config: ServiceConfig, version: string | null): Promise<ImageEntry[]> {
    const images = this.images!;
    const service = this.deps.services(config.name);
    const state = service?.machineState();
    // One image serves every instance of a version: keep the active instance's (else the first docker one's).
    const docker = config.instances.filter((i) => i.runtime.type === 'docker');
    const chosen = docker.find((i) => i.name === state?.active) ?? docker[0]!;
    const entry = await images.keep(`understudy-${config.name}.${chosen.name}`, {
      service: config.name,
      instance: chosen.name,
      version: version ?? 'unversioned',
      time: Date.now(),
    });
    return [entry];
  }

  private async newestOf(service: string, version: string): Promise<SnapshotSummary | undefined> {
    const all = (await this.store.list({ service })).filter((s): s is SnapshotSummary => !s.broken && s.version === version);
    return all.find((s) => s.knownGood) ?? all[0];
  }

  private versionOf(service: string): string | null {
    return this.deps.services(service)?.release ?? null;
  }

  private serviceConfig(name: string): ServiceConfig {
    const config = this.config.services.find((s) => s.name === name);
    if (!config) throw new BackupError('INVALID_INPUT', `no service named ${name}`);
    return config;
  }
}

function keepsAnything(service: ServiceConfig): boolean {
  return service.backup !== undefined && (service.backup.paths.length > 0 || service.backup.images);
}

/** Whether any file a snapshot recorded is missing, or differs in type, size or modification time. */
async function filesDiffer(manifest: Manifest): Promise<boolean> {
  for (const entry of manifest.entries) {
    try {
      const stat = await lstat(entrySource(manifest, entry));
      if (entry.type === 'file' && (!stat.isFile() || stat.size !== entry.size || Math.trunc(stat.mtimeMs) !== Math.trunc(entry.mtimeMs))) return true;
      if (entry.type === 'dir' && !stat.isDirectory()) return true;
      if (entry.type === 'symlink' && !stat.isSymbolicLink()) return true;
    } catch {
      return true;
    }
  }
  return false;
}

async function readJson(file: string): Promise<Record<string, string>> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as Record<string, string>;
  } catch {
    return {};
  }
}
