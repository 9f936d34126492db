// The example TTS server (examples/tts-server) for tests: started on a free port, asked
// to speak, and its segmented-stream frames (docs/streams.md) read back.
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { captureTail, terminate } from './process.js';

export const TTS_SERVER = fileURLToPath(new URL('../../examples/tts-server/server.mjs', import.meta.url));
export type Frame = { kind: 'H'; payload: Buffer } | { kind: 'S'; index: number; payload: Buffer } | { kind: 'E'; count: number };

/** Parses a whole framed body; throws on anything that is not a frame, or on a cut payload. */
export function parseFrames(body: Buffer): Frame[] {
  const frames: Frame[] = [];
  let at = 0;
  while (at < body.length) {
    const end = body.indexOf(0x0a, at);
    if (end < 0 || end - at > 64) throw new Error(`no frame line at byte ${at}`);
    const line = body.toString('latin1', at, end);
    at = end + 1;
    const match = /^(?:H (\d+)|S (\d+) (\d+)|E (\d+))$/.exec(line);
    if (!match) throw new Error(`not a frame line: ${JSON.stringify(line)}`);
    if (match[4] !== undefined) {
      frames.push({ kind: 'E', count: Number(match[4]) });
      continue;
    }
    const length = Number(match[1] ?? match[3]);
    if (at + length > body.length) throw new Error(`frame ${JSON.stringify(line)} is cut at byte ${body.length}`);
    const payload = body.subarray(at, at + length);
    at += length;
    frames.push(match[1] !== undefined ? { kind: 'H', payload } : { kind: 'S', index: Number(match[2]), payload });
  }
  return frames;
}

export const segmentsOf = (frames: Frame[]) => frames.filter((f): f is Extract<Frame, { kind: 'S' }> => f.kind === 'S');

/**
 * Byte equality, described briefly: toEqual on audio-sized Buffers compares element by
 * element and diffs them, which takes minutes.
 */
export function bytes(a: Buffer, b: Buffer): string {
  if (a.equals(b)) return 'identical';
  let at = 0;
  while (at < a.length && at < b.length && a[at] === b[at]) at++;
  return `differ: ${a.length} and ${b.length} bytes, first difference at byte ${at}`;
}

/** Segments as index and a short description of the bytes, to compare in one expect. */
export const described = (frames: Frame[], against: Frame[]) =>
  segmentsOf(frames).map((s) => {
    const other = segmentsOf(against).find((o) => o.index === s.index);
    return [s.index, other ? bytes(s.payload, other.payload) : 'missing'];
  });

export interface Server {
  proc: ChildProcess;
  url: string;
  output: () => string;
}

const servers: Server[] = [];

/** Stops every TTS server this process started. */
export async function stopAllTtsServers(): Promise<void> {
  await Promise.all(servers.splice(0).map((s) => terminate(s.proc)));
}

/** Forks the server on a free port; resolves once its model has loaded (the IPC 'ready' message). */
export function startTtsServer(name: string): Promise<Server> {
  // Plain node: vitest's loader flags would only slow it down.
  const proc = fork(TTS_SERVER, ['--port', '0', '--name', name, '--model-version', '2.1'], {
    execArgv: [],
    stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
  });
  const output = captureTail([proc.stderr]);
  const server: Server = { proc, url: '', output };
  servers.push(server);
  return new Promise((resolve, reject) => {
    const onExit = (code: number | null, signal: NodeJS.Signals | null) =>
      reject(new Error(`tts server exited (${signal ?? code}) before it was ready\n${output()}`));
    proc.once('exit', onExit);
    proc.on('message', (message: { type: string; port?: number }) => {
      if (message.type === 'listening' && message.port !== undefined) server.url = `http://127.0.0.1:${message.port}`;
      if (message.type !== 'ready') return;
      proc.off('exit', onExit);
      resolve(server);
    });
  });
}

export async function speak(server: Server, body: Record<string, unknown>, headers: Record<string, string> = {}) {
  const response = await fetch(`${server.url}/v1/audio/speech`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model: 'espeak-ng', voice: 'en-us', ...body }),
  });
  return { response, body: Buffer.from(await response.arrayBuffer()) };
}

