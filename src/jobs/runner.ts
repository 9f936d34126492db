import { readFile, rm } from 'node:fs/promises';
import type { JobsConfig } from '../config/index.js';
import type { EventBody } from '../core/index.js';
import { classifyStatus, describeRequest, exchange, ProxyError, retryAfterMs, type Ended, type ProxyHooks, type Upstreams } from '../proxy/index.js';
import { JobError, StoreError } from './errors.js';
import { DurableFile, type JobFiles } from './files.js';
import { writeJoined, writeResults } from './output.js';
import { compileSubmission, newJobId } from './spec.js';
import type { JobStore } from './store.js';
import { FINAL_STATES, type ItemRecord, type ItemResult, type JobRecord, type JobState, type ResultBody } from './types.js';

/** Answers that say the request itself is wrong: trying it again gives the same answer. */
/** The service had no instance to try (none ready, queue full): waiting costs the item no try. */
const NOT_TRIED = new Set(['NO_READY_INSTANCE', 'QUEUE_FULL']);
const MAX_RETRY_DELAY_MS = 30_000;
const RATE_WINDOW = 100;

export interface RunnerOptions {
  store: JobStore;
  files: JobFiles;
  defaults: JobsConfig;
  upstreams(service: string): Upstreams | undefined;
  hooks: Pick<ProxyHooks, 'onAttempt' | 'onRetry'>;
  publish(service: string, event: EventBody): void;
  /** One finished try of an item, for metrics. */
  onItem?(service: string, outcome: 'succeeded' | 'failed' | 'retried' | 'duplicate', ms: number): void;
  onError(message: string, error: unknown): void;
  /** Finished jobs removed by jobs.retention (at start, then hourly), with their files. */
  onPruned?(jobs: JobRecord[]): void;
  now?: () => number;
}

/** What one prune removes: by default the config's jobs.retention. */
export interface PruneRequest {
  /** Finished jobs older than this (ms) go; null: none for their age. */
  maxAge?: number | null;
  /** At most this many finished jobs stay, the newest; null: no limit. */
  maxCount?: number | null;
  dryRun?: boolean;
}

const PRUNE_EVERY_MS = 3_600_000;

/** A job as shown: its record plus live progress while it runs here. */
export interface JobView extends JobRecord {
  done: number;
  pending: number;
  running: number;
  /** Items finished per second recently, while the job runs here. */
  ratePerSecond: number | null;
  etaSeconds: number | null;
  outputs: { results: string; joined: string | null };
}

/** The listener key of subscribeAll: job ids are never empty. */
const ALL_JOBS = '';

type RunnerState = 'created' | 'running' | 'closing' | 'closed';

/**
 * Runs durable jobs: each item is a request sent through the service's own router
 * (so failover, the cold-start queue and every health rule apply), and each finished
 * item is recorded in the store before it counts. On start, every job that was
 * running continues from its last recorded item.
 */
export class JobRunner {
  private readonly runs = new Map<string, JobRun>();
  /** Loads in progress, so two requests for one job never make two runs of it. */
  private readonly loading = new Map<string, Promise<JobRun>>();
  /** Progress listeners by job id: they outlive runs (a paused job's run is loaded when it resumes). */
  private readonly listeners = new Map<string, Set<(view: JobView) => void>>();
  private state: RunnerState = 'created';
  private closing: Promise<void> | undefined;
  private pruneTimer: NodeJS.Timeout | undefined;
  readonly now: () => number;

  constructor(readonly options: RunnerOptions) {
    this.now = options.now ?? Date.now;
  }

  /** Continues every job that was running when Understudy last stopped. */
  async start(): Promise<void> {
    if (this.state !== 'created') throw new Error(`cannot start the job runner: it is ${this.state}`);
    this.state = 'running';
    for (const record of await this.options.store.listJobs({ state: 'running', limit: 1_000_000 })) {
      const run = await this.load(record);
      const done = record.succeeded + record.failed;
      this.options.publish(record.service, {
        type: 'job-resumed',
        job: record.id,
        done,
        total: record.total,
        reason: `continues after a restart of Understudy: ${done} of ${record.total} items were already done`,
      });
      run.pump();
    }
    // Retention: once now (what expired while Understudy was stopped), then every hour.
    const prune = () => {
      this.prune()
        .then((gone) => gone.length > 0 && this.options.onPruned?.(gone))
        .catch((error: unknown) => this.options.onError('could not remove finished jobs (jobs.retention)', error));
    };
    prune();
    this.pruneTimer = setInterval(prune, PRUNE_EVERY_MS).unref();
  }

