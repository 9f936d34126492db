import { execFile } from 'node:child_process';
import { chown, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type Docker from 'dockerode';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeWithDocker, docker, dockerMissing, NODE_BASE_IMAGE, removeContainers, removeImages, TEST_IMAGE_LABEL, uniqueName } from '../support/docker.js';
import { startModelServer, stopAll, type ModelServer } from '../support/fixture.js';
import { freePorts } from '../support/ports.js';
import { waitUntil } from '../support/wait.js';

const run = promisify(execFile);
const missing = await dockerMissing();
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
/** The container's name and the image's tag; afterAll removes both. */
const RUN = uniqueName('timage');
const TAG = `understudy-test/understudy:${RUN}`;
/** The uid:gid the Dockerfile runs as (the official node images' `node` user). */
const USER = '1000:1000';

let model: ModelServer;
let container: Docker.Container;
let gatewayUrl: string;
let adminPort: number;
const temp: string[] = [];

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'understudy-image-test-'));
  temp.push(dir);
  return dir;
}

/** stdout and stderr of a container without a TTY: frames of an 8-byte header (stream, 0, 0, 0, size) and the bytes. */
function demux(buffer: Buffer): string {
  let text = '';
  for (let at = 0; at + 8 <= buffer.length; ) {
    const size = buffer.readUInt32BE(at + 4);
    text += buffer.subarray(at + 8, at + 8 + size).toString('utf8');
    at += 8 + size;
  }
  return text;
}

async function logs(): Promise<string> {
  return demux(await container.logs({ stdout: true, stderr: true, follow: false }));
}

async function infer(): Promise<Response> {
  return fetch(`${gatewayUrl}/v1/infer`, { method: 'POST', body: 'hello', signal: AbortSignal.timeout(2000) });
}

