import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { DockerRuntimeConfig } from '../../src/config/index.js';
import { DockerRuntime, StartError } from '../../src/runtime/index.js';
import {
  buildModelServerImage,
  describeWithDocker,
  docker,
  DOCKER_SOCKET,
  dockerMissing,
  engineProxy,
  inspectContainer,
  removeContainers,
  removeImages,
  uniqueName,
} from '../support/docker.js';
import { freePorts } from '../support/ports.js';
import { waitUntil } from '../support/wait.js';

const missing = await dockerMissing();
/** Every service (and so container) name of this file starts with it: afterAll removes them all. */
const RUN = uniqueName('t');
const IMAGE = `understudy-test/model-server:${RUN}`;
const SERVER = ['/usr/bin/node', '/app/model-server.mjs', '--port', '8000'];

function config(overrides: Partial<DockerRuntimeConfig> = {}): DockerRuntimeConfig {
  return {
    type: 'docker',
    image: IMAGE,
    env: {},
    ports: [],
    volumes: [],
    network: 'bridge',
    init: true,
    pull: 'never',
    stopGrace: 5000,
    requires: [],
    restartDelay: 1000,
    restartDelayMax: 30_000,
    ...overrides,
  };
}

const published = (hostPort: number) => [{ hostIp: '127.0.0.1', hostPort, containerPort: 8000, protocol: 'tcp' as const }];

let made = 0;
function runtime(cfg: DockerRuntimeConfig, options: { service?: string; socket?: string; onOrphan?: (pid: number, detail: string) => void } = {}) {
  const service = options.service ?? `${RUN}-${++made}`;
  const log = path.join(mkdtempSync(path.join(tmpdir(), 'understudy-docker-')), 'logs', `${service}.a.log`);
  const rt = new DockerRuntime(cfg, { service, instance: 'a' }, { socket: options.socket ?? DOCKER_SOCKET, logFile: log, ...(options.onOrphan && { onOrphan: options.onOrphan }) });
  return { rt, log, service, name: `understudy-${service}.a` };
}

async function answers(url: string): Promise<void> {
  await waitUntil(async () => (await fetch(url, { signal: AbortSignal.timeout(1000) })).ok, { timeoutMs: 10_000, what: `${url} to answer` });
}

async function logContains(file: string, text: string): Promise<void> {
  await waitUntil(() => existsSync(file) && readFileSync(file, 'utf8').includes(text), { timeoutMs: 10_000, what: `${text} in ${file}` });
}

function nextExit(rt: DockerRuntime): Promise<[number | null, string | null]> {
  return new Promise((resolve) => rt.onExit((code, signal) => resolve([code, signal])));
}

async function startError(promise: Promise<unknown>): Promise<StartError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(StartError);
  return error as StartError;
}

function parentOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
}

it('says which engine it could not reach (no engine needed)', async () => {
  const socket = path.join(tmpdir(), `${uniqueName('no-engine-')}.sock`);
  const { rt } = runtime(config(), { socket });
  const error = await startError(rt.start());
  expect(error.message).toMatch(new RegExp(`^Docker Engine not reachable at ${socket}: .*ENOENT`));
  expect(error.cancelled).toBe(false);
});