  /**
   * Removes finished jobs past the retention (the config's, or the one asked for) from
   * the store, then their result files and outputs. Running and paused jobs stay.
   * Returns the jobs removed, newest first; with dryRun, those that would be.
   */
  async prune(request: PruneRequest = {}): Promise<JobRecord[]> {
    this.mustRun();
    const { retention } = this.options.defaults;
    const maxAge = request.maxAge === undefined ? retention.maxAge : request.maxAge;
    const keep = request.maxCount === undefined ? retention.maxCount : request.maxCount;
    const dryRun = request.dryRun === true;
    // A job still held here (its run writing a cancelled job's outputs) is left for the next prune.
    const except = [...this.runs.keys(), ...this.loading.keys()];
    const gone = await this.options.store.pruneJobs({ finishedBefore: maxAge === null ? null : this.now() - maxAge, keep, dryRun, except });
    if (!dryRun) {
      for (const job of gone) await rm(this.options.files.dir(job.id), { recursive: true, force: true });
    }
    return gone;
  }

  async submit(input: unknown, key: string | null): Promise<{ job: JobView; created: boolean }> {
    this.mustRun();
    const spec = compileSubmission(input, this.options.defaults);
    if (!this.options.upstreams(spec.service)) throw new JobError('NO_SERVICE', `no service named ${spec.service}`, 404);
    const now = this.now();
    const { job, created } = await this.options.store.createJob({
      id: newJobId(now),
      service: spec.service,
      name: spec.name,
      options: spec.options,
      items: spec.items,
      key,
      fingerprint: spec.fingerprint,
      createdAt: now,
    });
    if (created) {
      this.options.publish(job.service, {
        type: 'job-state',
        job: job.id,
        from: null,
        to: 'running',
        done: 0,
        total: job.total,
        reason: `submitted: ${job.total} items, ${job.options.concurrency} at a time`,
      });
      (await this.load(job)).pump();
    }
    return { job: await this.view(job.id), created };
  }

  async view(id: string): Promise<JobView> {
    const run = this.runs.get(id);
    if (run) return run.view();
    const record = await this.options.store.getJob(id);
    if (!record) throw new JobError('NO_JOB', `no job ${id}`, 404);
    return staticView(record, this.options.files);
  }

  async list(filter: { state?: JobState; service?: string; limit?: number }): Promise<JobView[]> {
    const records = await this.options.store.listJobs(filter);
    return records.map((record) => this.runs.get(record.id)?.view() ?? staticView(record, this.options.files));
  }

  async pause(id: string): Promise<JobView> {
    return (await this.active(id, 'pause')).pause('paused by a person');
  }

  async resume(id: string): Promise<JobView> {
    this.mustRun();
    let run = this.runs.get(id);
    if (!run) {
      const record = await this.options.store.getJob(id);
      if (!record) throw new JobError('NO_JOB', `no job ${id}`, 404);
      if (FINAL_STATES.has(record.state)) throw new JobError('JOB_FINISHED', `job ${id} has ${record.state}; nothing to resume`, 409);
      run = await this.load(record);
    }
    return run.resume();
  }

  async cancel(id: string): Promise<JobView> {
    return (await this.active(id, 'cancel')).cancel();
  }