describeWithDocker(missing, 'the Understudy container image', () => {
  let stateDir: string;

  beforeAll(async () => {
    // dist/ comes from `npm run build` before the tests; the script only packs it.
    const built = await run('bash', ['scripts/docker-image.sh'], {
      cwd: ROOT,
      env: { ...process.env, BASE: NODE_BASE_IMAGE, TAG, EXTRA_LABEL: `${TEST_IMAGE_LABEL}=understudy`, SKIP_BUILD: '1' },
      timeout: 170_000,
      maxBuffer: 16 * 1024 * 1024,
    });
    expect(built.stdout).toMatch(/built understudy-test\/understudy:\S+: \d+ MB/);

    model = await startModelServer({ name: 'primary', waitFor: 'ready' });
    const [gatewayPort, admin] = await freePorts(2);
    adminPort = admin!;
    gatewayUrl = `http://127.0.0.1:${gatewayPort}`;

    const configDir = await tempDir();
    const config = path.join(configDir, 'understudy.yaml');
    await writeFile(
      config,
      `stateDir: /var/lib/understudy
admin:
  listen: 127.0.0.1:${adminPort}
services:
  infer:
    route: { listen: 127.0.0.1:${gatewayPort} }
    instances:
      primary:
        tier: primary
        url: ${model.url}
        probes:
          ready: { http: { path: /health }, interval: 200ms }
`,
    );
    stateDir = await tempDir();
    await chown(stateDir, 1000, 1000);

    const image = await docker.getImage(TAG).inspect();
    container = await docker.createContainer({
      name: RUN,
      Image: TAG,
      // The image's own health command, checked every second instead of every 30 s.
      Env: [`UNDERSTUDY_HEALTH_URL=http://127.0.0.1:${adminPort}/healthz`],
      Healthcheck: { Test: image.Config.Healthcheck?.Test, Interval: 1e9, Timeout: 5e9, Retries: 3 },
      HostConfig: {
        // The engine runs with --iptables=false: host networking reaches the fixture and the gateway.
        NetworkMode: 'host',
        Binds: [`${config}:/etc/understudy/understudy.yaml:ro`, `${stateDir}:/var/lib/understudy`],
      },
    });
    await container.start();
    await waitUntil(async () => (await infer()).ok, {
      timeoutMs: 30_000,
      intervalMs: 100,
      what: 'the containerized gateway to answer',
    }).catch(async (error: Error) => {
      throw new Error(`${error.message}\ncontainer output:\n${await logs()}`);
    });
  }, 240_000);

  afterAll(async () => {
    await removeContainers(RUN);
    await removeImages([TAG]);
    await stopAll();
    await Promise.all(temp.map((dir) => rm(dir, { recursive: true, force: true })));
  }, 60_000);

  it('is labelled, runs as 1000:1000 and declares its volume, ports, stop signal and entrypoint', async () => {
    const { Config } = await docker.getImage(TAG).inspect();
    expect(Config.User).toBe(USER);
    expect(Config.Labels).toMatchObject({ 'org.opencontainers.image.title': 'understudy', 'org.opencontainers.image.version': '0.1.0', [TEST_IMAGE_LABEL]: 'understudy' });
    expect(Object.keys(Config.Volumes ?? {})).toEqual(['/var/lib/understudy']);
    expect(Object.keys(Config.ExposedPorts ?? {}).sort()).toEqual(['8080/tcp', '9901/tcp']);
    expect(Config.Entrypoint).toEqual(['node', '/app/dist/cli/main.js']);
    expect(Config.Cmd).toEqual(['up']);
    expect((Config as { StopSignal?: string }).StopSignal).toBe('SIGTERM');
    expect(Config.Env).toEqual(expect.arrayContaining(['UNDERSTUDY_CONFIG=/etc/understudy/understudy.yaml', 'UNDERSTUDY_LOG_FORMAT=json']));
  });

  it('holds the production dependencies only, and better-sqlite3 loads in it', async () => {
    const check = [
      "new (require('better-sqlite3'))(':memory:').close();",
      "const dev = ['vitest', 'typescript', 'esbuild', 'tsx', '@understudy/example-tts-server'].filter((name) => require('node:fs').existsSync('/app/node_modules/' + name));",
      'console.log(JSON.stringify(dev));',
    ].join(' ');
    const { stdout } = await run('docker', ['run', '--rm', '--name', `${RUN}-deps`, '--network', 'none', '-w', '/app', '--entrypoint', 'node', TAG, '-e', check], {
      timeout: 30_000,
    });
    expect(JSON.parse(stdout)).toEqual([]);
  });

  it('answers through the containerized gateway from the primary', async () => {
    const response = await infer();
    expect(response.status).toBe(200);
    expect(response.headers.get('x-understudy-instance')).toBe('primary');
    expect(response.headers.get('x-served-by')).toBe('primary');
    expect((await model.stats()).byPath['/v1/infer']).toBeGreaterThan(0);
  });

  it('runs its main process as uid 1000, not root', async () => {
    const info = await container.inspect();
    expect(info.Config.User).toBe(USER);
    // The container's main process as the host's kernel sees it.
    const status = await readFile(`/proc/${info.State.Pid}/status`, 'utf8');
    expect(status).toMatch(/^Uid:\s+1000\s+1000\s+1000\s+1000$/m);
    expect(status).toMatch(/^Gid:\s+1000\s+1000\s+1000\s+1000$/m);
    const top = (await container.top({ ps_args: '-o pid,uid,args' })) as { Titles: string[]; Processes: string[][] };
    const uid = top.Titles.indexOf('UID');
    expect(top.Processes.find((p) => p.at(-1)?.includes('/app/dist/cli/main.js'))?.[uid]).toBe('1000');
  });

  it('logs JSON lines to stdout', async () => {
    const lines = (await logs()).split('\n').filter((line) => line.trim() !== '');
    expect(lines.length).toBeGreaterThan(0);
    const parsed = lines.map((line) => JSON.parse(line) as { msg?: string });
    expect(parsed.some((line) => typeof line.msg === 'string')).toBe(true);
  });

  it('passes its HEALTHCHECK (GET /healthz on the admin API)', async () => {
    await waitUntil(async () => (await container.inspect()).State.Health?.Status === 'healthy', {
      timeoutMs: 20_000,
      intervalMs: 200,
      what: 'the container to be healthy',
    });
  });

  it('exits 0 on docker stop (SIGTERM) and leaves events.jsonl in the state directory', async () => {
    await container.stop({ t: 20 });
    const { State } = await container.inspect();
    expect(State.Running).toBe(false);
    expect(State.ExitCode).toBe(0);
    expect(State.OOMKilled).toBe(false);
    // jobs.db: the job store opened at start, so the native module loaded in the image.
    expect(await readdir(stateDir)).toEqual(expect.arrayContaining(['events.jsonl', 'jobs.db']));
    expect((await stat(path.join(stateDir, 'events.jsonl'))).uid).toBe(1000);
    const events = (await readFile(path.join(stateDir, 'events.jsonl'), 'utf8')).trim().split('\n');
    expect(events.length).toBeGreaterThan(0);
    expect(await logs()).toContain('shutting down');
  }, 60_000);
});
