import { execFile, fork, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MODEL_SERVER_PATH } from '../support/fixture.js';
import { freePort } from '../support/ports.js';

/* The `understudy` command as a user runs it: the built CLI, a real config file, real processes. */

const CLI = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url));
const run = promisify(execFile);
let dir: string;

beforeAll(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'understudy-cli-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args], { cwd: dir, env: { ...process.env, UNDERSTUDY_ACTOR: 'carol' } });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe('understudy validate', () => {
  it('accepts a good file', async () => {
    writeFileSync(path.join(dir, 'good.yaml'), 'services:\n  tts:\n    route: { listen: 18123 }\n    instances:\n      a: { tier: primary, url: "http://127.0.0.1:7001" }\n');
    const result = await cli('validate', '-c', 'good.yaml');
    expect(result).toMatchObject({ code: 0, stdout: `${path.join(dir, 'good.yaml')}: valid (1 service, 1 instance)\n` });
  });

  it('names the file, line and field of every mistake, and exits 2', async () => {
    const file = path.join(dir, 'bad.yaml');
    writeFileSync(
      file,
      [
        'services:',
        '  tts:',
        '    route: { pathPrefix: tts }',
        '    timeouts: { firstByte: 2 minutes }',
        '    instances:',
        '      a: { tier: primary, url: "http://127.0.0.1:7001" }',
        '      b: { tier: primary, url: "http://127.0.0.1:7002", priorty: 1 }',
        '',
      ].join('\n'),
    );
    const result = await cli('validate', '-c', 'bad.yaml');
    expect(result.code).toBe(2);
    expect(result.stderr).toBe(
      [
        `understudy: ${file}: 3 mistakes in the configuration:`,
        `  ${file}:3:26: services.tts.route.pathPrefix: must start with "/"`,
        `  ${file}:4:28: services.tts.timeouts.firstByte: expected a duration such as "750ms", "30s", "5m", "1h" or "30d", got "2 minutes"`,
        `  ${file}:7:66: services.tts.instances.b.priorty: unknown field`,
        '',
      ].join('\n'),
    );
  });

  it('checks how fields relate once each is valid', async () => {
    writeFileSync(
      path.join(dir, 'two.yaml'),
      'services:\n  tts:\n    route: { listen: 18124 }\n    instances:\n      a: { tier: primary, url: "http://127.0.0.1:7001" }\n      b: { tier: primary, url: "http://127.0.0.1:7002" }\n      c: { tier: cold, url: "http://127.0.0.1:7003" }\n',
    );
    const result = await cli('validate', '-c', 'two.yaml');
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('two.yaml:6:18: services.tts.instances.b.tier: a service has one primary; a is already primary (use tier: hot)');
    expect(result.stderr).toContain('two.yaml:7:18: services.tts.instances.c.tier: a cold standby must be started by Understudy: give it runtime.type: process');
  });

  it('says so when the file is missing', async () => {
    const result = await cli('validate', '-c', 'nope.yaml');
    expect(result.code).toBe(2);
    expect(result.stderr).toBe(`understudy: ${path.join(dir, 'nope.yaml')}: file not found\n`);
  });

  it('has help for every command', async () => {
    for (const command of ['init', 'up', 'validate', 'status', 'switchover', 'drain', 'resume', 'events', 'deploy', 'rollback', 'releases', 'drill', 'drills', 'alerts']) {
      const result = await cli(command, '--help');
      expect(result.code).toBe(0);
      expect(result.stdout).toContain(`Usage: understudy ${command}`);
    }
  });
});