  /** Calls `listener` with the job's view whenever it changes, until the returned function is called. */
  subscribe(id: string, listener: (view: JobView) => void): () => void {
    let set = this.listeners.get(id);
    if (!set) this.listeners.set(id, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0 && this.listeners.get(id) === set) this.listeners.delete(id);
    };
  }

  /** Calls `listener` with any job's view whenever it changes (the dashboard's live feed), until the returned function is called. */
  subscribeAll(listener: (view: JobView) => void): () => void {
    return this.subscribe(ALL_JOBS, listener);
  }

  /** Stops every job here without changing what the store says: running jobs continue at the next start. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.state = 'closing';
      clearInterval(this.pruneTimer);
      await Promise.all([...this.runs.values()].map((run) => run.stop()));
      this.runs.clear();
      this.state = 'closed';
    })();
    return this.closing;
  }

  /** @internal */
  listenersOf(id: string): ReadonlySet<(view: JobView) => void> | undefined {
    const own = this.listeners.get(id);
    const all = this.listeners.get(ALL_JOBS);
    if (!all) return own;
    return own ? new Set([...own, ...all]) : all;
  }

  /** @internal */
  forget(run: JobRun): void {
    if (this.runs.get(run.record.id) === run) this.runs.delete(run.record.id);
  }

  private async active(id: string, what: string): Promise<JobRun> {
    this.mustRun();
    const run = this.runs.get(id);
    if (run) return run;
    const record = await this.options.store.getJob(id);
    if (!record) throw new JobError('NO_JOB', `no job ${id}`, 404);
    // Loaded meanwhile (by start() after a restart, or another request)?
    const loaded = this.runs.get(id) ?? (await this.loading.get(id));
    if (loaded) return loaded;
    if (record.state === 'paused' && what === 'cancel') return this.load(record);
    throw new JobError('JOB_NOT_RUNNING', `cannot ${what} job ${id}: it is ${record.state}`, 409);
  }

  private load(record: JobRecord): Promise<JobRun> {
    const existing = this.runs.get(record.id);
    if (existing) return Promise.resolve(existing);
    let loading = this.loading.get(record.id);
    if (!loading) {
      loading = this.options.store
        .pendingItems(record.id)
        .then((pending) => {
          const again = this.runs.get(record.id);
          if (again) return again;
          const run = new JobRun(this, record, pending);
          this.runs.set(record.id, run);
          return run;
        })
        .finally(() => this.loading.delete(record.id));
      this.loading.set(record.id, loading);
    }
    return loading;
  }

  private mustRun(): void {
    if (this.state !== 'running') throw new JobError('NOT_RUNNING', 'Understudy is stopping; try again when it is up', 503);
  }
}

type RunState = 'running' | 'paused' | 'finishing' | 'stopped' | 'done';

interface InFlight {
  controller: AbortController;
  ended: Ended;
  done: Promise<void>;
}

/** One job running here: its queue of pending items, the items in flight, and its progress. */
class JobRun {
  /** While the store cannot be reached: the next try to go on. */
  private storeRetry: NodeJS.Timeout | undefined;
  private state: RunState;
  private readonly queue: ItemRecord[];
  /** Items on a model server: each holds one of the job's `concurrency` slots. */
  private readonly inflight = new Map<number, InFlight>();
  /** Every item being worked on, its commit included. */
  private readonly tasks = new Set<Promise<void>>();
  /** Items whose answer is in and being committed; they no longer hold a slot. */
  private committing = 0;
  private readonly waiting = new Map<number, { timer: NodeJS.Timeout; item: ItemRecord }>();
  private readonly finishedAt: number[] = [];
  private notifyTimer: NodeJS.Timeout | undefined;
  private finishing: Promise<void> | undefined;

  constructor(
    private readonly runner: JobRunner,
    public record: JobRecord,
    pending: ItemRecord[],
  ) {
    this.state = record.state === 'paused' ? 'paused' : 'running';
    this.queue = pending;
  }

  private get options(): RunnerOptions {
    return this.runner.options;
  }

  view(): JobView {
    const base = staticView(this.record, this.options.files);
    const done = this.record.succeeded + this.record.failed;
    const remaining = this.record.total - done;
    const rate = this.rate();
    return {
      ...base,
      pending: this.queue.length + this.waiting.size,
      running: this.inflight.size + this.committing,
      ratePerSecond: rate,
      etaSeconds: rate && remaining > 0 ? Math.round(remaining / rate) : remaining === 0 ? 0 : null,
    };
  }

  /** Starts items while there is room. */
  pump(): void {
    const { concurrency } = this.record.options;
    while (this.state === 'running' && this.inflight.size < concurrency && this.committing < concurrency && this.queue.length > 0) {
      this.launch(this.queue.shift()!);
    }
    this.maybeFinish();
  }

  async pause(reason: string): Promise<JobView> {
    if (this.state !== 'running') throw new JobError('JOB_NOT_RUNNING', `cannot pause job ${this.record.id}: it is ${this.state}`, 409);
    this.state = 'paused';
    // Items waiting to be tried again go back to the queue; items in flight finish.
    for (const [, waiting] of this.waiting) {
      clearTimeout(waiting.timer);
      this.requeue(waiting.item);
    }
    this.waiting.clear();
    await this.setState('paused', reason);
    return this.view();
  }

