import { parentPort, workerData } from 'node:worker_threads';
import { JobError, StoreError } from './errors.js';
import { SqliteJobStore } from './sqlite-store.js';

/*
 * The SQLite job store on a thread of its own (see threaded-store.ts): a commit's fsync
 * then blocks this thread, not the one that serves requests.
 */

export interface Call {
  id: number;
  method: string;
  args: unknown[];
}

export type Reply = { id: number; value: unknown } | { id: number; error: SerializedError };

export interface SerializedError {
  kind: 'StoreError' | 'JobError' | 'Error';
  code: string;
  message: string;
  status?: number;
  details?: Record<string, unknown>;
}

export function serializeError(error: unknown): SerializedError {
  if (error instanceof JobError) return { kind: 'JobError', code: error.code, message: error.message, status: error.status, details: error.details };
  if (error instanceof StoreError) return { kind: 'StoreError', code: error.code, message: error.message };
  return { kind: 'Error', code: 'ERROR', message: error instanceof Error ? error.message : String(error) };
}

/** Buffers cross a thread as plain Uint8Arrays: make them Buffers again (better-sqlite3 binds only Buffers). */
export function revive(value: unknown): unknown {
  if (value instanceof Uint8Array) return Buffer.isBuffer(value) ? value : Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  if (Array.isArray(value)) return value.map(revive);
  if (value !== null && typeof value === 'object') {
    for (const [key, inner] of Object.entries(value)) (value as Record<string, unknown>)[key] = revive(inner);
  }
  return value;
}

const port = parentPort;
const file = (workerData as { jobStoreFile?: string } | null)?.jobStoreFile;
if (port && file) {
  let store: SqliteJobStore | undefined;
  try {
    store = SqliteJobStore.open(file);
    port.postMessage({ id: 0, value: 'ready' } satisfies Reply);
  } catch (error) {
    port.postMessage({ id: 0, error: serializeError(error) } satisfies Reply);
  }
  port.on('message', (call: Call) => {
    const target = store as unknown as Record<string, (...args: unknown[]) => Promise<unknown>> | undefined;
    const method = target?.[call.method];
    if (!target || typeof method !== 'function') {
      port.postMessage({ id: call.id, error: { kind: 'Error', code: 'ERROR', message: `no store method ${call.method}` } } satisfies Reply);
      return;
    }
    method.apply(target, revive(call.args) as unknown[]).then(
      (value) => port.postMessage({ id: call.id, value } satisfies Reply),
      (error: unknown) => port.postMessage({ id: call.id, error: serializeError(error) } satisfies Reply),
    );
  });
}
