import { execFile, fork, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { InvalidArgumentError } from 'commander';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseServiceSpec, splitCommand } from '../../src/cli/init.js';
import { parseConfig } from '../../src/config/index.js';
import { startLlmServer, stopAllLlmServers, type LlmServer } from '../support/llm.js';
import { freePort, freePorts } from '../support/ports.js';
import { captureTail, terminate } from '../support/process.js';
import { startTtsServer, stopAllTtsServers, TTS_SERVER, type Server } from '../support/tts.js';
import { waitUntil } from '../support/wait.js';

/* `understudy init` as a user runs it: the built CLI against real model servers on 127.0.0.1. */

const CLI = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url));
const ASR_SERVER = fileURLToPath(new URL('../../examples/asr-server/server.mjs', import.meta.url));
const run = promisify(execFile);

let dir: string;
let primary: LlmServer;
let hot: LlmServer;
let tts: Server;
let asr: { proc: ChildProcess; url: string } | undefined;
const children: ChildProcess[] = [];

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

async function cli(...args: string[]): Promise<Result> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args], { cwd: dir });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** Runs the CLI with `input` piped to its stdin (not a terminal). */
function cliWithInput(input: string, ...args: string[]): Promise<Result> {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: dir, stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  child.stdin.end(input);
  return new Promise((resolve) => child.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr })));
}

/** The ASR server (examples/asr-server, pocketsphinx), once its model has loaded. */
function startAsrServer(): Promise<{ proc: ChildProcess; url: string }> {
  const proc = fork(ASR_SERVER, ['--port', '0', '--name', 'asr', '--model-version', '0.9'], { execArgv: [], stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
  children.push(proc);
  const output = captureTail([proc.stderr]);
  let url = '';
  return new Promise((resolve, reject) => {
    proc.once('exit', (code, signal) => reject(new Error(`asr server exited (${signal ?? code}) before it was ready\n${output()}`)));
    proc.on('message', (message: { type: string; port?: number }) => {
      if (message.type === 'listening') url = `http://127.0.0.1:${message.port}`;
      if (message.type === 'ready') resolve({ proc, url });
    });
  });
}

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'understudy-init-'));
  [primary, hot, tts] = await Promise.all([startLlmServer({ name: 'a' }), startLlmServer({ name: 'b' }), startTtsServer('tts')]);
  // Optional: the recogniser needs Debian's pocketsphinx (examples/asr-server/install.sh).
  if (existsSync('/usr/bin/pocketsphinx_continuous')) asr = await startAsrServer();
});

afterAll(async () => {
  await Promise.all([stopAllLlmServers(), stopAllTtsServers(), ...children.map((c) => terminate(c))]);
  rmSync(dir, { recursive: true, force: true });
});