  async resume(why = 'resumed by a person'): Promise<JobView> {
    if (this.state !== 'paused') throw new JobError('JOB_NOT_PAUSED', `job ${this.record.id} is not paused`, 409);
    clearTimeout(this.storeRetry);
    this.state = 'running';
    try {
      await this.setState('running', null, why);
    } catch (error) {
      this.state = 'paused';
      throw error;
    }
    this.pump();
    return this.view();
  }

  async cancel(): Promise<JobView> {
    if (this.state !== 'running' && this.state !== 'paused') {
      throw new JobError('JOB_NOT_RUNNING', `cannot cancel job ${this.record.id}: it is ${this.state}`, 409);
    }
    const before = this.state;
    this.state = 'finishing';
    await this.halt('the job was cancelled');
    try {
      await this.setState('cancelled', 'cancelled by a person');
    } catch (error) {
      // Not recorded: the job is as it was, less its items in flight (they are pending again).
      this.state = before === 'running' ? 'running' : 'paused';
      this.pump();
      throw error;
    }
    this.state = 'done';
    this.runner.forget(this);
    await this.writeOutputs().catch((error: unknown) =>
      this.options.onError(`job ${this.record.id}: cancelled, but its results files could not be written`, error),
    );
    this.notify(true);
    return this.view();
  }

  /** Understudy is stopping: items in flight are abandoned (they stay pending in the store). */
  async stop(): Promise<void> {
    if (this.state === 'done') return;
    if (this.state === 'finishing') {
      await this.finishing;
      return;
    }
    this.state = 'stopped';
    clearTimeout(this.storeRetry);
    await this.halt('Understudy is stopping');
  }

  private async halt(reason: string): Promise<void> {
    for (const [, waiting] of this.waiting) clearTimeout(waiting.timer);
    this.waiting.clear();
    for (const flight of this.inflight.values()) {
      flight.ended.client = true;
      flight.controller.abort(new ProxyError('CLIENT_GONE', 499, reason));
    }
    await Promise.all(this.tasks);
  }

  private launch(item: ItemRecord): void {
    const controller = new AbortController();
    const ended: Ended = { client: false, total: false };
    const flight: InFlight = { controller, ended, done: Promise.resolve() };
    this.inflight.set(item.index, flight);
    const task: Promise<void> = this.runItem(item, controller, ended)
      .catch((error: unknown) => this.options.onError(`job ${this.record.id}: item ${item.index} failed unexpectedly`, error))
      .finally(() => {
        this.inflight.delete(item.index);
        this.tasks.delete(task);
        this.pump();
      });
    flight.done = task;
    this.tasks.add(task);
  }

