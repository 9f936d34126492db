import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { captureTail, hasExited, terminate } from './process.js';

export const MODEL_SERVER_PATH = fileURLToPath(new URL('../fixtures/model-server.mjs', import.meta.url));

export type FaultMode = 'none' | 'error500' | 'slow' | 'hang';

export interface ModelServerOptions {
  port?: number;
  name?: string;
  modelVersion?: string;
  latencyMs?: number;
  loadDelayMs?: number;
  ignoreSigterm?: boolean;
  exitAfterMs?: number;
  exitCode?: number;
  fault?: FaultMode;
  /** --record: append `name request-id` per /v1/infer request to this file. */
  record?: string;
  /** Resolve once the port is open ('listening', default) or once the model is loaded ('ready'). */
  waitFor?: 'listening' | 'ready';
  startTimeoutMs?: number;
}

export interface ModelServerStats {
  name: string;
  fault: { mode: FaultMode; slowMs: number };
  requests: number;
  byPath: Record<string, number>;
  aborted: number;
  startedAt: number;
  readyAt: number | null;
}

export interface ModelServer {
  port: number;
  url: string;
  pid: number;
  proc: ChildProcess;
  kill(signal: NodeJS.Signals): void;
  fault(mode: FaultMode, slowMs?: number): Promise<void>;
  stats(): Promise<ModelServerStats>;
  /** SIGTERM, SIGKILL after graceMs; safe to call more than once. */
  stop(graceMs?: number): Promise<void>;
}

interface FixtureMessage {
  type: 'listening' | 'ready';
  port: number;
}

const running = new Set<ModelServer>();

function toArgs(options: ModelServerOptions): string[] {
  const flags: [string, string | number | undefined][] = [
    ['--port', options.port ?? 0],
    ['--name', options.name],
    ['--model-version', options.modelVersion],
    ['--latency', options.latencyMs],
    ['--load-delay', options.loadDelayMs],
    ['--exit-after', options.exitAfterMs],
    ['--exit-code', options.exitCode],
    ['--fault', options.fault],
    ['--record', options.record],
  ];
  const args = flags.flatMap(([flag, value]) => (value === undefined ? [] : [flag, String(value)]));
  return options.ignoreSigterm ? [...args, '--ignore-sigterm'] : args;
}

/** Resolves the port a fixture reports in its `listening` or `ready` IPC message. */
export function waitForMessage(proc: ChildProcess, type: FixtureMessage['type'], timeoutMs: number, output: () => string): Promise<number> {
  return new Promise((resolve, reject) => {
    const cleanup = () => {
      clearTimeout(timer);
      proc.off('message', onMessage);
      proc.off('exit', onExit);
    };
    const fail = (reason: string) => {
      cleanup();
      reject(new Error(`model server ${reason}\n${output()}`));
    };
    const onMessage = (message: FixtureMessage) => {
      if (message.type !== type) return;
      cleanup();
      resolve(message.port);
    };
    const onExit = (code: number | null, sig: NodeJS.Signals | null) => fail(`exited (${sig ?? code}) before '${type}'`);
    const timer = setTimeout(() => fail(`sent no '${type}' within ${timeoutMs} ms`), timeoutMs);
    proc.on('message', onMessage);
    proc.once('exit', onExit);
  });
}

export async function fetchStats(url: string): Promise<ModelServerStats> {
  const response = await fetch(`${url}/__stats`);
  if (!response.ok) throw new Error(`GET ${url}/__stats answered ${response.status}`);
  return (await response.json()) as ModelServerStats;
}

/** Spawns test/fixtures/model-server.mjs; stop it with stop() or stopAll(). */
export async function startModelServer(options: ModelServerOptions = {}): Promise<ModelServer> {
  // Plain node: the parent's loader flags (tsx, vitest) would only slow the fixture down.
  const proc = fork(MODEL_SERVER_PATH, toArgs(options), { execArgv: [], stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
  const output = captureTail([proc.stderr]);
  let port: number;
  try {
    port = await waitForMessage(proc, options.waitFor ?? 'listening', options.startTimeoutMs ?? 10_000, output);
  } catch (error) {
    await terminate(proc);
    throw error;
  }

  const url = `http://127.0.0.1:${port}`;
  let stopping: Promise<void> | undefined;
  const server: ModelServer = {
    port,
    url,
    pid: proc.pid!,
    proc,
    kill: (signal) => {
      if (!hasExited(proc)) proc.kill(signal);
    },
    async fault(mode, slowMs) {
      const response = await fetch(`${url}/__fault`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ mode, slowMs }),
      });
      if (!response.ok) throw new Error(`POST ${url}/__fault answered ${response.status}: ${await response.text()}`);
    },
    stats: () => fetchStats(url),
    stop(graceMs) {
      stopping ??= terminate(proc, { graceMs }).finally(() => running.delete(server));
      return stopping;
    },
  };
  running.add(server);
  return server;
}

/** Stops every model server this process started and has not stopped yet. */
export async function stopAll(): Promise<void> {
  await Promise.all([...running].map((server) => server.stop()));
}