describe('understudy init --yes', () => {
  let file: string;
  let result: Result;
  let ports: number[];

  beforeAll(async () => {
    file = path.join(dir, 'first', 'understudy.yaml');
    ports = await freePorts(4);
    const args = ['init', '--yes', '-s', `chat=llm:${primary.url},${hot.url}`, '-s', `tts=tts:${tts.url}`];
    if (asr) args.push('-s', `asr=asr:${asr.url}`, '--listen', `asr=127.0.0.1:${ports[3]}`);
    args.push('--listen', `chat=127.0.0.1:${ports[0]}`, '--listen', `tts=127.0.0.1:${ports[1]}`, '--admin', `127.0.0.1:${ports[2]}`, '-o', file);
    result = await cli(...args);
  });

  it('names what each server answered: its health path and model or version', () => {
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const line = (id: string, url: string) => result.stdout.split('\n').find((l) => l.includes(`${id} ${url}:`)) ?? `(no line for ${id})`;
    expect(line('chat/primary', primary.url)).toMatch(/: +\/health 200 in \d+ ms, model "fixture-llm" \(owned by vllm\)$/);
    expect(line('chat/hot', hot.url)).toMatch(/: +\/health 200 in \d+ ms, model "fixture-llm" \(owned by vllm\)$/);
    expect(line('tts/primary', tts.url)).toMatch(/: +\/health 200 in \d+ ms, version "2\.1" \(model "espeak-ng"\)$/);
    if (asr) expect(line('asr/primary', asr.url)).toMatch(/: +\/health 200 in \d+ ms, version "0\.9" \(model "pocketsphinx"\)$/);
  });

  it('ends with the next steps', () => {
    const shown = file;
    expect(result.stdout).toContain(`\nNext:\n  understudy validate -c ${shown}\n  understudy up -c ${shown}\n`);
    // External instances cannot be SIGKILLed by a drill: the fault offered is one the gateway makes.
    expect(result.stdout).toContain(`  understudy drill chat --fault error -c ${shown}`);
  });

  it('writes a commented file that pins the versions found and that validate accepts', async () => {
    const text = readFileSync(file, 'utf8');
    expect(text.split('\n').filter((l) => /^\s*# \w/.test(l)).length).toBeGreaterThan(20);
    expect(text).toContain('Written by `understudy init`');
    expect(text).toContain('# Next: a cold standby');
    const config = parseConfig(text, file);
    const chat = config.services.find((s) => s.name === 'chat')!;
    expect(chat.route.listen).toEqual({ host: '127.0.0.1', port: ports[0] });
    expect(chat.version).toMatchObject({ expect: 'fixture-llm', probe: { http: { path: '/v1/models' }, json: 'data.0.id' } });
    expect(chat.instances.map((i) => [i.name, i.tier, i.url, i.runtime.type, i.probes.ready.http?.path])).toEqual([
      ['primary', 'primary', primary.url, 'external', '/health'],
      ['hot', 'hot', hot.url, 'external', '/health'],
    ]);
    expect(chat.drill.request).toMatchObject({ method: 'POST', path: '/v1/chat/completions', body: { model: 'fixture-llm' } });
    expect(config.services.find((s) => s.name === 'tts')!.version).toMatchObject({ expect: '2.1', probe: { http: { path: '/version' }, json: 'version' } });

    const validate = await cli('validate', '-c', file);
    const count = asr ? '3 services, 4 instances' : '2 services, 3 instances';
    expect(validate).toMatchObject({ code: 0, stdout: `${file}: valid (${count})\n` });
  });

  it('makes a file `up` serves: the primary answers, and the standby once the primary is killed', async () => {
    const up = fork(CLI, ['up', '-c', file], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
    children.push(up);
    const output = captureTail([up.stderr]);
    try {
      const exited = once(up, 'exit').then(() => {
        throw new Error(`understudy up exited\n${output()}`);
      });
      await Promise.race([once(up, 'message'), exited]);
      const token = readFileSync(path.join(dir, 'first', '.understudy', 'admin.token'), 'utf8').trim();
      // Both admitted: ready, and reporting the pinned model.
      await waitUntil(
        async () => {
          const response = await request(`http://127.0.0.1:${ports[2]}/v1/status`, { headers: { authorization: `Bearer ${token}` } });
          const view = (await response.body.json()) as { services: Record<string, { active: string | null; instances: { name: string; admitted: boolean }[] }> };
          return view.services.chat!.active === 'primary' && view.services.chat!.instances.every((i) => i.admitted);
        },
        { what: 'chat/primary active and chat/hot admitted' },
      );
      const chat = async () => {
        const response = await request(`http://127.0.0.1:${ports[0]}/v1/chat/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: 'fixture-llm', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 4 }),
        });
        const body = (await response.body.json()) as { choices?: { message?: { content?: string } }[] };
        return { status: response.statusCode, instance: response.headers['x-understudy-instance'], text: body.choices?.[0]?.message?.content };
      };
      expect(await chat()).toMatchObject({ status: 200, instance: 'primary', text: expect.any(String) });

      // The drill the file offers passes as written: the primary's model is ejected, its requests
      // go to the standby, no probe request fails, and the service is put back.
      const drill = await cli('drill', 'chat', '--fault', 'error', '-c', file);
      expect(drill.stdout).toContain('model-ejected primary fixture-llm');
      expect(drill.stdout).toMatch(/drill \S+-chat-error: PASSED: clients saw no failure/);
      expect(drill.code).toBe(0);

      const gone = once(primary.proc, 'exit');
      primary.kill('SIGKILL');
      await gone;
      expect(await chat()).toMatchObject({ status: 200, instance: 'hot', text: expect.any(String) });
    } finally {
      await terminate(up, { graceMs: 15_000 });
    }
  });
});

describe('understudy init, other cases', () => {
  it('warns about a server that does not answer, and still writes a valid file', async () => {
    const [silent, listen] = await freePorts(2);
    const file = path.join(dir, 'silent.yaml');
    const result = await cli('init', '--yes', '-s', `speech=tts:${tts.url},http://127.0.0.1:${silent}`, '--listen', String(listen), '--probe-timeout', '1s', '-o', file);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(new RegExp(`speech/hot http://127\\.0\\.0\\.1:${silent}: +no answer \\(connect ECONNREFUSED\\); /health written as a guess`));
    expect(result.stderr).toBe(`understudy: warning: 1 server did not answer: speech/hot http://127.0.0.1:${silent}; their probes are guesses, marked in the file\n`);
    const text = readFileSync(file, 'utf8');
    expect(text).toContain('# It did not answer `understudy init` (connect ECONNREFUSED): the ready probe');
    expect(await cli('validate', '-c', file)).toMatchObject({ code: 0 });
  });

  it('pins no version when the instances do not serve the same model', async () => {
    const other = await startLlmServer({ name: 'c', models: ['other-model'] });
    const file = path.join(dir, 'mixed.yaml');
    const result = await cli('init', '--yes', '-s', `chat=llm:${hot.url},${other.url}`, '--listen', String(await freePort()), '-o', file);
    expect(result.code).toBe(0);
    expect(result.stderr).toBe('understudy: warning: chat: the instances do not report the same version (primary "fixture-llm", hot "other-model"); no version is pinned\n');
    const config = parseConfig(readFileSync(file, 'utf8'), file);
    expect(config.services[0]!.version).toBeUndefined();
    expect(readFileSync(file, 'utf8')).toMatch(/the version, once the instances agree \(now: primary "fixture-llm", hot\s+#\s+"other-model"\)/);
  });

  it('keeps an existing file unless --force', async () => {
    const file = path.join(dir, 'kept.yaml');
    writeFileSync(file, 'mine\n');
    const spec = `chat=llm:http://127.0.0.1:${await freePort()}`;
    const refused = await cli('init', '--yes', '--no-probe', '-s', spec, '-o', file);
    expect(refused).toMatchObject({ code: 1, stdout: '', stderr: `understudy: ${file} exists; nothing was changed (--force replaces it)\n` });
    expect(readFileSync(file, 'utf8')).toBe('mine\n');

    const forced = await cli('init', '--yes', '--no-probe', '--force', '-s', spec, '-o', file);
    expect(forced.code).toBe(0);
    expect(await cli('validate', '-c', file)).toMatchObject({ code: 0 });
  });

  it('says what is wrong with a --service spec, and writes nothing', async () => {
    const file = path.join(dir, 'bad.yaml');
    const cases: [string, string][] = [
      ['chat=http://127.0.0.1:8000', 'the kind is missing: write chat=KIND:http://127.0.0.1:8000 with KIND one of llm, tts, asr, image, http'],
      ['chat=gpt:http://127.0.0.1:8000', 'unknown kind "gpt": one of llm, tts, asr, image, http'],
      ['chat=llm:127.0.0.1:8000', '"127.0.0.1:8000" is not a URL (expected http://HOST:PORT)'],
      ['chat', 'expected [NAME=]KIND:URL[,URL...], e.g. chat=llm:http://127.0.0.1:8000,http://10.0.0.2:8000'],
      ['my chat=llm:http://127.0.0.1:8000', 'service name "my chat": use letters, digits, - and _, starting with a letter or digit'],
    ];
    for (const [spec, message] of cases) {
      const result = await cli('init', '--yes', '-s', spec, '-o', file);
      expect(result.code).toBe(1);
      expect(result.stderr).toContain(`error: option '-s, --service <spec>' argument '${spec}' is invalid. ${message}\n`);
    }
    expect(existsSync(file)).toBe(false);
  });

  it('asks for nothing with --yes, and says what is missing', async () => {
    expect(await cli('init', '--yes')).toMatchObject({ code: 1, stderr: expect.stringContaining('say which servers to keep answering: --service NAME=KIND:URL') });
    const cold = await cli('init', '--no-input', '-s', 'chat=llm:http://127.0.0.1:8000,cold:http://127.0.0.1:8002', '-o', 'cold.yaml');
    expect(cold).toMatchObject({
      code: 1,
      stderr: 'understudy: chat/cold http://127.0.0.1:8002 is a cold standby, which Understudy starts when needed: say how with --run http://127.0.0.1:8002=COMMAND (or --image http://127.0.0.1:8002=IMAGE)\n',
    });
  });

  it('writes process and docker runtimes from --run and --image', async () => {
    const [p1, p2, p3, listen] = await freePorts(4);
    const file = path.join(dir, 'runtimes', 'understudy.yaml');
    const result = await cli(
      'init', '--yes', '--no-probe',
      '-s', `tts=tts:http://127.0.0.1:${p1},http://127.0.0.1:${p2},cold:http://127.0.0.1:${p3}`,
      '--run', `http://127.0.0.1:${p1}=node ${TTS_SERVER} --port ${p1} --name "the primary"`,
      '--run', `tts/hot=VOICE=en-us node ${TTS_SERVER} --port ${p2}`,
      '--image', `http://127.0.0.1:${p3}=tts-server:1.0 --port ${p3}`,
      '--listen', String(listen), '-o', file,
    );
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(result.stdout).toContain(`  understudy drill tts --fault kill -c ${file}\n`);
    const config = parseConfig(readFileSync(file, 'utf8'), file);
    const [a, b, c] = config.services[0]!.instances;
    expect(a!.runtime).toMatchObject({ type: 'process', command: ['node', TTS_SERVER, '--port', String(p1), '--name', 'the primary'], cwd: dir, env: {} });
    expect(b!.runtime).toMatchObject({ type: 'process', command: ['node', TTS_SERVER, '--port', String(p2)], env: { VOICE: 'en-us' } });
    expect(c).toMatchObject({ tier: 'cold', runtime: { type: 'docker', image: 'tts-server:1.0', command: ['--port', String(p3)], ports: [{ hostIp: '127.0.0.1', hostPort: p3, containerPort: p3 }] } });
  });

  it('asks for the servers with --interactive, answers piped in', async () => {
    const [p1, p2, listen] = await freePorts(3);
    const file = path.join(dir, 'asked.yaml');
    const answers = [
      'tts', // kind
      'voice', // name
      tts.url, // primary
      'not a url', // hot standbys: refused, asked again
      tts.url, // the primary again: refused, asked again
      '', // no hot standby
      '', // the primary runs on its own
      `http://127.0.0.1:${p1}`, // a cold standby
      `node ${TTS_SERVER} --port ${p1}`,
      'n', // no other service
    ];
    const result = await cliWithInput(`${answers.join('\n')}\n`, 'init', '--interactive', '--listen', String(listen), '--admin', String(p2), '-o', file);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(result.stdout).toContain("URL of voice's primary (e.g. http://127.0.0.1:8000): " + tts.url);
    expect(result.stdout).toContain('  "not a url" is not a URL (expected http://HOST:PORT)\n');
    expect(result.stdout).toContain(`  ${tts.url} is given twice\n`);
    expect(result.stdout).toMatch(/voice\/primary http:\/\/127\.0\.0\.1:\d+: +\/health 200 in \d+ ms, version "2\.1"/);
    expect(result.stdout).toContain(`The same without questions:\n  understudy init --yes --service voice=tts:${tts.url},cold:http://127.0.0.1:${p1} --run "http://127.0.0.1:${p1}=node ${TTS_SERVER} --port ${p1}"`);
    const config = parseConfig(readFileSync(file, 'utf8'), file);
    expect(config.services[0]!.instances.map((i) => [i.name, i.tier, i.runtime.type])).toEqual([
      ['primary', 'primary', 'external'],
      ['cold', 'cold', 'process'],
    ]);
  });

  it('stops when the piped answers end early, and writes nothing', async () => {
    const file = path.join(dir, 'short.yaml');
    const result = await cliWithInput('llm\n', 'init', '--interactive', '-o', file);
    expect(result).toMatchObject({ code: 1, stderr: 'understudy: the input ended before every question was answered; nothing was written\n' });
    expect(existsSync(file)).toBe(false);
  });
});

describe('spec and command parsing', () => {
  it('reads tiers from the URL list', () => {
    expect(parseServiceSpec('llm:http://a:1/v1,http://b:2,cold:http://c:3,http://d:4')).toEqual({
      name: 'llm',
      kind: 'llm',
      instances: [
        { name: 'primary', tier: 'primary', url: 'http://a:1' },
        { name: 'hot', tier: 'hot', url: 'http://b:2' },
        { name: 'cold', tier: 'cold', url: 'http://c:3' },
        { name: 'hot2', tier: 'hot', url: 'http://d:4' },
      ],
    });
    expect(() => parseServiceSpec('x=llm:http://a:1,http://a:1/')).toThrow(new InvalidArgumentError('http://a:1 is given twice'));
  });

  it('splits a command into argv as a shell would, without running one', () => {
    expect(splitCommand(`vllm serve "my model" --port '8000' a\\ b --x=\${version}`)).toEqual(['vllm', 'serve', 'my model', '--port', '8000', 'a b', '--x=${version}']);
    expect(() => splitCommand('cd /m && vllm serve')).toThrow(/without a shell, so "&" would not work/);
    expect(() => splitCommand('vllm serve $MODEL')).toThrow(/without a shell, so variables would not work/);
    expect(() => splitCommand('vllm "serve')).toThrow('unmatched " in: vllm "serve');
  });
});
