import { randomBytes, randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { JobError, StoreError } from '../../src/jobs/index.js';
import type { ItemRequest, ItemResult, JobOptions, JobStore, NewJob, StoredReply } from '../../src/jobs/index.js';

/** A store opened for one test. */
export interface OpenedStore {
  store: JobStore;
  /** Where its data lives (a file, a namespace), handed back to `reopen`. */
  location: string;
  /** Closes the store and removes its data. */
  cleanup(): Promise<void>;
}

/** Opens a fresh, empty store. */
export type OpenStore = () => Promise<OpenedStore>;

/**
 * Opens the data at `location` again after the store on it was closed. Only a backend
 * whose data outlives close() passes one; the durability tests are skipped without it.
 */
export type ReopenStore = (location: string) => Promise<JobStore>;

const OPTIONS: JobOptions = { concurrency: 3, itemTimeout: 30_000, retries: 2, join: 'none' };

/** Every byte value, so an encoding that drops NULs or mangles high bytes shows. */
const ALL_BYTES = Buffer.from(Array.from({ length: 256 }, (_, i) => i));

function request(i: number): ItemRequest {
  return { method: 'POST', path: `/v1/infer?n=${i}`, headers: { 'content-type': 'application/json' }, body: { kind: 'inline', data: Buffer.from(`{"n":${i}}`) } };
}

function result(overrides: Partial<ItemResult> = {}): ItemResult {
  return {
    state: 'succeeded',
    status: 200,
    headers: { 'content-type': 'application/json' },
    body: { kind: 'inline', data: Buffer.from('{"ok":true}') },
    instance: 'primary',
    attempts: 1,
    ms: 12.5,
    error: null,
    finishedAt: 1_700_000_100_000,
    ...overrides,
  };
}

function reply(overrides: Partial<StoredReply> = {}): StoredReply {
  return {
    fingerprint: 'fp-reply',
    status: 202,
    headers: { 'content-type': 'application/json' },
    body: Buffer.from('{"job":"j"}'),
    expiresAt: Date.now() + 60_000,
    ...overrides,
  };
}

/**
 * `value` with every Buffer (or Uint8Array) as hex, so `toEqual` compares bytes exactly
 * and fast, and a backend may hand back either type.
 */
export function plain(value: unknown): unknown {
  if (value instanceof Uint8Array) return `bytes:${Buffer.from(value).toString('hex')}`;
  if (Array.isArray(value)) return value.map(plain);
  if (value !== null && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
  return value;
}

/**
 * The JobStore contract (src/jobs/store.ts) as tests every backend must pass. Each
 * test gets a fresh store from `open`, and still names its jobs and reply scopes
 * uniquely, so a backend shared by several nodes can run the suite on one database.
 */
export function storeConformance(name: string, open: OpenStore, reopen?: ReopenStore): void {
  describe(`${name} job store`, () => {
    let opened: OpenedStore;
    let store: JobStore;
    /** Stores opened by a test through `reopen`, closed after it. */
    let extra: JobStore[];
    let ns: string;
    let clock: number;

    beforeEach(async () => {
      opened = await open();
      store = opened.store;
      extra = [];
      ns = randomUUID().slice(0, 8);
      clock = 1_700_000_000_000;
    });

    afterEach(async () => {
      for (const other of extra) await other.close();
      await opened.cleanup();
    });

    const id = (label: string) => `${ns}-${label}`;

    function newJob(label: string, items: ItemRequest[] | number, more: Partial<NewJob> = {}): NewJob {
      return {
        id: id(label),
        service: id('svc'),
        name: `job ${label}`,
        options: OPTIONS,
        items: typeof items === 'number' ? Array.from({ length: items }, (_, i) => request(i)) : items,
        key: null,
        fingerprint: `fp-${label}`,
        createdAt: (clock += 1000),
        ...more,
      };
    }

    async function create(label: string, items: ItemRequest[] | number, more: Partial<NewJob> = {}) {
      const { job, created } = await store.createJob(newJob(label, items, more));
      expect(created).toBe(true);
      return job;
    }

    /** Closes the test's store and opens its data again. */
    async function closeAndReopen(): Promise<JobStore> {
      await store.close();
      const again = await reopen!(opened.location);
      extra.push(again);
      return again;
    }

    async function expectJobError(promise: Promise<unknown>, code: string, status: number): Promise<JobError> {
      const error = await promise.then(
        () => expect.unreachable(`expected JobError ${code}`),
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(JobError);
      expect(error).toMatchObject({ code, status });
      return error as JobError;
    }

    describe('jobs', () => {
      it('createJob stores the job and all its items in order; bodies (inline, file, none) and headers round-trip exactly', async () => {
        const big = randomBytes(200_000);
        const items: ItemRequest[] = [
          { method: 'POST', path: '/v1/audio/speech', headers: { 'content-type': 'application/octet-stream', 'x-note': 'naïve ✓' }, body: { kind: 'inline', data: ALL_BYTES } },
          { method: 'PUT', path: '/v1/upload', headers: {}, body: { kind: 'file', path: '/data/in/item 1.wav', size: 123_456_789 } },
          { method: 'GET', path: '/v1/models?x=1&y=2', headers: { authorization: 'Bearer t' }, body: { kind: 'none' } },
          { method: 'POST', path: '/v1/big', headers: { 'content-type': 'application/octet-stream' }, body: { kind: 'inline', data: big } },
          { method: 'POST', path: '/v1/empty', headers: {}, body: { kind: 'inline', data: Buffer.alloc(0) } },
        ];
        const submitted = newJob('a', items, { key: id('key'), fingerprint: 'fp-a', name: null });
        const { job, created } = await store.createJob(submitted);
        expect(created).toBe(true);
        expect(job).toMatchObject({
          id: submitted.id,
          service: submitted.service,
          name: null,
          state: 'running',
          options: OPTIONS,
          createdAt: submitted.createdAt,
          finishedAt: null,
          total: 5,
          succeeded: 0,
          failed: 0,
          reason: null,
          key: id('key'),
          fingerprint: 'fp-a',
        });
        expect(job.updatedAt).toBeGreaterThanOrEqual(submitted.createdAt);
        expect(await store.getJob(submitted.id)).toEqual(job);

        const stored = await store.items(submitted.id, 0, 100);
        expect(stored.map((item) => item.index)).toEqual([0, 1, 2, 3, 4]);
        stored.forEach((item, i) => {
          expect(item).toMatchObject({ job: submitted.id, index: i, state: 'pending', failedTries: 0, result: null });
          expect(plain(item.request)).toEqual(plain(items[i]));
        });
      });

      it('createJob without a key makes a new job every time, even for the same submission', async () => {
        await create('a', 1, { fingerprint: 'same' });
        await create('b', 1, { fingerprint: 'same' });
        expect((await store.listJobs({ service: id('svc') })).map((job) => job.id)).toEqual([id('b'), id('a')]);
      });

      it('createJob with a known key and the same fingerprint returns the existing job unchanged (created: false) and stores nothing', async () => {
        const first = await create('a', 3, { key: id('key'), fingerprint: 'fp' });
        await store.recordResult(first.id, 1, result());
        const before = await store.getJob(first.id);

        const again = await store.createJob(newJob('b', 5, { key: id('key'), fingerprint: 'fp' }));
        expect(again.created).toBe(false);
        expect(again.job).toEqual(before);
        expect(await store.getJob(id('b'))).toBeUndefined();
        expect(await store.items(id('b'), 0, 10)).toEqual([]);
        expect(await store.items(first.id, 0, 10)).toHaveLength(3);
        expect((await store.listJobs({ service: id('svc') })).map((job) => job.id)).toEqual([first.id]);
      });

      it('createJob with a known key and a different fingerprint throws JobError KEY_REUSED (422) and stores nothing', async () => {
        const first = await create('a', 2, { key: id('key'), fingerprint: 'fp-1' });
        const error = await expectJobError(store.createJob(newJob('b', 4, { key: id('key'), fingerprint: 'fp-2' })), 'KEY_REUSED', 422);
        expect(error.message).toContain(first.id);
        expect(await store.getJob(id('b'))).toBeUndefined();
        expect(await store.getJob(first.id)).toEqual(first);
        expect((await store.listJobs({ service: id('svc') })).map((job) => job.id)).toEqual([first.id]);
      });

      it('two createJob calls at once with one key make one job', async () => {
        const [a, b] = await Promise.all([
          store.createJob(newJob('a', 2, { key: id('key'), fingerprint: 'fp' })),
          store.createJob(newJob('b', 2, { key: id('key'), fingerprint: 'fp' })),
        ]);
        expect([a.created, b.created].sort()).toEqual([false, true]);
        expect(a.job.id).toBe(b.job.id);
        expect(await store.listJobs({ service: id('svc') })).toHaveLength(1);
      });

      it('getJob of an unknown id is undefined', async () => {
        await create('a', 1);
        expect(await store.getJob(id('nope'))).toBeUndefined();
      });

      it('listJobs lists newest first, filters by state and service, and stops at limit', async () => {
        const other = id('other-svc');
        const a = await create('a', 1);
        const b = await create('b', 1, { service: other });
        const c = await create('c', 1);
        const d = await create('d', 1, { service: other });
        await store.setJobState(b.id, 'paused', null, clock + 1);
        await store.setJobState(c.id, 'paused', null, clock + 2);

        const ids = (jobs: { id: string }[]) => jobs.map((job) => job.id);
        const all = ids(await store.listJobs()).filter((job) => job.startsWith(ns));
        expect(all).toEqual([d.id, c.id, b.id, a.id]);
        expect(ids(await store.listJobs({ state: 'paused' })).filter((job) => job.startsWith(ns))).toEqual([c.id, b.id]);
        expect(ids(await store.listJobs({ service: other }))).toEqual([d.id, b.id]);
        expect(ids(await store.listJobs({ service: other, state: 'running' }))).toEqual([d.id]);
        expect(ids(await store.listJobs({ service: id('svc'), state: 'paused' }))).toEqual([c.id]);
        expect(ids(await store.listJobs({ service: id('nobody') }))).toEqual([]);
        expect(ids(await store.listJobs({ service: id('svc'), limit: 1 }))).toEqual([c.id]);
        expect(ids(await store.listJobs({ state: 'running', limit: 100 })).filter((job) => job.startsWith(ns))).toEqual([d.id, a.id]);
        const listed = await store.listJobs({ service: other, state: 'paused' });
        expect(listed).toEqual([await store.getJob(b.id)]);
      });

      it('listJobs returns at most 100 jobs by default', async () => {
        for (let i = 0; i < 101; i++) await create(`j${String(i).padStart(3, '0')}`, 0);
        const listed = await store.listJobs({ service: id('svc') });
        expect(listed).toHaveLength(100);
        expect(listed[0]!.id).toBe(id('j100'));
        expect(listed[99]!.id).toBe(id('j001'));
        expect(await store.listJobs({ service: id('svc'), limit: 500 })).toHaveLength(101);
      });

      it('setJobState changes the state and updatedAt, sets and clears the reason, and sets finishedAt for final states only', async () => {
        const job = await create('a', 2);
        const paused = await store.setJobState(job.id, 'paused', 'the disk is full', clock + 10);
        expect(paused).toMatchObject({ state: 'paused', reason: 'the disk is full', updatedAt: clock + 10, finishedAt: null });
        expect(await store.getJob(job.id)).toEqual(paused);

        const running = await store.setJobState(job.id, 'running', null, clock + 20);
        expect(running).toMatchObject({ state: 'running', reason: null, updatedAt: clock + 20, finishedAt: null });

        for (const state of ['succeeded', 'failed', 'cancelled'] as const) {
          const final = await store.setJobState(job.id, state, state === 'failed' ? 'every try failed' : null, clock + 30);
          expect(final).toMatchObject({ state, updatedAt: clock + 30, finishedAt: clock + 30, reason: state === 'failed' ? 'every try failed' : null });
          expect(await store.getJob(job.id)).toEqual(final);
          const again = await store.setJobState(job.id, 'paused', null, clock + 40);
          expect(again).toMatchObject({ state: 'paused', finishedAt: null });
        }
        // The rest of the record is untouched.
        expect(await store.getJob(job.id)).toMatchObject({ id: job.id, service: job.service, total: 2, createdAt: job.createdAt, fingerprint: job.fingerprint });
      });

      it('setJobState of an unknown job throws JobError NO_JOB and creates nothing', async () => {
        await expectJobError(store.setJobState(id('nope'), 'paused', 'x', clock), 'NO_JOB', 404);
        expect(await store.getJob(id('nope'))).toBeUndefined();
      });
    });

    describe('items', () => {
      it('pendingItems returns only the items without a result, in item order', async () => {
        const job = await create('a', 6);
        expect((await store.pendingItems(job.id)).map((item) => item.index)).toEqual([0, 1, 2, 3, 4, 5]);
        await store.recordResult(job.id, 4, result());
        await store.recordResult(job.id, 0, result({ state: 'failed', status: 400 }));
        await store.recordResult(job.id, 2, result());
        const pending = await store.pendingItems(job.id);
        expect(pending.map((item) => item.index)).toEqual([1, 3, 5]);
        pending.forEach((item) => {
          expect(item).toMatchObject({ job: job.id, state: 'pending', result: null });
          expect(plain(item.request)).toEqual(plain(request(item.index)));
        });
        expect(await store.pendingItems(id('nope'))).toEqual([]);
      });

      it('items pages through a job from an index, at most limit at a time', async () => {
        const job = await create('a', 10);
        await create('b', 3);
        const indexes = async (from: number, limit: number) => (await store.items(job.id, from, limit)).map((item) => item.index);
        expect(await indexes(0, 4)).toEqual([0, 1, 2, 3]);
        expect(await indexes(4, 4)).toEqual([4, 5, 6, 7]);
        expect(await indexes(8, 4)).toEqual([8, 9]);
        expect(await indexes(10, 4)).toEqual([]);
        expect(await indexes(3, 1)).toEqual([3]);
        expect(await indexes(0, 1000)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        const pages = [...(await store.items(job.id, 0, 5)), ...(await store.items(job.id, 5, 5))];
        expect(plain(pages)).toEqual(plain(await store.items(job.id, 0, 10)));
        expect(pages.every((item) => item.job === job.id)).toBe(true);
      });

      it('recordResult records the result and counts it in the job in the same step', async () => {
        const job = await create('a', 4);
        expect(await store.recordResult(job.id, 1, result({ finishedAt: clock + 5 }))).toBe(true);
        expect(await store.getJob(job.id)).toMatchObject({ succeeded: 1, failed: 0, updatedAt: clock + 5, state: 'running', finishedAt: null });
        expect(await store.recordResult(job.id, 3, result({ state: 'failed', status: 422, error: 'the service answered 422', finishedAt: clock + 6 }))).toBe(true);
        expect(await store.getJob(job.id)).toMatchObject({ succeeded: 1, failed: 1, total: 4 });
        const [one] = await store.items(job.id, 1, 1);
        expect(one).toMatchObject({ state: 'succeeded', result: { state: 'succeeded', status: 200 } });
        const [three] = await store.items(job.id, 3, 1);
        expect(three).toMatchObject({ state: 'failed', result: { state: 'failed', status: 422, error: 'the service answered 422' } });
      });

      it('recordResult is exactly-once: a second result for an item returns false and changes nothing', async () => {
        const job = await create('a', 3);
        const first = result({ status: 200, body: { kind: 'inline', data: Buffer.from('first') }, instance: 'primary', finishedAt: clock + 5 });
        expect(await store.recordResult(job.id, 0, first)).toBe(true);
        const jobBefore = await store.getJob(job.id);
        const itemsBefore = await store.items(job.id, 0, 10);

        const second = result({ state: 'failed', status: 500, body: { kind: 'inline', data: Buffer.from('second') }, instance: 'hot', error: 'boom', finishedAt: clock + 50 });
        expect(await store.recordResult(job.id, 0, second)).toBe(false);
        expect(await store.recordResult(job.id, 0, first)).toBe(false);
        expect(await store.getJob(job.id)).toEqual(jobBefore);
        expect(plain(await store.items(job.id, 0, 10))).toEqual(plain(itemsBefore));
        expect(plain(itemsBefore[0]!.result)).toEqual(plain(first));

        // Two runners finishing the same item at once: one wins, the count moves once.
        const racing = await Promise.all([store.recordResult(job.id, 2, result()), store.recordResult(job.id, 2, result({ instance: 'hot' }))]);
        expect(racing.filter(Boolean)).toHaveLength(1);
        expect(await store.getJob(job.id)).toMatchObject({ succeeded: 2, failed: 0 });
      });

      it('result bodies (inline, file, none), headers and fields round-trip exactly', async () => {
        const job = await create('a', 4);
        const big = randomBytes(300_000);
        const results: ItemResult[] = [
          result({ headers: { 'content-type': 'audio/wav', 'x-served-by': 'primary' }, body: { kind: 'inline', data: ALL_BYTES }, attempts: 3, ms: 1234.75 }),
          result({ body: { kind: 'file', path: '/state/jobs/j/results/1.bin', size: 987_654_321 }, instance: 'hot' }),
          result({ state: 'failed', status: null, headers: {}, body: { kind: 'none' }, instance: null, attempts: 4, error: 'connect ECONNREFUSED 127.0.0.1:1' }),
          result({ body: { kind: 'inline', data: big } }),
        ];
        for (const [i, r] of results.entries()) expect(await store.recordResult(job.id, i, r)).toBe(true);
        const stored = await store.items(job.id, 0, 10);
        stored.forEach((item, i) => {
          expect(item.state).toBe(results[i]!.state);
          expect(plain(item.result)).toEqual(plain(results[i]));
        });
        expect(await store.getJob(job.id)).toMatchObject({ succeeded: 3, failed: 1 });
      });

      it('noteFailedTry counts the failed tries of a pending item', async () => {
        const job = await create('a', 3);
        expect(await store.noteFailedTry(job.id, 1)).toBe(1);
        expect(await store.noteFailedTry(job.id, 1)).toBe(2);
        expect(await store.noteFailedTry(job.id, 2)).toBe(1);
        expect(await store.noteFailedTry(job.id, 1)).toBe(3);
        expect((await store.items(job.id, 0, 10)).map((item) => item.failedTries)).toEqual([0, 3, 1]);
        expect((await store.pendingItems(job.id)).map((item) => item.index)).toEqual([0, 1, 2]);
        expect(await store.getJob(job.id)).toMatchObject({ succeeded: 0, failed: 0 });
      });
    });

    describe('replies', () => {
      it('putReply and getReply round-trip the status, headers (array values too) and body bytes; scopes are separate', async () => {
        const body = Buffer.concat([ALL_BYTES, randomBytes(50_000)]);
        const kept = reply({ status: 201, headers: { 'content-type': 'application/json', 'set-cookie': ['a=1', 'b=2'], 'x-empty': [] }, body });
        await store.putReply(id('scope'), 'key-1', kept, Date.now());
        const got = await store.getReply(id('scope'), 'key-1', Date.now());
        expect(plain(got)).toEqual(plain(kept));
        expect(await store.getReply(id('scope'), 'key-2', Date.now())).toBeUndefined();
        expect(await store.getReply(id('other'), 'key-1', Date.now())).toBeUndefined();
      });

      it('getReply ignores an expired reply', async () => {
        await store.putReply(id('scope'), 'k', reply({ expiresAt: 5_000 }), Date.now());
        expect(await store.getReply(id('scope'), 'k', 4_999)).toMatchObject({ expiresAt: 5_000 });
        expect(await store.getReply(id('scope'), 'k', 5_001)).toBeUndefined();
        expect(await store.getReply(id('scope'), 'k', Date.now())).toBeUndefined();
      });

      it('putReply keeps an unexpired reply instead of overwriting it', async () => {
        const first = reply({ fingerprint: 'fp-1', body: Buffer.from('first'), expiresAt: Date.now() + 60_000 });
        await store.putReply(id('scope'), 'k', first, Date.now());
        await store.putReply(id('scope'), 'k', reply({ fingerprint: 'fp-2', status: 500, body: Buffer.from('second'), expiresAt: Date.now() + 120_000 }), Date.now());
        expect(plain(await store.getReply(id('scope'), 'k', Date.now()))).toEqual(plain(first));
      });

      it('putReply replaces an expired reply', async () => {
        await store.putReply(id('scope'), 'k', reply({ fingerprint: 'fp-old', body: Buffer.from('old'), expiresAt: 1_000 }), 0);
        const fresh = reply({ fingerprint: 'fp-new', body: Buffer.from('new'), expiresAt: 60_000 });
        await store.putReply(id('scope'), 'k', fresh, 2_000);
        expect(plain(await store.getReply(id('scope'), 'k', 2_000))).toEqual(plain(fresh));
      });

      it('pruneReplies forgets only expired replies and returns how many', async () => {
        const scope = id('scope');
        await store.putReply(scope, 'a', reply({ expiresAt: 1_000 }), Date.now());
        await store.putReply(scope, 'b', reply({ expiresAt: 2_000 }), Date.now());
        await store.putReply(scope, 'c', reply({ expiresAt: 3_000 }), Date.now());
        await store.putReply(id('other'), 'd', reply({ expiresAt: 9_000 }), Date.now());
        expect(await store.pruneReplies(2_500)).toBe(2);
        // Gone from the store, not just hidden: asked with an earlier `now`, they are still missing.
        expect(await store.getReply(scope, 'a', 0)).toBeUndefined();
        expect(await store.getReply(scope, 'b', 0)).toBeUndefined();
        expect(await store.getReply(scope, 'c', 2_500)).toMatchObject({ expiresAt: 3_000 });
        expect(await store.getReply(id('other'), 'd', 2_500)).toMatchObject({ expiresAt: 9_000 });
        expect(await store.pruneReplies(2_500)).toBe(0);
        expect(await store.pruneReplies(10_000)).toBe(2);
      });
    });

    describe('pruneJobs', () => {
      /** Jobs of this test among those a prune returns (a shared database may hold other tests' jobs). */
      const mine = (jobs: { id: string }[]) => jobs.map((job) => job.id).filter((jobId) => jobId.startsWith(`${ns}-`));

      it('removes finished jobs by age and past the newest `keep`, never a running or paused one; dryRun changes nothing', async () => {
        // Five finished jobs, 1 s apart (f1 oldest), one running, one paused that is old.
        for (const label of ['f1', 'f2', 'f3', 'f4', 'f5']) {
          await create(label, 2);
          await store.setJobState(id(label), label === 'f3' ? 'failed' : label === 'f4' ? 'cancelled' : 'succeeded', null, (clock += 1000));
        }
        await create('running', 1);
        await create('paused', 1);
        await store.setJobState(id('paused'), 'paused', 'paused by a person', 1);
        const f3Finished = (await store.getJob(id('f3')))!.finishedAt!;

        const preview = await store.pruneJobs({ finishedBefore: f3Finished, keep: null, dryRun: true });
        expect(mine(preview)).toEqual([id('f2'), id('f1')]);
        expect(await store.getJob(id('f1'))).toBeDefined();

        // By age: f1 and f2 finished before f3 did.
        expect(mine(await store.pruneJobs({ finishedBefore: f3Finished, keep: null }))).toEqual([id('f2'), id('f1')]);
        expect(await store.getJob(id('f1'))).toBeUndefined();
        expect(await store.items(id('f1'), 0, 10)).toEqual([]);
        // By number: of f3, f4, f5 the newest two stay.
        expect(mine(await store.pruneJobs({ finishedBefore: null, keep: 2 }))).toEqual([id('f3')]);
        expect((await store.listJobs({ limit: 10 })).map((job) => job.id).sort()).toEqual([id('f4'), id('f5'), id('paused'), id('running')].sort());
        // Everything finished, whatever the rule: the running and the paused job stay, with their items.
        await create('keyed', 1, { key: `${ns}-key` });
        await store.setJobState(id('keyed'), 'succeeded', null, (clock += 1000));
        // A job the caller still holds stays, whatever the rule.
        expect(mine(await store.pruneJobs({ finishedBefore: clock + 1, keep: 0, except: [id('keyed')] }))).toEqual([id('f5'), id('f4')]);
        expect((await store.getJob(id('keyed')))?.state).toBe('succeeded');
        expect(mine(await store.pruneJobs({ finishedBefore: clock + 1, keep: 0 }))).toEqual([id('keyed')]);
        expect((await store.getJob(id('running')))?.state).toBe('running');
        expect((await store.getJob(id('paused')))?.state).toBe('paused');
        expect(await store.pendingItems(id('paused'))).toHaveLength(1);
        expect(await store.getJob(id('f5'))).toBeUndefined();
        // The key of a removed job is free again: a new submission under it is a new job.
        await create('again', 1, { key: `${ns}-key`, fingerprint: 'fp-other' });
      });
    });

    describe('durability', () => {
      it.skipIf(!reopen)('everything written before close() is there after reopening', async () => {
        const job = await create('a', 5, { key: id('key'), fingerprint: 'fp' });
        await store.recordResult(job.id, 0, result({ body: { kind: 'inline', data: ALL_BYTES } }));
        await store.recordResult(job.id, 3, result({ state: 'failed', status: 400, body: { kind: 'file', path: '/r/3', size: 10 } }));
        await store.noteFailedTry(job.id, 1);
        await store.setJobState(job.id, 'paused', 'paused by a test', clock + 99);
        await create('b', 2);
        await store.putReply(id('scope'), 'k', reply({ headers: { 'set-cookie': ['a', 'b'] } }), Date.now());
        const jobs = await store.listJobs({ service: id('svc') });
        const items = await store.items(job.id, 0, 10);
        const kept = await store.getReply(id('scope'), 'k', Date.now());

        const again = await closeAndReopen();
        expect(await again.listJobs({ service: id('svc') })).toEqual(jobs);
        expect(plain(await again.items(job.id, 0, 10))).toEqual(plain(items));
        expect((await again.pendingItems(job.id)).map((item) => item.index)).toEqual([1, 2, 4]);
        expect(plain(await again.getReply(id('scope'), 'k', Date.now()))).toEqual(plain(kept));
        // The key still names its job, and a recorded result is still final.
        expect(await again.createJob(newJob('c', 1, { key: id('key'), fingerprint: 'fp' }))).toEqual({ job: jobs[1], created: false });
        await expectJobError(again.createJob(newJob('c', 1, { key: id('key'), fingerprint: 'other' })), 'KEY_REUSED', 422);
        expect(await again.recordResult(job.id, 0, result({ status: 299 }))).toBe(false);
      });

      it.skipIf(!reopen)('noteFailedTry counts survive reopening and go on from there', async () => {
        const job = await create('a', 2);
        await store.noteFailedTry(job.id, 0);
        await store.noteFailedTry(job.id, 0);
        const again = await closeAndReopen();
        expect((await again.items(job.id, 0, 1))[0]!.failedTries).toBe(2);
        expect(await again.noteFailedTry(job.id, 0)).toBe(3);
      });
    });

    describe('close', () => {
      it('close() may be called twice; afterwards every operation rejects with StoreError STORE_CLOSED', async () => {
        const job = await create('a', 2);
        await store.close();
        await store.close();
        const operations: [string, () => Promise<unknown>][] = [
          ['createJob', () => store.createJob(newJob('b', 1))],
          ['getJob', () => store.getJob(job.id)],
          ['listJobs', () => store.listJobs()],
          ['setJobState', () => store.setJobState(job.id, 'paused', null, clock)],
          ['pendingItems', () => store.pendingItems(job.id)],
          ['items', () => store.items(job.id, 0, 10)],
          ['recordResult', () => store.recordResult(job.id, 0, result())],
          ['noteFailedTry', () => store.noteFailedTry(job.id, 0)],
          ['getReply', () => store.getReply(id('scope'), 'k', 0)],
          ['putReply', () => store.putReply(id('scope'), 'k', reply(), 0)],
          ['pruneReplies', () => store.pruneReplies(0)],
        ];
        for (const [what, operation] of operations) {
          // A synchronous throw would escape callers that only handle rejections.
          let promise: Promise<unknown> | undefined;
          expect(() => (promise = operation()), what).not.toThrow();
          const error = await promise!.then(
            () => new Error(`${what} resolved`),
            (e: unknown) => e,
          );
          expect(error, what).toBeInstanceOf(StoreError);
          expect((error as StoreError).code, what).toBe('STORE_CLOSED');
        }
      });
    });
  });
}
