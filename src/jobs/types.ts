import type { JobState } from '../core/index.js';

export type { JobState };

export const FINAL_STATES: ReadonlySet<JobState> = new Set(['succeeded', 'failed', 'cancelled']);

/** How the results of a job's items are joined into one output file when it ends. */
export type JoinMode = 'none' | 'wav' | 'concat';

export interface JobOptions {
  /** Items that run at once. */
  concurrency: number;
  /** Longest run of one item, its whole answer included, in ms. */
  itemTimeout: number;
  /** Further tries of an item after a failed one. */
  retries: number;
  join: JoinMode;
}

/** The body an item sends: none, bytes kept in the store, or a file read when the item runs. */
export type ItemBody = { kind: 'none' } | { kind: 'inline'; data: Buffer } | { kind: 'file'; path: string; size: number };

/** One item: an ordinary request to the job's service. */
export interface ItemRequest {
  method: string;
  /** The path the model server receives, e.g. /v1/audio/speech. */
  path: string;
  headers: Record<string, string>;
  body: ItemBody;
}

/** A result body: none, kept in the store, or a file beside it (results larger than jobs.inlineLimit). */
export type ResultBody = { kind: 'none' } | { kind: 'inline'; data: Buffer } | { kind: 'file'; path: string; size: number };

export interface ItemResult {
  /** `failed`: the service answered 4xx, or every try failed. */
  state: 'succeeded' | 'failed';
  status: number | null;
  headers: Record<string, string>;
  body: ResultBody;
  instance: string | null;
  /** Tries made, this one included. */
  attempts: number;
  ms: number;
  error: string | null;
  finishedAt: number;
}

export interface ItemRecord {
  job: string;
  index: number;
  request: ItemRequest;
  state: 'pending' | 'succeeded' | 'failed';
  /** Failed tries so far (kept across restarts, so retries stay bounded). */
  failedTries: number;
  result: ItemResult | null;
}

export interface JobRecord {
  id: string;
  service: string;
  name: string | null;
  state: JobState;
  options: JobOptions;
  createdAt: number;
  updatedAt: number;
  finishedAt: number | null;
  total: number;
  succeeded: number;
  failed: number;
  /** Why the job is paused or failed, when something other than a person did it. */
  reason: string | null;
  /** The submitter's Idempotency-Key, if any. */
  key: string | null;
  /** A hash of the submission, to tell a repeat from a different job under the same key. */
  fingerprint: string;
}

export interface NewJob {
  id: string;
  service: string;
  name: string | null;
  options: JobOptions;
  items: ItemRequest[];
  key: string | null;
  fingerprint: string;
  createdAt: number;
}

/** An answer kept for repeats of an Idempotency-Key. */
export interface StoredReply {
  fingerprint: string;
  status: number;
  headers: Record<string, string | string[]>;
  body: Buffer;
  expiresAt: number;
}
