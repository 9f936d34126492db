import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { waitForMessage } from './fixture.js';
import { captureTail, hasExited, terminate } from './process.js';

export const LLM_SERVER_PATH = fileURLToPath(new URL('../fixtures/llm-server.mjs', import.meta.url));

export type PrefillMode = 'continue-final-message' | 'assistant-prefill' | 'refuse';

export type LlmFaultMode = 'none' | 'cut' | 'stall' | 'error-event' | 'malformed' | 'no-done' | 'status' | 'hang' | 'slow-first-token' | 'delay';

/** A fault of the imitation LLM server; see test/fixtures/README.md. */
export interface LlmFault {
  mode: LlmFaultMode;
  /** Content tokens sent before a stream breaks (cut, stall, error-event, malformed, no-done). */
  after?: number;
  /** How many requests it applies to; every one when left out. */
  times?: number;
  /** Only requests for this model. */
  model?: string;
  /** mode status: the status, a Retry-After header (seconds), the body. */
  status?: number;
  retryAfter?: number | string;
  body?: unknown;
  /** mode delay (before the headers) and slow-first-token (before the first token). */
  delayMs?: number;
  message?: string;
}

export interface LlmServerOptions {
  name?: string;
  models?: string[];
  ownedBy?: string;
  prefill?: PrefillMode;
  contextWindow?: number;
  eos?: number;
  tokenDelayMs?: number;
  loadDelayMs?: number;
  modelVersion?: string;
  fault?: LlmFault;
  /** A reasoning model: chat answers stream this many delta.reasoning_content chunks first. */
  reasoningTokens?: number;
  port?: number;
  startTimeoutMs?: number;
}

export interface LlmLogEntry {
  at: number;
  kind: 'chat' | 'completions';
  model: string | undefined;
  request: Record<string, unknown> & { messages?: { role: string; content: unknown }[]; prompt?: string };
  status: number;
  tokens: number;
  fault: LlmFaultMode;
  end: string;
}

export interface LlmServer {
  name: string;
  port: number;
  url: string;
  pid: number;
  proc: ChildProcess;
  kill(signal: NodeJS.Signals): void;
  fault(fault: LlmFault): Promise<void>;
  /** The generation requests it received, oldest first. */
  log(): Promise<LlmLogEntry[]>;
  stop(): Promise<void>;
}

const running = new Set<LlmServer>();

function toArgs(o: LlmServerOptions): string[] {
  const flags: [string, string | number | undefined][] = [
    ['--port', o.port ?? 0],
    ['--name', o.name],
    ['--models', o.models?.join(',')],
    ['--owned-by', o.ownedBy],
    ['--prefill', o.prefill],
    ['--context-window', o.contextWindow],
    ['--eos', o.eos],
    ['--token-delay', o.tokenDelayMs],
    ['--load-delay', o.loadDelayMs],
    ['--model-version', o.modelVersion],
    ['--fault', o.fault && JSON.stringify(o.fault)],
    ['--reasoning-tokens', o.reasoningTokens],
  ];
  return flags.flatMap(([flag, value]) => (value === undefined ? [] : [flag, String(value)]));
}

/** Spawns test/fixtures/llm-server.mjs and waits until its model is loaded. */
export async function startLlmServer(options: LlmServerOptions = {}): Promise<LlmServer> {
  const proc = fork(LLM_SERVER_PATH, toArgs(options), { execArgv: [], stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
  const output = captureTail([proc.stderr]);
  let port: number;
  try {
    port = await waitForMessage(proc, 'ready', options.startTimeoutMs ?? 10_000, output);
  } catch (error) {
    await terminate(proc);
    throw error;
  }
  const url = `http://127.0.0.1:${port}`;
  let stopping: Promise<void> | undefined;
  const server: LlmServer = {
    name: options.name ?? 'llm',
    port,
    url,
    pid: proc.pid!,
    proc,
    kill: (signal) => {
      if (!hasExited(proc)) proc.kill(signal);
    },
    async fault(fault) {
      const response = await fetch(`${url}/__fault`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(fault) });
      if (!response.ok) throw new Error(`POST ${url}/__fault answered ${response.status}: ${await response.text()}`);
    },
    async log() {
      const response = await fetch(`${url}/__stats`);
      return ((await response.json()) as { log: LlmLogEntry[] }).log;
    },
    stop() {
      stopping ??= terminate(proc).finally(() => running.delete(server));
      return stopping;
    },
  };
  running.add(server);
  return server;
}

export async function stopAllLlmServers(): Promise<void> {
  await Promise.all([...running].map((server) => server.stop()));
}

/** A streamed answer as a client reads it. */
export interface StreamRead {
  status: number;
  headers: Headers;
  /** The parsed `data:` events, `[DONE]` left out. */
  chunks: Record<string, any>[];
  /** The answer text: every chunk's delta.content (chat) or text (completions). */
  text: string;
  /** How many `data: [DONE]` lines came. */
  done: number;
  /** The chunks that carry `error`. */
  errors: Record<string, any>[];
  /** The final chunk: the one with a finish_reason. */
  final: Record<string, any> | undefined;
  /** The chunk with usage (include_usage). */
  usage: Record<string, any> | undefined;
  raw: string;
  /** The body ended with an error (reset) rather than cleanly. */
  broken: string | undefined;
}

/** POSTs a generation and reads its whole stream; never throws for a broken body. `onChunk` sees the content chunks as they come. */
export async function streamGeneration(
  url: string,
  path: '/v1/chat/completions' | '/v1/completions',
  body: Record<string, unknown>,
  options: { headers?: Record<string, string>; onChunk?: (contentChunks: number) => void } = {},
): Promise<StreamRead> {
  const response = await fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...options.headers }, body: JSON.stringify({ stream: true, ...body }) });
  let raw = '';
  let broken: string | undefined;
  const decoder = new TextDecoder();
  let seen = 0;
  try {
    for await (const piece of response.body ?? []) {
      raw += decoder.decode(piece as Uint8Array, { stream: true });
      if (!options.onChunk) continue;
      const content = (raw.match(/"(content|text)":"[^"]/g) ?? []).length;
      if (content > seen) options.onChunk((seen = content));
    }
  } catch (error) {
    broken = (error as Error).message;
  }
  return { status: response.status, headers: response.headers, ...parseStream(raw), raw, broken };
}

export function parseStream(raw: string): Pick<StreamRead, 'chunks' | 'text' | 'done' | 'errors' | 'final' | 'usage'> {
  const chunks: Record<string, any>[] = [];
  let done = 0;
  for (const event of raw.split(/\r?\n\r?\n/)) {
    const data = event
      .split(/\r?\n/)
      .filter((line) => line.startsWith('data:'))
      .map((line) => line.slice(5).trimStart())
      .join('\n');
    if (data === '') continue;
    if (data === '[DONE]') done += 1;
    else {
      try {
        chunks.push(JSON.parse(data) as Record<string, any>);
      } catch {
        chunks.push({ malformed: data });
      }
    }
  }
  const text = chunks.map((c) => c.choices?.[0]?.delta?.content ?? c.choices?.[0]?.text ?? '').join('');
  return {
    chunks,
    text,
    done,
    errors: chunks.filter((c) => c.error !== undefined),
    final: chunks.find((c) => c.choices?.[0]?.finish_reason),
    usage: chunks.find((c) => c.usage),
  };
}
