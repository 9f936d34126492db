import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify, stripVTControlCharacters } from 'node:util';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chooseLogFormat, lineFor, wantsColour } from '../../src/cli/terminal.js';
import { MODEL_SERVER_PATH } from '../support/fixture.js';
import { freePort } from '../support/ports.js';

/* `understudy up` on a terminal (a real pseudo-terminal, made by util-linux's `script`) and when piped. */

const CLI = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url));
const run = promisify(execFile);
let dir: string;

beforeAll(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'understudy-tty-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('choosing the log format', () => {
  it('is readable on a terminal and JSON when piped, unless asked', () => {
    expect(chooseLogFormat('auto', true)).toBe('pretty');
    expect(chooseLogFormat('auto', false)).toBe('json');
    expect(chooseLogFormat('json', true)).toBe('json');
    expect(chooseLogFormat('pretty', false)).toBe('pretty');
  });

  it('colours only a terminal that did not ask for none', () => {
    expect(wantsColour(true, {})).toBe(true);
    expect(wantsColour(false, {})).toBe(false);
    expect(wantsColour(true, { NO_COLOR: '1' })).toBe(false);
    expect(wantsColour(true, { TERM: 'dumb' })).toBe(false);
  });

  it('writes an event as its one-line summary and other lines with their fields', () => {
    const event = { type: 'active-changed', service: 'tts', from: 'primary', to: 'hot', kind: 'failover', reason: 'primary is down', time: 0, traceId: 't' };
    expect(lineFor({ msg: 'tts: active-changed: primary is down', event } as never)).toBe('tts  active primary → hot (failover): primary is down');
    expect(lineFor({ msg: 'request', method: 'POST', path: '/v1/audio/speech', status: 200, service: 'tts', instance: 'hot', ms: 41.6, requestId: 'r1' })).toBe(
      'tts  POST /v1/audio/speech → 200 by hot in 42 ms  [r1]',
    );
    expect(lineFor({ msg: 'could not write', err: { message: 'EACCES' }, path: '/x' })).toBe('could not write: EACCES  path=/x');
  });

  it('refuses a format it does not know, and starts nothing', async () => {
    const result = await run(process.execPath, [CLI, 'up', '--log-format', 'yaml', '-c', 'missing.yaml'], { cwd: dir }).catch((error: unknown) => error as { code: number; stderr: string });
    expect(result).toMatchObject({ code: 1 });
    expect((result as { stderr: string }).stderr).toContain("option '--log-format <format>' argument 'yaml' is invalid. Allowed choices are auto, json, pretty.");
  });
});

describe('understudy up on a terminal', () => {
  let script: ChildProcess;
  let raw = '';
  let gatewayPort: number;
  const config = () => path.join(dir, 'understudy.yaml');

  /** The output so far, without colour codes or the terminal's carriage returns. */
  const text = () => stripVTControlCharacters(raw).replaceAll('\r', '');

  async function until(match: (output: string) => boolean): Promise<string> {
    while (!match(text())) {
      if (script.exitCode !== null) throw new Error(`understudy exited early:\n${text()}`);
      await once(script, 'output');
    }
    return text();
  }

  beforeAll(async () => {
    const [p1, p2, admin] = [await freePort(), await freePort(), await freePort()];
    gatewayPort = await freePort();
    const instance = (port: number, name: string) =>
      `{ tier: ${name === 'primary' ? 'primary' : 'hot'}, url: "http://127.0.0.1:${port}", runtime: { type: process, command: [node, "${MODEL_SERVER_PATH}", --port, "${port}", --name, ${name}] } }`;
    writeFileSync(
      config(),
      `admin: { listen: "127.0.0.1:${admin}" }\nservices:\n  infer:\n    route: { listen: ${gatewayPort} }\n    instances:\n      primary: ${instance(p1, 'primary')}\n      hot: ${instance(p2, 'hot')}\n`,
    );
    // `script` gives the command a pseudo-terminal as its stdout, as a person's shell would.
    script = spawn('script', ['-qfec', `exec ${process.execPath} ${CLI} up -c ${config()}`, '/dev/null'], {
      cwd: dir,
      env: { ...process.env, TERM: 'xterm-256color', NO_COLOR: undefined, UNDERSTUDY_LOG_FORMAT: undefined },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    for (const stream of [script.stdout!, script.stderr!]) {
      stream.setEncoding('utf8').on('data', (chunk: string) => {
        raw += chunk;
        script.emit('output');
      });
    }
  });

  afterAll(async () => {
    if (script.exitCode !== null) return;
    script.kill('SIGKILL');
    await once(script, 'exit');
  });

  it('prints a banner, then one readable line per change, in colour, and no JSON', async () => {
    const banner = await until((output) => output.includes('Changes follow, one line each.'));
    expect(banner).toMatch(/Understudy \d+\.\d+\.\d+ is up\./);
    expect(banner).toContain(`  infer      http://127.0.0.1:${gatewayPort}/\n`);
    expect(banner).toMatch(/ {2}dashboard {2}http:\/\/127\.0\.0\.1:\d+\/ui\/ {2}\(token in .*admin\.token\)\n/);
    expect(banner).toMatch(/ {2}infer {6}primary \(primary\) (starting|ready)/);

    await until((output) => /infer {2}active \(none\) → primary \(initial\)/.test(output));
    const answer = await request(`http://127.0.0.1:${gatewayPort}/v1/infer`);
    const { requestId } = (await answer.body.json()) as { requestId: string };
    await until((output) => output.includes(`infer  GET /v1/infer → 200 by primary in`) && output.includes(`[${requestId}]`));

    // The primary dies: its state and the failover are one line each, as warnings.
    const status = JSON.parse(execFileSync(process.execPath, [CLI, 'status', '--json', '-c', config()], { cwd: dir, encoding: 'utf8' })) as {
      infer: { instances: { name: string; pid: number }[] };
    };
    process.kill(status.infer.instances.find((i) => i.name === 'primary')!.pid, 'SIGKILL');
    const after = await until((output) => /WARN: infer {2}active primary → hot \(failover\)/.test(output));
    expect(after).toMatch(/\[\d\d:\d\d:\d\d\] WARN: infer {2}primary ready → (down|failed)/);
    expect(raw).toContain('\x1b[33mWARN\x1b[39m');

    // Stopped as Ctrl-C would: understudy is the shell's exec'd child of `script`.
    const pid = Number(execFileSync('pgrep', ['-P', String(script.pid)], { encoding: 'utf8' }).trim());
    process.kill(pid, 'SIGINT');
    await once(script, 'exit');
    const lines = text().split('\n').filter((line) => line.trim() !== '');
    expect(lines.filter((line) => line.trimStart().startsWith('{'))).toEqual([]);
  });
});
