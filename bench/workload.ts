import { mkdtemp } from 'node:fs/promises';
import path from 'node:path';
import { startModelServer, type ModelServer } from '../test/support/fixture.js';
import { epochNow, type LoadOptions } from '../test/support/load.js';
import type { Backends } from './proxies/types.js';

/** The request every scenario sends: a small JSON inference call. */
export const inferRequest = {
  method: 'POST',
  body: JSON.stringify({ input: 'The quick brown fox', max_tokens: 16 }),
  headers: { 'content-type': 'application/json' },
  tagHeader: 'x-served-by',
} satisfies Partial<LoadOptions>;

export interface BackendPair {
  primary: ModelServer;
  standby: ModelServer;
  ports: Backends;
  stop(): Promise<void>;
}

/** A fresh primary and hot standby, both answering after latencyMs. */
export async function startBackends(latencyMs: number): Promise<BackendPair> {
  const [primary, standby] = await Promise.all([
    startModelServer({ name: 'primary', latencyMs }),
    startModelServer({ name: 'standby', latencyMs }),
  ]);
  return {
    primary,
    standby,
    ports: { primaryPort: primary.port, standbyPort: standby.port },
    stop: async () => {
      await Promise.all([primary.stop(), standby.stop()]);
    },
  };
}

export function freshDir(root: string, prefix: string): Promise<string> {
  return mkdtemp(path.join(root, `${prefix}-`));
}

/** Progress goes to stderr: stdout carries only the report. */
export function progress(message: string): void {
  process.stderr.write(`[bench] ${message}\n`);
}

/** Applies a fault after delayMs and remembers when (epoch ms). */
export function scheduleFault(apply: () => void, delayMs: number): { at(): number | null; cancel(): void } {
  let at: number | null = null;
  const timer = setTimeout(() => {
    at = epochNow();
    apply();
  }, delayMs);
  return { at: () => at, cancel: () => clearTimeout(timer) };
}
