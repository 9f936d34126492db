import { randomBytes } from 'node:crypto';
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Docker from 'dockerode';
import { describe, it } from 'vitest';
import { MODEL_SERVER_PATH } from './fixture.js';

const require = createRequire(import.meta.url);

/** The engine the tests use: $DOCKER_HOST when it is unix://…, else /var/run/docker.sock (as Understudy's config does). */
export const DOCKER_SOCKET = process.env.DOCKER_HOST?.startsWith('unix://') ? process.env.DOCKER_HOST.slice('unix://'.length) : '/var/run/docker.sock';
export const docker = new Docker({ socketPath: DOCKER_SOCKET });
/** Made by scripts/docker-engine.sh from this machine's own node binary. */
export const NODE_BASE_IMAGE = `understudy/node-base:${process.versions.node}`;
/** Label on every image the tests build, so a leftover one can be found. */
export const TEST_IMAGE_LABEL = 'understudy.test';

const LISTEN_ANY_PATH = fileURLToPath(new URL('../fixtures/docker/listen-any.mjs', import.meta.url));

/** Why the docker tests cannot run here, or undefined when an engine answers and the base image is there. */
export async function dockerMissing(): Promise<string | undefined> {
  try {
    await withTimeout(docker.ping(), 3000);
  } catch (error) {
    return `no Docker Engine answers at ${DOCKER_SOCKET} (${(error as Error).message}); scripts/docker-engine.sh starts one`;
  }
  try {
    await withTimeout(docker.getImage(NODE_BASE_IMAGE).inspect(), 5000);
  } catch {
    return `the base image ${NODE_BASE_IMAGE} is not there; scripts/docker-engine.sh builds it`;
  }
  return undefined;
}

export async function dockerAvailable(): Promise<boolean> {
  return (await dockerMissing()) === undefined;
}

/**
 * describe() for tests that need a real Docker Engine. Without one the suite is skipped
 * with the reason in its name, except under CI (which installs the engine with
 * scripts/docker-engine.sh), where a missing engine fails the run instead of hiding it.
 * `missing` is what dockerMissing() said (awaited at the top of the test file).
 */
export function describeWithDocker(missing: string | undefined, name: string, suite: () => void): void {
  if (missing === undefined) {
    describe(name, suite);
  } else if (process.env.CI) {
    describe(name, () => {
      it('has a Docker Engine (CI must run scripts/docker-engine.sh)', () => {
        throw new Error(missing);
      });
    });
  } else {
    console.warn(`skipping "${name}": ${missing}`);
    describe.skip(`${name} (skipped: ${missing})`, suite);
  }
}

/** A name no other test run uses: lowercase letters and digits, as container and service names allow. */
export function uniqueName(prefix = 't'): string {
  return `${prefix}${randomBytes(4).toString('hex')}`;
}

const builds = new Map<string, { version: string; id: Promise<string> }>();
/** Every image id built in this run: a tag built again leaves the earlier image untagged. */
const builtIds = new Set<string>();

/**
 * Builds (once per tag and test run) an image of test/fixtures/model-server.mjs on the
 * node base image; its CMD serves on port 8000 with the given model version (and `args`,
 * e.g. `--fail-after 5` for a release that goes bad in service). Resolves to
 * the image id. listen-any.mjs makes the fixture listen on 0.0.0.0 inside the container.
 */
export function buildModelServerImage(tag: string, options: { version?: string; args?: string[] } = {}): Promise<string> {
  const version = options.version ?? '1.0';
  const key = JSON.stringify([version, options.args ?? []]);
  const cached = builds.get(tag);
  if (cached?.version === key) return cached.id;
  const id = build(tag, version, options.args ?? []);
  builds.set(tag, { version: key, id });
  id.catch(() => builds.delete(tag));
  return id;
}

