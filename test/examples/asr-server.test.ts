// The example speech-recognition server (examples/asr-server), end to end: recordings
// spoken by the TTS example's espeak-ng engine, transcribed by pocketsphinx. Needs
// pocketsphinx: run examples/asr-server/install.sh first (CI does).
import { execFile, fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { captureTail, terminate } from '../support/process.js';
import { waitUntil } from '../support/wait.js';

const run = promisify(execFile);
const EXAMPLE = fileURLToPath(new URL('../../examples/asr-server/', import.meta.url));
const SERVER = path.join(EXAMPLE, 'server.mjs');
const MAKE_RECORDINGS = path.join(EXAMPLE, 'make-recordings.mjs');

interface Recording {
  file: string;
  text: string;
}

let dir: string;
let proc: ChildProcess | undefined;
let output: () => string = () => '';
let url: string;

/** Makes recordings into dir/name; resolves to what each file says. */
async function makeRecordings(name: string, args: string[]): Promise<Recording[]> {
  const out = path.join(dir, name);
  await run(process.execPath, [MAKE_RECORDINGS, '--out', out, ...args]);
  return readFileSync(path.join(out, 'expected.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line) as Recording)
    .map(({ file, text }) => ({ file: path.join(out, file), text }));
}

/** Forks the server on a free port; resolves to its port once it listens. */
function startServer(args: string[]): Promise<number> {
  // Plain node: vitest's loader flags would only slow it down.
  proc = fork(SERVER, ['--port', '0', ...args], { execArgv: [], stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
  output = captureTail([proc.stderr]);
  const child = proc;
  return new Promise((resolve, reject) => {
    const onExit = (code: number | null, signal: NodeJS.Signals | null) =>
      reject(new Error(`asr server exited (${signal ?? code}) before listening; is pocketsphinx installed (examples/asr-server/install.sh)?\n${output()}`));
    child.once('exit', onExit);
    child.on('message', (message: { type: string; port?: number }) => {
      if (message.type !== 'listening' || message.port === undefined) return;
      child.off('exit', onExit);
      resolve(message.port);
    });
  });
}

const transcribe = (body: BodyInit, headers: Record<string, string> = {}, query = '') =>
  fetch(`${url}/v1/audio/transcriptions${query}`, { method: 'POST', headers, body });

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'understudy-asr-'));
  const port = await startServer(['--name', 'asr-test', '--model-version', '3.2', '--load-delay', '200ms']);
  url = `http://127.0.0.1:${port}`;
  // Listening comes first; /health says loading until the warm-up run and the load delay are over.
  expect((await fetch(`${url}/health`)).status).toBe(503);
  await waitUntil(async () => (await fetch(`${url}/health`)).status === 200, { timeoutMs: 20_000, what: 'asr server health 200' });
});

afterAll(async () => {
  if (proc) await terminate(proc);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('example asr server', () => {
  it('reports its version and names itself in headers', async () => {
    const response = await fetch(`${url}/version`);
    expect(response.headers.get('x-model-version')).toBe('3.2');
    expect(response.headers.get('x-instance-name')).toBe('asr-test');
    expect(await response.json()).toEqual({ model: 'pocketsphinx', version: '3.2' });
  });

  it('transcribes raw WAV recordings exactly', async () => {
    // 22,050 Hz mono, espeak-ng's own rate: the server resamples to 16 kHz.
    const recordings = await makeRecordings('raw', ['--count', '5']);
    expect(recordings).toHaveLength(5);
    for (const { file, text } of recordings) {
      const response = await transcribe(readFileSync(file), { 'content-type': 'audio/wav' });
      expect(response.status, output()).toBe(200);
      expect(await response.json(), path.basename(file)).toEqual({ text });
    }
  });

  it('downmixes and resamples 44.1 kHz stereo', async () => {
    const recordings = await makeRecordings('stereo', ['--count', '8', '--sample-rate', '44100', '--channels', '2']);
    const { file, text } = recordings.at(-1)!;
    const response = await transcribe(readFileSync(file), { 'content-type': 'application/octet-stream' });
    expect(await response.json()).toEqual({ text });
  });

  it('takes an OpenAI-style multipart upload and answers text when asked', async () => {
    const recordings = await makeRecordings('multipart', ['--count', '12']);
    const { file, text } = recordings.at(-1)!;
    const form = new FormData();
    form.set('file', new Blob([readFileSync(file)], { type: 'audio/wav' }), path.basename(file));
    form.set('model', 'whisper-1');
    const json = await transcribe(form);
    expect(await json.json()).toEqual({ text });

    const plain = new FormData();
    plain.set('file', new Blob([readFileSync(file)], { type: 'audio/wav' }), path.basename(file));
    plain.set('response_format', 'text');
    const response = await transcribe(plain);
    expect(response.headers.get('content-type')).toMatch(/^text\/plain/);
    expect(await response.text()).toBe(`${text}\n`);
  });

  it('rejects a body that is not a WAV file with a 400 in OpenAI shape', async () => {
    const response = await transcribe('this is not audio', { 'content-type': 'audio/wav' });
    expect(response.status).toBe(400);
    const body = (await response.json()) as { error: { message: string; type: string } };
    expect(body.error.type).toBe('invalid_request_error');
    expect(body.error.message).toMatch(/not a WAV file/);

    const form = new FormData();
    form.set('file', new Blob([Buffer.from('RIFF....WAVEjunk')]), 'broken.wav');
    expect((await transcribe(form)).status).toBe(400);
  });
});
