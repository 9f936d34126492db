import type { ItemRecord, ItemResult, JobRecord, JobState, NewJob, StoredReply } from './types.js';

export interface JobFilter {
  state?: JobState | undefined;
  service?: string | undefined;
  /** Newest first; default 100. */
  limit?: number | undefined;
}

/** Which finished jobs to forget: see JobStore.pruneJobs. */
export interface PruneRule {
  /** Every finished job that finished before this time (ms since the epoch); null: none for its age. */
  finishedBefore: number | null;
  /** Every finished job past the newest this many; null: none for their number. */
  keep: number | null;
  /** Only say which jobs would go. */
  dryRun?: boolean;
  /** Jobs kept whatever the rule: those this node still holds (a cancelled job whose outputs are being written). */
  except?: string[];
}

/**
 * Where jobs, their items' results and idempotent replies are kept. Every write is
 * durable (on disk, fsynced) before its promise resolves. SQLite is the embedded
 * default; a store shared by several nodes implements the same contract and must
 * pass test/jobs/store-conformance.ts.
 */
export interface JobStore {
  readonly kind: string;
  /**
   * Saves a job and all its items in one transaction. When `job.key` names a job that
   * exists, returns that job unchanged (created: false) if the fingerprints match, and
   * throws JobError KEY_REUSED if they do not.
   */
  createJob(job: NewJob): Promise<{ job: JobRecord; created: boolean }>;
  getJob(id: string): Promise<JobRecord | undefined>;
  listJobs(filter?: JobFilter): Promise<JobRecord[]>;
  /** Changes a job's state; `reason` null clears it. Throws JobError NO_JOB for an unknown id. */
  setJobState(id: string, state: JobState, reason: string | null, now: number): Promise<JobRecord>;
  /** Items without a result, in item order. */
  pendingItems(jobId: string): Promise<ItemRecord[]>;
  /** Items from `from` in item order, at most `limit`. */
  items(jobId: string, from: number, limit: number): Promise<ItemRecord[]>;
  /**
   * Records an item's result exactly once: false, with nothing changed, when the item
   * already has one. Updates the job's counts in the same transaction.
   */
  recordResult(jobId: string, index: number, result: ItemResult): Promise<boolean>;
  /** Counts a failed try of a pending item; returns the count. */
  noteFailedTry(jobId: string, index: number): Promise<number>;
  getReply(scope: string, key: string, now: number): Promise<StoredReply | undefined>;
  /** Keeps an answer for repeats of its key; an answer that has not expired at `now` is kept instead. */
  putReply(scope: string, key: string, reply: StoredReply, now: number): Promise<void>;
  /** Forgets answers that expired before `now`; returns how many. */
  pruneReplies(now: number): Promise<number>;
  /**
   * Forgets finished jobs (succeeded, failed, cancelled) and their items, by the rule;
   * a running or paused job is never touched. Returns the jobs forgotten (with dryRun,
   * that would be), newest first. Their files are the caller's to remove.
   */
  pruneJobs(rule: PruneRule): Promise<JobRecord[]>;
  /**
   * A store shared by the nodes of a cluster: refuses the fenced writes (a job's state,
   * an item's result, a failed try) of any epoch below `epoch` from now on, after
   * those in flight. Returns the fence. Stores of one node have none.
   */
  raiseFence?(epoch: number): Promise<number>;
  close(): Promise<void>;
}

/** The jobs a rule removes, from the finished ones newest first (as every store lists them). */
export function pickPruned(finished: JobRecord[], rule: PruneRule): JobRecord[] {
  const held = new Set(rule.except ?? []);
  return finished.filter(
    (job, newer) =>
      !held.has(job.id) && ((rule.keep !== null && newer >= rule.keep) || (rule.finishedBefore !== null && (job.finishedAt ?? job.updatedAt) < rule.finishedBefore)),
  );
}