async function build(tag: string, version: string, args: string[]): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'understudy-image-'));
  try {
    await cp(MODEL_SERVER_PATH, path.join(dir, 'model-server.mjs'));
    await cp(LISTEN_ANY_PATH, path.join(dir, 'listen-any.mjs'));
    await cp(path.dirname(require.resolve('ws/package.json')), path.join(dir, 'node_modules', 'ws'), { recursive: true });
    const command = ['/usr/bin/node', '/app/model-server.mjs', '--port', '8000', '--model-version', version, ...args];
    await writeFile(
      path.join(dir, 'Dockerfile'),
      [
        `FROM ${NODE_BASE_IMAGE}`,
        'COPY model-server.mjs listen-any.mjs /app/',
        'COPY node_modules/ws /app/node_modules/ws',
        'WORKDIR /app',
        'ENV MODEL_SERVER_HOST=0.0.0.0 NODE_OPTIONS=--import=/app/listen-any.mjs',
        'EXPOSE 8000',
        `LABEL ${TEST_IMAGE_LABEL}=model-server`,
        `CMD ${JSON.stringify(command)}`,
        '',
      ].join('\n'),
    );
    const tarFs = require('tar-fs') as { pack(dir: string): NodeJS.ReadableStream };
    const progress = await docker.buildImage(tarFs.pack(dir), { t: tag, rm: true, forcerm: true });
    const events = await new Promise<{ error?: string; errorDetail?: { message?: string } }[]>((resolve, reject) =>
      docker.modem.followProgress(progress, (error: Error | null, output: { error?: string }[]) => (error ? reject(error) : resolve(output))),
    );
    const failed = events.find((event) => event.error !== undefined);
    if (failed) throw new Error(`building ${tag} failed: ${failed.errorDetail?.message ?? failed.error}`);
    const { Id } = await docker.getImage(tag).inspect();
    builtIds.add(Id);
    return Id;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The container of this name, or undefined when there is none. */
export async function inspectContainer(name: string): Promise<Docker.ContainerInspectInfo | undefined> {
  try {
    return await docker.getContainer(name).inspect();
  } catch (error) {
    if ((error as { statusCode?: number }).statusCode === 404) return undefined;
    throw error;
  }
}

/** Force-removes every container whose name starts with `prefix` (for afterAll). */
export async function removeContainers(prefix: string): Promise<void> {
  const containers = await docker.listContainers({ all: true, filters: { name: [prefix] } });
  const ours = containers.filter((c) => c.Names.some((name) => name.replace(/^\//, '').startsWith(prefix)));
  await Promise.all(ours.map((c) => docker.getContainer(c.Id).remove({ force: true }).catch(ignoreMissing)));
}

/** Force-removes images by tag; with no tags, every image buildModelServerImage built in this run. */
export async function removeImages(tags?: string[]): Promise<void> {
  const names = tags ?? [...builds.keys(), ...builtIds];
  if (!tags) builtIds.clear();
  for (const name of names) {
    builds.delete(name);
    await docker.getImage(name).remove({ force: true }).catch(ignoreMissing);
  }
}

export interface EngineProxy {
  /** The proxy's Unix socket: give it to a runtime as the engine's. */
  socket: string;
  /** From now on the engine "hangs": new connections are accepted and never answered, open ones go quiet. */
  suspend(): void;
  close(): Promise<void>;
}

/**
 * A Unix socket in front of the real engine that can stop answering, to test what a
 * runtime does when the engine hangs. Nobody answers at the socket until start(): an
 * engine that is not up yet.
 */
export async function engineProxy(): Promise<EngineProxy & { start(): Promise<void> }> {
  const dir = await mkdtemp(path.join(tmpdir(), 'understudy-engine-'));
  const socket = path.join(dir, 'docker.sock');
  const sockets = new Set<net.Socket>();
  let suspended = false;
  const server = net.createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => {});
    if (suspended) return;
    const upstream = net.connect(DOCKER_SOCKET);
    sockets.add(upstream);
    upstream.on('close', () => sockets.delete(upstream));
    upstream.on('error', () => client.destroy());
    client.on('error', () => upstream.destroy());
    // A suspended proxy stops passing bytes both ways, like an engine that hangs mid-request.
    client.on('data', (chunk) => suspended || upstream.write(chunk));
    upstream.on('data', (chunk) => suspended || client.write(chunk));
    client.on('end', () => suspended || upstream.end());
    upstream.on('end', () => suspended || client.end());
  });
  return {
    socket,
    start: () => new Promise<void>((resolve, reject) => server.once('error', reject).listen(socket, () => resolve())),
    suspend: () => {
      suspended = true;
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      if (server.listening) await new Promise((resolve) => server.close(resolve));
      await rm(dir, { recursive: true, force: true });
    },
  };
}

function ignoreMissing(error: unknown): void {
  if ((error as { statusCode?: number }).statusCode !== 404) throw error;
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * YAML for one docker instance of the fixture model server image, published on
 * 127.0.0.1:`port`; `extra` adds runtime fields (e.g. `memory: 256MiB`).
 */
export function dockerInstance(name: string, tier: string, port: number, image: string, extra = 'stopGrace: 2s'): string {
  return `
      ${name}:
        tier: ${tier}
        url: http://127.0.0.1:${port}
        runtime: { type: docker, image: "${image}", ports: ["127.0.0.1:${port}:8000"], ${extra} }
        probes:
          startup: { http: { path: /health }, interval: 50ms, budget: 30s }
          ready: { http: { path: /health }, interval: 200ms, fall: 2 }`;
}