describe('understudy up, status, switchover, events', () => {
  let up: ChildProcess;
  let gatewayPort: number;
  let adminPort: number;
  let logs = '';
  const config = () => path.join(dir, 'understudy.yaml');

  beforeAll(async () => {
    const [p1, p2, admin] = [await freePort(), await freePort(), await freePort()];
    adminPort = admin;
    gatewayPort = await freePort();
    const instance = (port: number, name: string) =>
      `{ tier: ${name === 'primary' ? 'primary' : 'hot'}, url: "http://127.0.0.1:${port}", runtime: { type: process, command: [node, "${MODEL_SERVER_PATH}", --port, "${port}", --name, ${name}] } }`;
    writeFileSync(
      config(),
      `admin: { listen: "127.0.0.1:${admin}" }\nlog: { level: info }\nservices:\n  infer:\n    route: { listen: ${gatewayPort} }\n    instances:\n      primary: ${instance(p1, 'primary')}\n      hot: ${instance(p2, 'hot')}\n`,
    );
    up = fork(CLI, ['up', '-c', config()], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
    up.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      logs += chunk;
      up.emit('log');
    });
    const [message] = (await once(up, 'message')) as [{ type: string }];
    expect(message.type).toBe('up');
  });

  afterAll(async () => {
    if (up.exitCode !== null) return;
    // SIGTERM first, so the model servers it started are stopped with it even when a test failed midway.
    up.kill('SIGTERM');
    const timer = setTimeout(() => up.kill('SIGKILL'), 15_000);
    await once(up, 'exit');
    clearTimeout(timer);
  });

  /** The first log line that matches, as soon as Understudy writes it. */
  async function logLine(match: (line: string) => boolean): Promise<string> {
    for (;;) {
      const found = logs.split('\n').find(match);
      if (found) return found;
      await once(up, 'log');
    }
  }

  it('serves, reports status, moves traffic on command, shows events, and exits cleanly on SIGTERM', async () => {
    // The token was generated into the state directory; the CLI finds it there.
    let status = await cli('status', '-c', config());
    for (let i = 0; i < 100 && !/\*primary +primary +ready/.test(status.stdout); i++) status = await cli('status', '-c', config());
    expect(status.stdout).toMatch(/^infer: active primary/);
    expect(status.stdout).toMatch(/\*primary +primary +ready/);

    const answer = await request(`http://127.0.0.1:${gatewayPort}/v1/infer`);
    expect(answer.headers['x-understudy-instance']).toBe('primary');
    const { requestId } = (await answer.body.json()) as { requestId: string };
    // The id the model server received is the one in the response and in Understudy's JSON access log.
    expect(answer.headers['x-request-id']).toBe(requestId);
    const accessLine = await logLine((line) => line.includes(requestId));
    expect(JSON.parse(accessLine)).toMatchObject({ msg: 'request', service: 'infer', instance: 'primary', status: 200, requestId });

    const metrics = await (await request(`http://127.0.0.1:${adminPort}/metrics`)).body.text();
    expect(metrics).toContain('understudy_requests_total{service="infer",instance="primary",outcome="200"} 1');
    expect(metrics).toContain('understudy_instance_state{service="infer",instance="primary",state="ready"} 1');
    // At boot the hot standby may be ready first and take traffic until the primary is: one or two moves.
    expect(metrics).toMatch(/understudy_active_changes_total\{service="infer",kind="initial"\} [12]\n/);
    expect(metrics).toMatch(/understudy_probe_duration_seconds_count\{service="infer",instance="primary",probe="startup",result="ok"\} 1\n/);
    const unauthorized = await request(`http://127.0.0.1:${adminPort}/v1/status`);
    expect(unauthorized.statusCode).toBe(401);
    await unauthorized.body.dump();

    const switched = await cli('switchover', 'infer', '-c', config());
    expect(switched).toMatchObject({ code: 0, stdout: 'infer: active is now hot\n' });
    const refused = await cli('switchover', 'infer', '--to', 'ghost', '-c', config());
    expect(refused).toMatchObject({ code: 1, stderr: 'understudy: service infer has no instance ghost\n' });

    const events = await cli('events', '--service', 'infer', '--type', 'active-changed', '-c', config());
    expect(events.stdout).toMatch(/infer {2}active primary → hot \(switchover\): switchover requested by carol \(127\.0\.0\.1\) via cli\n$/);
    // Who asked is on record, the refused request too.
    const actions = (await cli('events', '--type', 'operator-action', '--json', '-c', config())).stdout.trim().split('\n').map((line) => JSON.parse(line));
    expect(actions).toEqual([
      expect.objectContaining({ action: 'switchover', target: 'infer', by: 'carol (127.0.0.1)', via: 'cli', outcome: 'accepted' }),
      expect.objectContaining({ action: 'switchover', target: 'infer', by: 'carol (127.0.0.1)', via: 'cli', outcome: 'refused' }),
    ]);

    const pids = JSON.parse((await cli('status', '--json', '-c', config())).stdout).infer.instances.map((i: { pid: number }) => i.pid);
    up.kill('SIGTERM');
    const [code] = await once(up, 'exit');
    expect(code).toBe(0);
    // The model servers it started are stopped with it.
    for (const pid of pids) expect(() => process.kill(pid, 0)).toThrow();
    // Piped, every line it wrote is JSON (pino's), as log shippers expect: no banner, no colour.
    const lines = logs.split('\n').filter((line) => line !== '');
    expect(lines.length).toBeGreaterThan(5);
    for (const line of lines) expect(JSON.parse(line)).toMatchObject({ app: 'understudy', msg: expect.any(String) });
  });

  it('tells the user when Understudy is not running', async () => {
    const result = await cli('status', '-c', config());
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/^understudy: cannot reach Understudy's admin API at http:\/\/127\.0\.0\.1:\d+ .*is `understudy up` running\?\n$/);
  });
});
