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
import { terminate } from '../support/process.js';

/* SIGHUP (what `systemctl reload` sends): the config file read again, live changes taken up, the rest refused, no connection dropped. */

const CLI = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url));
const run = promisify(execFile);
let dir: string;
let up: ChildProcess;
let gatewayPort: number;
let config: (changes: { firstByte?: string; readyInterval?: string; gateway?: number }) => string;
const file = () => path.join(dir, 'understudy.yaml');

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'understudy-reload-'));
  const [p1, p2, admin] = [await freePort(), await freePort(), await freePort()];
  gatewayPort = await freePort();
  // Every answer takes 1.5 s, so a request is still in flight while the file is read again.
  const instance = (port: number, name: string, readyInterval: string) =>
    `{ tier: ${name === 'primary' ? 'primary' : 'hot'}, url: "http://127.0.0.1:${port}", probes: { ready: { http: { path: /health }, interval: ${readyInterval} } }, runtime: { type: process, command: [node, "${MODEL_SERVER_PATH}", --port, "${port}", --name, ${name}, --latency, "1500"] } }`;
  config = ({ firstByte = '60s', readyInterval = '2s', gateway = gatewayPort }) =>
    `admin: { listen: "127.0.0.1:${admin}" }\nlog: { level: warn }\nservices:\n  infer:\n    route: { listen: ${gateway} }\n    timeouts: { firstByte: ${firstByte} }\n    instances:\n      primary: ${instance(p1, 'primary', readyInterval)}\n      hot: ${instance(p2, 'hot', readyInterval)}\n`;
  writeFileSync(file(), config({}));
  // The CLI reads its own copy: the file under test is broken on purpose at one point.
  writeFileSync(path.join(dir, 'cli.yaml'), config({}));
  up = fork(CLI, ['up', '-c', file()], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
  const [message] = (await once(up, 'message')) as [{ type: string }];
  expect(message.type).toBe('up');
});

afterAll(async () => {
  if (up) await terminate(up, { graceMs: 15_000 });
  rmSync(dir, { recursive: true, force: true });
});

async function reload(): Promise<string> {
  const answered = once(up, 'message') as Promise<[{ type: string; outcome: string }]>;
  up.kill('SIGHUP');
  const [message] = await answered;
  expect(message.type).toBe('reloaded');
  return message.outcome;
}

async function lastReload(): Promise<{ outcome: string; changed: string[]; restart: string[]; reason: string }> {
  const { stdout } = await run(process.execPath, [CLI, 'events', '--type', 'config-reloaded', '--json', '-c', path.join(dir, 'cli.yaml')], { cwd: dir });
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as { outcome: string; changed: string[]; restart: string[]; reason: string };
}

describe('understudy up on SIGHUP', () => {
  it('takes up live changes with a request in flight, refuses a restart-only change and a file with mistakes, and serves on', async () => {
    let waiting = await request(`http://127.0.0.1:${gatewayPort}/v1/infer`);
    await waiting.body.dump(); // the primary serves

    // Live fields: a service's timeouts, an instance's probes. The request in flight finishes.
    const inFlight = request(`http://127.0.0.1:${gatewayPort}/v1/infer`);
    writeFileSync(file(), config({ firstByte: '45s', readyInterval: '1s' }));
    expect(await reload()).toBe('applied');
    expect(await lastReload()).toMatchObject({
      outcome: 'applied',
      changed: ['services.infer.timeouts', 'services.infer.instances.primary.probes', 'services.infer.instances.hot.probes'],
      restart: [],
    });
    const answered = await inFlight;
    expect(answered.statusCode).toBe(200);
    expect(answered.headers['x-understudy-instance']).toBe('primary');
    await answered.body.dump();

    // A listener only a restart moves: nothing changes, the old port serves on.
    writeFileSync(file(), config({ firstByte: '30s', gateway: await freePort() }));
    expect(await reload()).toBe('refused');
    const refused = await lastReload();
    expect(refused).toMatchObject({ outcome: 'refused', changed: [], restart: expect.arrayContaining(['services.infer.route']) });
    expect(refused.reason).toMatch(/^only a restart takes up .*services\.infer\.route.*; nothing changed$/);

    // A mistake: named with its line, nothing changed.
    writeFileSync(file(), config({ firstByte: 'soon' }));
    expect(await reload()).toBe('refused');
    expect((await lastReload()).reason).toMatch(/^the file has mistakes, nothing changed: .*understudy\.yaml.*:6:\d+: services\.infer\.timeouts\.firstByte: expected a duration/s);

    waiting = await request(`http://127.0.0.1:${gatewayPort}/v1/infer`);
    expect(waiting.statusCode).toBe(200);
    await waiting.body.dump();
  });
});