describeWithDocker(missing, 'docker runtime', () => {
  beforeAll(async () => {
    await buildModelServerImage(IMAGE);
  });

  afterAll(async () => {
    await removeContainers(`understudy-${RUN}`);
    await removeImages();
  });

  it('runs the container: it answers on its published port, its pid is the server on this machine, its output is logged; a stop keeps it', async () => {
    const [port] = await freePorts(1);
    const { rt, log, name } = runtime(config({ ports: published(port!) }));
    const exits: unknown[] = [];
    rt.onExit((...exit) => exits.push(exit));
    await rt.start();
    await answers(`http://127.0.0.1:${port}/health`);
    expect(await (await fetch(`http://127.0.0.1:${port}/version`)).json()).toMatchObject({ version: '1.0' });

    const info = (await inspectContainer(name))!;
    expect(info.Config.Labels).toMatchObject({ 'understudy.service': expect.stringMatching(RUN), 'understudy.instance': 'a', 'understudy.spec': expect.stringMatching(/^[0-9a-f]{12}$/) });
    const pid = rt.pid!;
    expect(existsSync(`/proc/${pid}`)).toBe(true);
    expect(readFileSync(`/proc/${pid}/cmdline`, 'utf8')).toContain('/app/model-server.mjs');
    // With init (the default) docker-init is the container's pid 1; drills need the server under it.
    expect(parentOf(pid)).toBe(info.State.Pid);

    await logContains(log, 'listening 8000');
    expect(readFileSync(log, 'utf8')).toMatch(new RegExp(`--- \\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z understudy starts: ${IMAGE}\n`));

    const started = Date.now();
    await rt.stop();
    expect(Date.now() - started).toBeLessThan(4000);
    expect(rt.pid).toBeUndefined();
    expect(existsSync(`/proc/${pid}`)).toBe(false);
    const after = (await inspectContainer(name))!;
    expect(after.Id).toBe(info.Id);
    expect(after.State.Status).toBe('exited');
    await rt.stop(); // twice is fine
    expect(exits).toEqual([]);

    // The same container starts again; two stops at once are one stop.
    await rt.start();
    expect((await inspectContainer(name))!.Id).toBe(info.Id);
    await answers(`http://127.0.0.1:${port}/health`);
    await Promise.all([rt.stop(), rt.stop()]);
    expect((await inspectContainer(name))!.State.Running).toBe(false);
    expect(readFileSync(log, 'utf8').match(/understudy starts:/g)).toHaveLength(2);
    expect(exits).toEqual([]);
  });

  it('prepare() creates the container without starting it, and start() then starts that one', async () => {
    const [port] = await freePorts(1);
    const { rt, name } = runtime(config({ ports: published(port!) }));
    await rt.prepare();
    const created = (await inspectContainer(name))!;
    expect(created.State.Status).toBe('created');
    expect(rt.pid).toBeUndefined();
    await rt.prepare(); // nothing to do
    expect((await inspectContainer(name))!.Id).toBe(created.Id);

    await rt.start();
    await answers(`http://127.0.0.1:${port}/health`);
    expect((await inspectContainer(name))!.Id).toBe(created.Id);
    await rt.prepare(); // running: left alone
    expect((await inspectContainer(name))!.State.Running).toBe(true);
    await rt.stop();
  });

  it('replaces the container when the spec changes', async () => {
    const service = `${RUN}-spec`;
    const { rt: first, name } = runtime(config({ env: { MODEL_MARK: 'one' } }), { service });
    await first.prepare();
    const before = (await inspectContainer(name))!;

    const { rt: second } = runtime(config({ env: { MODEL_MARK: 'two' } }), { service });
    await second.start();
    const after = (await inspectContainer(name))!;
    expect(after.Id).not.toBe(before.Id);
    expect(after.Config.Env).toContain('MODEL_MARK=two');
    expect(after.Config.Labels!['understudy.spec']).not.toBe(before.Config.Labels!['understudy.spec']);
    await second.stop();
  });

  it('replaces the container when its image tag now names another image (a restored release)', async () => {
    const tag = `${IMAGE}-release`;
    const [port] = await freePorts(1);
    await buildModelServerImage(tag, { version: '1.0' });
    const service = `${RUN}-release`;
    const { rt: first, name } = runtime(config({ image: tag, ports: published(port!) }), { service });
    await first.prepare();
    const before = (await inspectContainer(name))!;

    await buildModelServerImage(tag, { version: '2.0' });
    const { rt: second } = runtime(config({ image: tag, ports: published(port!) }), { service });
    await second.start();
    await answers(`http://127.0.0.1:${port}/health`);
    expect(await (await fetch(`http://127.0.0.1:${port}/version`)).json()).toMatchObject({ version: '2.0' });
    expect((await inspectContainer(name))!.Id).not.toBe(before.Id);
    await second.stop();
  });

  it('reports an exit it did not ask for, with the exit code', async () => {
    const { rt, name } = runtime(config({ command: [...SERVER, '--exit-after', '300', '--exit-code', '7'] }));
    const exited = nextExit(rt);
    await rt.start();
    expect(await exited).toEqual([7, null]);
    expect(rt.pid).toBeUndefined();
    expect((await inspectContainer(name))!.State.ExitCode).toBe(7);
  });

  it('reports a SIGKILL of its pid (without init the pid is the container’s own)', async () => {
    const { rt, name } = runtime(config({ init: false }));
    await rt.start();
    const pid = rt.pid!;
    expect(pid).toBe((await inspectContainer(name))!.State.Pid);
    const exited = nextExit(rt);
    process.kill(pid, 'SIGKILL');
    expect(await exited).toEqual([null, 'SIGKILL']);
    expect(rt.pid).toBeUndefined();
  });

  it('logs that the container was killed for exceeding its memory limit', async () => {
    const memory = 96 * 1024 * 1024;
    const { rt, log } = runtime(config({ memory, command: ['/usr/bin/node', '-e', 'const held = []; for (;;) held.push(Buffer.alloc(8e6, 1))'] }));
    const exited = nextExit(rt);
    await rt.start();
    expect(await exited).toEqual([null, 'SIGKILL']);
    expect(readFileSync(log, 'utf8')).toContain(`--- understudy: container was killed for exceeding its memory limit (${memory} bytes)`);
  });

  it('kills a server that ignores SIGTERM once the grace period is over', async () => {
    const { rt, log, name } = runtime(config({ stopGrace: 1000, command: [...SERVER, '--ignore-sigterm'] }));
    await rt.start();
    await logContains(log, 'listening 8000'); // its SIGTERM handler is in place
    const started = Date.now();
    await rt.stop();
    const took = Date.now() - started;
    expect(took).toBeGreaterThanOrEqual(900);
    expect(took).toBeLessThan(6000);
    const info = (await inspectContainer(name))!;
    expect(info.State.Running).toBe(false);
    expect(info.State.ExitCode).toBe(137);
  });

  it('stops a SIGSTOPped server without waiting out the grace period', async () => {
    const [port] = await freePorts(1);
    const { rt, name } = runtime(config({ stopGrace: 10_000, ports: published(port!) }));
    await rt.start();
    await answers(`http://127.0.0.1:${port}/health`);
    process.kill(rt.pid!, 'SIGSTOP');
    const started = Date.now();
    await rt.stop();
    expect(Date.now() - started).toBeLessThan(5000);
    expect((await inspectContainer(name))!.State.ExitCode).toBe(0);
  });

  it('a stop cancels a start that has not finished, and nothing runs after it', async () => {
    const { rt, name } = runtime(config());
    const starting = rt.start();
    await rt.stop();
    const error = await startError(starting);
    expect(error.cancelled).toBe(true);
    expect((await inspectContainer(name))?.State.Running ?? false).toBe(false);
    expect(rt.pid).toBeUndefined();
  });

  it('whenever a stop comes during a start (create, attach, the engine starting it), nothing runs after the stop', async () => {
    const { rt, name } = runtime(config());
    for (const delayMs of [5, 20, 40, 80, 120, 200]) {
      const starting = rt.start().then(
        () => 'started',
        (error: unknown) => (error instanceof StartError && error.cancelled ? 'cancelled' : error),
      );
      await new Promise((resolve) => setTimeout(resolve, delayMs));
      await rt.stop();
      expect(['started', 'cancelled']).toContain(await starting);
      expect((await inspectContainer(name))?.State.Running ?? false).toBe(false);
      expect(rt.pid).toBeUndefined();
    }
  });

  it('recover() stops the container an Understudy that was killed left running, and keeps it for the next start', async () => {
    const [port] = await freePorts(1);
    const service = `${RUN}-orphan`;
    const { rt: previous, name } = runtime(config({ ports: published(port!) }), { service });
    await previous.start();
    await answers(`http://127.0.0.1:${port}/health`);
    const orphanPid = previous.pid!;

    const orphans: [number, string][] = [];
    const { rt } = runtime(config({ ports: published(port!) }), { service, onOrphan: (pid, detail) => orphans.push([pid, detail]) });
    await rt.recover();
    expect(orphans).toEqual([[orphanPid, `stopping container ${name} (${IMAGE}), left running by an Understudy that did not shut down`]]);
    const stopped = (await inspectContainer(name))!;
    expect(stopped.State.Status).toBe('exited');
    await rt.recover(); // once only
    expect(orphans).toHaveLength(1);

    await rt.start();
    await answers(`http://127.0.0.1:${port}/health`);
    expect((await inspectContainer(name))!.Id).toBe(stopped.Id);
    await rt.stop();
  });

  it('asks an engine that was not up at the first recover() again at the next', async () => {
    const proxy = await engineProxy();
    try {
      const { rt } = runtime(config(), { socket: proxy.socket });
      expect((await startError(rt.recover())).message).toMatch(/^Docker Engine not reachable at /);
      await proxy.start();
      await rt.recover();
    } finally {
      await proxy.close();
    }
  });

  it('a stop ends within the grace period + 5 s when the engine stops answering, killing the container itself', async () => {
    const proxy = await engineProxy();
    try {
      await proxy.start();
      const { rt, log, name } = runtime(config({ stopGrace: 1000 }), { socket: proxy.socket });
      await rt.start();
      await logContains(log, 'listening 8000');
      const pid = rt.pid!;
      proxy.suspend();
      const started = Date.now();
      await rt.stop();
      const took = Date.now() - started;
      expect(took).toBeGreaterThanOrEqual(5500);
      expect(took).toBeLessThan(7000);
      await waitUntil(() => !existsSync(`/proc/${pid}`), { what: `pid ${pid} to end` });
      await waitUntil(async () => (await inspectContainer(name))?.State.Running === false, { what: `${name} to end` });
    } finally {
      await proxy.close();
    }
  });

  it('pull: never with the image missing refuses to start and creates nothing', async () => {
    const image = `understudy-test/absent:${RUN}`;
    const { rt, name } = runtime(config({ image }));
    const error = await startError(rt.start());
    expect(error.message).toBe(`image ${image} is not on this machine (pull: never); build it, load it or restore a snapshot`);
    expect(await inspectContainer(name)).toBeUndefined();
    await startError(rt.prepare());
  });

  it('pull: missing names the image and the engine’s answer when the pull fails', async () => {
    const image = `127.0.0.1:1/understudy-absent:${RUN}`;
    const { rt, name } = runtime(config({ image, pull: 'missing' }));
    const error = await startError(rt.start());
    expect(error.message).toMatch(new RegExp(`^could not pull image ${image.replace(/[.]/g, '\\.')}: .+`));
    expect(await inspectContainer(name)).toBeUndefined();
  });

  it('refuses to start when a required path is missing', async () => {
    const required = path.join(tmpdir(), uniqueName('no-model-'));
    const { rt, name } = runtime(config({ requires: [required] }));
    const error = await startError(rt.start());
    expect(error.message).toBe(`pre-start check failed: ${required} does not exist`);
    expect(await inspectContainer(name)).toBeUndefined();
  });

  it('creates the container as the config says: limits, init, mounts, ports, user, stop timeout', async () => {
    const [port] = await freePorts(1);
    const dir = mkdtempSync(path.join(tmpdir(), 'understudy-models-'));
    const { rt, name, service } = runtime(
      config({
        ports: published(port!),
        volumes: [{ host: dir, container: '/models', readOnly: true }],
        memory: 256 * 1024 * 1024,
        shmSize: 128 * 1024 * 1024,
        user: '65534:65534',
        env: { A: '1', B: 'two' },
        command: [...SERVER, '--name', 'box'],
        stopGrace: 2500,
      }),
    );
    await rt.prepare();
    const info = (await inspectContainer(name))!;
    expect(info.Config.Image).toBe(IMAGE);
    expect(info.Config.Cmd).toEqual([...SERVER, '--name', 'box']);
    expect(info.Config.Env).toEqual(expect.arrayContaining(['A=1', 'B=two']));
    expect(info.Config.User).toBe('65534:65534');
    expect((info.Config as { StopTimeout?: number }).StopTimeout).toBe(3);
    expect(info.Config.Labels).toMatchObject({ 'understudy.service': service, 'understudy.instance': 'a' });
    expect(info.HostConfig).toMatchObject({
      Memory: 256 * 1024 * 1024,
      MemorySwap: 256 * 1024 * 1024,
      ShmSize: 128 * 1024 * 1024,
      Init: true,
      NetworkMode: 'bridge',
      Binds: [`${dir}:/models:ro`],
      PortBindings: { '8000/tcp': [{ HostIp: '127.0.0.1', HostPort: String(port) }] },
    });
    expect(info.HostConfig.DeviceRequests ?? null).toBeNull();

    await rt.start();
    await answers(`http://127.0.0.1:${port}/health`);
    expect(await (await fetch(`http://127.0.0.1:${port}/version`)).json()).toMatchObject({ name: 'box' });
    await rt.stop();
  });

  it('gpus: "all" asks for GPUs as `docker run --gpus all` does, and a start without an NVIDIA runtime fails clearly', async () => {
    const { rt, name } = runtime(config({ gpus: 'all' }));
    await rt.prepare();
    expect((await inspectContainer(name))!.HostConfig.DeviceRequests).toEqual([{ Driver: '', Count: -1, DeviceIDs: null, Capabilities: [['gpu']], Options: {} }]);

    const { rt: two, name: twoName } = runtime(config({ gpus: ['0', '1'] }));
    await two.prepare();
    expect((await inspectContainer(twoName))!.HostConfig.DeviceRequests).toEqual([{ Driver: '', Count: 0, DeviceIDs: ['0', '1'], Capabilities: [['gpu']], Options: {} }]);

    const runtimes = ((await docker.info()) as { Runtimes?: Record<string, unknown> }).Runtimes ?? {};
    if ('nvidia' in runtimes) return; // this machine can run it
    const error = await startError(rt.start());
    expect(error.message).toContain(`container ${name} (${IMAGE}) could not start: `);
    expect(error.message).toContain('could not select device driver');
    expect(rt.pid).toBeUndefined();
    expect((await inspectContainer(name))!.State.Running).toBe(false);
  });

  it('fails a start clearly when its host port is taken', async () => {
    const [port] = await freePorts(1);
    const { rt: holder } = runtime(config({ ports: published(port!) }));
    await holder.start();
    await answers(`http://127.0.0.1:${port}/health`);
    const { rt, name } = runtime(config({ ports: published(port!) }));
    const error = await startError(rt.start());
    expect(error.message).toMatch(new RegExp(`^container ${name} \\(${IMAGE}\\) could not start: .*${port}`));
    await holder.stop();
  });

  it('runs on the host network, listening where its command says', async () => {
    const [port] = await freePorts(1);
    const { rt } = runtime(config({ network: 'host', command: ['/usr/bin/node', '/app/model-server.mjs', '--port', String(port)], env: { MODEL_SERVER_HOST: '127.0.0.1' } }));
    await rt.start();
    await answers(`http://127.0.0.1:${port}/health`);
    await rt.stop();
  });

  it('refuses a container of its name that another instance or someone else made', async () => {
    const service = `${RUN}-taken`;
    const name = `understudy-${service}.a`;
    await docker.createContainer({ name, Image: IMAGE });
    const { rt } = runtime(config(), { service });
    const error = await startError(rt.start());
    expect(error.message).toBe(`container name ${name} is taken by something other than Understudy; rename or remove that container`);
  });
});
