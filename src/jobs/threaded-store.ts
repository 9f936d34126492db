import { Worker } from 'node:worker_threads';
import { JobError, StoreError } from './errors.js';
import { revive, type Call, type Reply, type SerializedError } from './store-thread.js';
import type { JobFilter, JobStore, PruneRule } from './store.js';
import type { ItemRecord, ItemResult, JobRecord, JobState, NewJob, StoredReply } from './types.js';

/**
 * The SQLite store (sqlite-store.ts) run on a worker thread. better-sqlite3 is
 * synchronous, and a commit with synchronous=FULL waits for the disk (2 to 6 ms on a
 * virtual disk, more at a WAL checkpoint): on the main thread that wait would stall
 * every request and every other job item for as long. Calls that arrive while a
 * commit runs are committed together in the next one.
 */
export class ThreadedJobStore implements JobStore {
  readonly kind = 'sqlite';
  private readonly calls = new Map<number, { resolve(value: unknown): void; reject(error: unknown): void }>();
  private next = 1;
  private failure: StoreError | undefined;
  private closing: Promise<void> | undefined;

  private constructor(
    readonly file: string,
    private readonly worker: Worker,
  ) {
    worker.on('message', (reply: Reply) => {
      const call = this.calls.get(reply.id);
      if (!call) return;
      this.calls.delete(reply.id);
      if ('error' in reply) call.reject(rebuild(reply.error));
      else call.resolve(revive(reply.value));
    });
    const fail = (reason: string) => {
      this.failure ??= new StoreError('STORE_IO', `the job store thread for ${file} stopped: ${reason}`);
      for (const call of this.calls.values()) call.reject(this.failure);
      this.calls.clear();
    };
    worker.on('error', (error) => fail(error.message));
    worker.on('exit', (code) => fail(`exit code ${code}`));
  }

  /** Opens the store on its own thread; rejects with the StoreError that opening it gave (locked, corrupt, ...). */
  static async open(file: string): Promise<ThreadedJobStore> {
    const workerData = { jobStoreFile: file };
    const worker = import.meta.url.endsWith('.js')
      ? new Worker(new URL('./store-thread.js', import.meta.url), { workerData })
      : // Run from TypeScript sources (the tests): the thread loads them through tsx.
        new Worker(
          `import('tsx/esm/api').then(({ register }) => { register(); return import(${JSON.stringify(new URL('./store-thread.ts', import.meta.url).href)}); })`,
          { eval: true, workerData },
        );
    const first = await new Promise<Reply>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
      worker.once('exit', (code) => reject(new StoreError('STORE_IO', `the job store thread exited (code ${code}) before opening ${file}`)));
    });
    if ('error' in first) {
      await worker.terminate();
      throw rebuild(first.error);
    }
    return new ThreadedJobStore(file, worker);
  }

  createJob(job: NewJob): Promise<{ job: JobRecord; created: boolean }> {
    return this.call('createJob', [job]);
  }
  getJob(id: string): Promise<JobRecord | undefined> {
    return this.call('getJob', [id]);
  }
  listJobs(filter?: JobFilter): Promise<JobRecord[]> {
    return this.call('listJobs', [filter]);
  }
  setJobState(id: string, state: JobState, reason: string | null, now: number): Promise<JobRecord> {
    return this.call('setJobState', [id, state, reason, now]);
  }
  pendingItems(jobId: string): Promise<ItemRecord[]> {
    return this.call('pendingItems', [jobId]);
  }
  items(jobId: string, from: number, limit: number): Promise<ItemRecord[]> {
    return this.call('items', [jobId, from, limit]);
  }
  recordResult(jobId: string, index: number, result: ItemResult): Promise<boolean> {
    return this.call('recordResult', [jobId, index, result]);
  }
  noteFailedTry(jobId: string, index: number): Promise<number> {
    return this.call('noteFailedTry', [jobId, index]);
  }
  getReply(scope: string, key: string, now: number): Promise<StoredReply | undefined> {
    return this.call('getReply', [scope, key, now]);
  }
  putReply(scope: string, key: string, reply: StoredReply, now: number): Promise<void> {
    return this.call('putReply', [scope, key, reply, now]);
  }
  pruneReplies(now: number): Promise<number> {
    return this.call('pruneReplies', [now]);
  }
  pruneJobs(rule: PruneRule): Promise<JobRecord[]> {
    return this.call('pruneJobs', [rule]);
  }

  /** Commits what is pending, closes the database and ends the thread. Safe to call twice. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      if (!this.failure) await this.call('close', []).catch(() => {});
      this.failure ??= new StoreError('STORE_CLOSED', `the job store ${this.file} is closed`);
      await this.worker.terminate();
    })();
    return this.closing;
  }

  private call<T>(method: string, args: unknown[]): Promise<T> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closing && method !== 'close') return Promise.reject(new StoreError('STORE_CLOSED', `the job store ${this.file} is closed`));
    const id = this.next++;
    return new Promise<T>((resolve, reject) => {
      this.calls.set(id, { resolve: resolve as (value: unknown) => void, reject });
      this.worker.postMessage({ id, method, args } satisfies Call);
    });
  }
}

function rebuild(error: SerializedError): Error {
  if (error.kind === 'JobError') return new JobError(error.code, error.message, error.status ?? 500, error.details ?? {});
  if (error.kind === 'StoreError') return new StoreError(error.code as ConstructorParameters<typeof StoreError>[0], error.message);
  return new Error(error.message);
}