  private async runItem(item: ItemRecord, controller: AbortController, ended: Ended): Promise<void> {
    const { record } = this;
    const upstreams = this.options.upstreams(record.service);
    const started = performance.now();
    if (!upstreams) {
      return this.settle(item, failedResult(null, `the service ${record.service} is no longer configured`, item, started), started);
    }
    let body: Buffer | null;
    try {
      body = await requestBody(item);
    } catch (error) {
      return this.settle(item, failedResult(null, `could not read ${describeBody(item)}: ${(error as Error).message}`, item, started), started);
    }
    const timer = setTimeout(() => {
      ended.total = true;
      controller.abort(new ProxyError('ITEM_TIMEOUT', 504, `the item took longer than its itemTimeout (${record.options.itemTimeout}ms)`));
    }, record.options.itemTimeout);
    try {
      const headers: Record<string, string> = {
        ...item.request.headers,
        'x-request-id': `${record.id}.${item.index}`,
        'x-understudy-job': record.id,
        'x-understudy-item': String(item.index),
      };
      const { method, path } = item.request;
      const answer = await exchange(
        upstreams,
        { method, path, headers, body, retryable: true, model: describeRequest(method, path, body).model },
        controller.signal,
        ended,
        this.options.hooks,
        { deadline: started + record.options.itemTimeout },
      );
      if (!answer.ok) {
        if (answer.error === null) return this.requeue(item); // paused, cancelled or stopping
        // No instance could take it: it waits and goes again, without using a try.
        if (NOT_TRIED.has(answer.error.code)) return this.delay(item, this.options.defaults.retryDelay);
        return this.triedAndFailed(item, answer.error.status, answer.error.message, answer.instance, started, undefined);
      }
      let resultBody: ResultBody;
      try {
        resultBody = await this.collect(answer.body, item);
      } catch (error) {
        if (error instanceof StoreError) {
          // Our disk failed, not the model: the answer was fine, the job pauses.
          answer.body.destroy();
          answer.finish();
          return this.storeFailed(item, error);
        }
        const [outcome, detail] = answer.finish(error as Error);
        if (outcome === 'client-abort') return this.requeue(item);
        return this.triedAndFailed(item, answer.status, `${answer.instance}: the answer broke: ${detail}`, answer.instance, started, undefined);
      }
      answer.finish();
      const headersOut = flatHeaders(answer.headers);
      const status = answer.status;
      // The data plane's classes: a client error is final, a server error or a 429 is tried again.
      if (status < 400 || classifyStatus(status) === 'client-error') {
        const state = status < 400 ? 'succeeded' : 'failed';
        const error = state === 'failed' ? `the service answered ${status}` : null;
        return this.settle(
          item,
          { state, status, headers: headersOut, body: resultBody, instance: answer.instance, attempts: item.failedTries + 1, ms: performance.now() - started, error, finishedAt: this.runner.now() },
          started,
        );
      }
      await discard(resultBody);
      return this.triedAndFailed(item, status, `${answer.instance} answered ${status}`, answer.instance, started, headersOut['retry-after']);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Reads an answer's body into memory, or into a file once it outgrows jobs.inlineLimit. */
  private async collect(body: AsyncIterable<Buffer>, item: ItemRecord): Promise<ResultBody> {
    const limit = this.options.defaults.inlineLimit;
    const chunks: Buffer[] = [];
    let size = 0;
    let file: DurableFile | undefined;
    let filePath = '';
    // Errors of our own disk are told apart from a broken answer: they pause the job instead of failing the item.
    const disk = async <T>(operation: () => Promise<T>): Promise<T> => {
      try {
        return await operation();
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        const message = `could not write the result of item ${item.index} to ${filePath}: ${(error as Error).message}`;
        throw new StoreError(code === 'ENOSPC' || code === 'EDQUOT' ? 'STORE_FULL' : 'STORE_IO', message, { cause: error });
      }
    };
    try {
      for await (const chunk of body) {
        size += chunk.length;
        if (file) {
          const open = file;
          await disk(() => open.write(chunk));
          continue;
        }
        chunks.push(chunk);
        if (size > limit) {
          filePath = this.options.files.resultPath(this.record.id, item.index);
          file = await disk(() => DurableFile.create(filePath));
          const open = file;
          await disk(() => open.write(Buffer.concat(chunks)));
          chunks.length = 0;
        }
      }
      if (!file) return size === 0 ? { kind: 'none' } : { kind: 'inline', data: Buffer.concat(chunks, size) };
      const open = file;
      await disk(() => open.commit());
      return { kind: 'file', path: filePath, size };
    } catch (error) {
      await file?.discard();
      throw error;
    }
  }

  /** The item failed a try; it is tried again after a pause, or recorded as failed once its tries are used up. */
  private async triedAndFailed(
    item: ItemRecord,
    status: number | null,
    reason: string,
    instance: string | null,
    started: number,
    retryAfter: string | undefined,
  ): Promise<void> {
    const { record } = this;
    let tries: number;
    try {
      tries = await this.options.store.noteFailedTry(record.id, item.index);
    } catch (error) {
      return this.storeFailed(item, error);
    }
    item.failedTries = tries;
    const final = tries > record.options.retries;
    this.options.publish(record.service, {
      type: 'item-failed',
      job: record.id,
      item: item.index,
      attempts: tries,
      status,
      final,
      reason: final ? `${reason}; gave up after ${tries} tries` : `${reason}; will try again`,
    });
    if (final) {
      const result = failedResult(status, reason, item, started);
      result.instance = instance;
      return this.settle(item, result, started, true);
    }
    this.options.onItem?.(record.service, 'retried', performance.now() - started);
    const backoff = Math.min(MAX_RETRY_DELAY_MS, this.options.defaults.retryDelay * 2 ** (tries - 1));
    const asked = retryAfterMs(retryAfter, this.runner.now()) ?? 0;
    this.delay(item, Math.min(MAX_RETRY_DELAY_MS, Math.max(backoff, asked)));
  }

  private delay(item: ItemRecord, ms: number): void {
    if (this.state !== 'running') return this.requeue(item);
    const timer = setTimeout(() => {
      this.waiting.delete(item.index);
      this.requeue(item);
      this.pump();
    }, ms);
    this.waiting.set(item.index, { timer, item });
  }

  private requeue(item: ItemRecord): void {
    // Back in item order, so results keep coming roughly in order.
    let at = 0;
    while (at < this.queue.length && this.queue[at]!.index < item.index) at += 1;
    this.queue.splice(at, 0, item);
  }

  /** Records the item's result (durably, exactly once) and counts it. */
  /** `announced`: an item-failed event already said this failure was final. */
  private async settle(item: ItemRecord, result: ItemResult, started: number, announced = false): Promise<void> {
    const { record } = this;
    // The answer is in: the next item goes to the model server while this one is committed
    // (an fsync takes milliseconds; holding the slot would idle the GPU that long per item).
    const held = this.inflight.delete(item.index);
    if (held) {
      this.committing += 1;
      this.pump();
    }
    let recorded: boolean;
    try {
      recorded = await this.options.store.recordResult(record.id, item.index, result);
    } catch (error) {
      await discard(result.body);
      return this.storeFailed(item, error);
    } finally {
      if (held) this.committing -= 1;
    }
    if (!recorded) {
      await discard(result.body);
      this.options.onItem?.(record.service, 'duplicate', performance.now() - started);
      return;
    }
    if (result.state === 'succeeded') record.succeeded += 1;
    else record.failed += 1;
    this.finishedAt.push(performance.now());
    if (this.finishedAt.length > RATE_WINDOW) this.finishedAt.shift();
    this.options.onItem?.(record.service, result.state, result.ms);
    if (result.state === 'failed' && !announced) {
      const rejected = result.status !== null && result.status < 500;
      this.options.publish(record.service, {
        type: 'item-failed',
        job: record.id,
        item: item.index,
        attempts: result.attempts,
        status: result.status,
        final: true,
        reason: `${result.error ?? 'failed'}${rejected ? '; a 4xx answer is not tried again' : ''}`,
      });
    }
    this.notify();
  }

  /** The store could not record something: the job pauses (nothing recorded is touched) until a person resumes it. */
  private async storeFailed(item: ItemRecord, error: unknown): Promise<void> {
    this.requeue(item);
    await this.pauseForStore(error);
  }

  private async pauseForStore(error: unknown): Promise<void> {
    const message = error instanceof Error ? error.message : String(error);
    this.options.onError(`job ${this.record.id}: the store failed`, error);
    if (this.state !== 'running') return;
    this.state = 'paused';
    // A store that cannot be reached (PostgreSQL down) is tried again every second: the job goes on by itself once it answers.
    const outage = error instanceof StoreError && error.code === 'STORE_UNAVAILABLE';
    if (outage) this.retryStore();
    const reason = outage
      ? `paused because the job store cannot be reached: ${message}; it goes on by itself when the store answers`
      : `paused because the job store failed: ${message}; fix it, then \`understudy jobs resume ${this.record.id}\``;
    for (const [, waiting] of this.waiting) {
      clearTimeout(waiting.timer);
      this.requeue(waiting.item);
    }
    this.waiting.clear();
    try {
      await this.setState('paused', reason);
    } catch {
      // The store cannot say so either (it stays `running` there, so a restart tries again); the event and the view do.
      const from = this.record.state;
      this.record = { ...this.record, state: 'paused', reason };
      this.options.publish(this.record.service, {
        type: 'job-state',
        job: this.record.id,
        from,
        to: 'paused',
        done: this.record.succeeded + this.record.failed,
        total: this.record.total,
        reason,
      });
      this.notify(true);
    }
  }

  private retryStore(): void {
    clearTimeout(this.storeRetry);
    this.storeRetry = setTimeout(() => {
      if (this.state !== 'paused') return;
      this.resume('the job store answers again').catch(() => this.retryStore());
    }, 1000);
    this.storeRetry.unref?.();
  }

  private maybeFinish(): void {
    if (this.state !== 'running' || this.queue.length > 0 || this.tasks.size > 0 || this.waiting.size > 0) return;
    this.state = 'finishing';
    const state = this.record.failed > 0 ? 'failed' : 'succeeded';
    const reason = state === 'failed' ? `${this.record.failed} of ${this.record.total} items failed` : `all ${this.record.total} items succeeded`;
    this.finishing = this.finish(state, reason).catch((error: unknown) => this.options.onError(`job ${this.record.id}: could not finish`, error));
  }

  /** Writes results.jsonl and the joined output, then the final state; a failure pauses the job instead. */
  private async finish(state: 'succeeded' | 'failed', reason: string): Promise<void> {
    try {
      const skipped = await this.writeOutputs();
      if (skipped > 0) reason += `; ${skipped} items are not in ${this.options.files.outputPath(this.record.id, this.record.options.join as 'wav')}`;
      await this.setState(state, state === 'succeeded' && skipped === 0 ? null : reason, reason);
      this.state = 'done';
      this.runner.forget(this);
    } catch (error) {
      this.state = 'running';
      await this.pauseForStore(error);
    }
    this.notify(true);
  }

  /** results.jsonl and the joined output; returns how many items the join left out. */
  private async writeOutputs(): Promise<number> {
    const { record } = this;
    const { files, store } = this.options;
    await writeResults(store, record.id, files.resultsPath(record.id));
    if (record.options.join === 'none') return 0;
    const joined = await writeJoined(store, record.id, record.options.join, files.outputPath(record.id, record.options.join));
    return joined.skipped.length;
  }


  private async setState(state: JobState, reason: string | null, eventReason = reason ?? state): Promise<void> {
    const from = this.record.state;
    const updated = await this.options.store.setJobState(this.record.id, state, reason, this.runner.now());
    // Counts in memory are newer than the row read back only if a result raced; keep the larger.
    this.record = { ...updated, succeeded: Math.max(updated.succeeded, this.record.succeeded), failed: Math.max(updated.failed, this.record.failed) };
    this.options.publish(this.record.service, {
      type: 'job-state',
      job: this.record.id,
      from,
      to: state,
      done: this.record.succeeded + this.record.failed,
      total: this.record.total,
      reason: eventReason,
    });
    this.notify(true);
  }

  /** Tells subscribers, at most every 100 ms unless `now`. */
  private notify(now = false): void {
    const tell = () => {
      const listeners = this.runner.listenersOf(this.record.id);
      if (!listeners) return;
      const view = this.view();
      for (const listener of listeners) listener(view);
    };
    if (!this.runner.listenersOf(this.record.id)) return;
    if (now) {
      clearTimeout(this.notifyTimer);
      this.notifyTimer = undefined;
      tell();
      return;
    }
    this.notifyTimer ??= setTimeout(() => {
      this.notifyTimer = undefined;
      tell();
    }, 100);
  }

  private rate(): number | null {
    const n = this.finishedAt.length;
    if (n < 2) return null;
    const seconds = (this.finishedAt[n - 1]! - this.finishedAt[0]!) / 1000;
    return seconds > 0 ? (n - 1) / seconds : null;
  }
}

function staticView(record: JobRecord, files: JobFiles): JobView {
  const done = record.succeeded + record.failed;
  return {
    ...record,
    done,
    pending: record.total - done,
    running: 0,
    ratePerSecond: null,
    etaSeconds: FINAL_STATES.has(record.state) ? 0 : null,
    outputs: {
      results: files.resultsPath(record.id),
      joined: record.options.join === 'none' ? null : files.outputPath(record.id, record.options.join),
    },
  };
}

async function requestBody(item: ItemRecord): Promise<Buffer | null> {
  const body = item.request.body;
  if (body.kind === 'inline') return body.data;
  if (body.kind === 'file') return readFile(body.path);
  return null;
}

function describeBody(item: ItemRecord): string {
  return item.request.body.kind === 'file' ? item.request.body.path : 'the item body';
}

function failedResult(status: number | null, error: string, item: ItemRecord, started: number): ItemResult {
  return {
    state: 'failed',
    status,
    headers: {},
    body: { kind: 'none' },
    instance: null,
    attempts: item.failedTries,
    ms: performance.now() - started,
    error,
    finishedAt: Date.now(),
  };
}

function flatHeaders(headers: Record<string, string | string[] | undefined>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined) out[name] = Array.isArray(value) ? value.join(', ') : value;
  }
  return out;
}

async function discard(body: ResultBody): Promise<void> {
  if (body.kind === 'file') await rm(body.path, { force: true });
}
