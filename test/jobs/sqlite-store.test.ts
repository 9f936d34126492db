import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { afterAll, afterEach, describe, expect, it, onTestFinished } from 'vitest';
import { SqliteJobStore, StoreError, ThreadedJobStore, type JobStore } from '../../src/jobs/index.js';
import type { ItemRecord, ItemRequest, ItemResult, JobOptions, NewJob } from '../../src/jobs/index.js';
import { captureTail, terminate, waitForExit } from '../support/process.js';
import { plain, storeConformance } from './store-conformance.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const WORKER = fileURLToPath(new URL('../fixtures/job-store-worker.mts', import.meta.url));
const OPTIONS: JobOptions = { concurrency: 1, itemTimeout: 10_000, retries: 0, join: 'none' };

const tmp = mkdtempSync(path.join(tmpdir(), 'understudy-store-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** A fresh directory under this file's temp dir, and the store file in it. */
function storeFile(): string {
  return path.join(mkdtempSync(path.join(tmp, 's-')), 'jobs.db');
}

/** Runs the conformance suite on a store opened by `open`, each test in a fresh directory. */
function conformance(name: string, open: (file: string) => Promise<JobStore>): void {
  storeConformance(
    name,
    async () => {
      const file = storeFile();
      const store = await open(file);
      return {
        store,
        location: file,
        async cleanup() {
          await store.close();
          rmSync(path.dirname(file), { recursive: true, force: true });
        },
      };
    },
    open,
  );
}

conformance('sqlite', async (file) => SqliteJobStore.open(file));
// What Understudy runs: the same store on a worker thread, so commits never block the event loop.
conformance('sqlite on a worker thread', (file) => ThreadedJobStore.open(file));

function job(id: string, items: ItemRequest[]): NewJob {
  return { id, service: 'svc', name: null, options: OPTIONS, items, key: null, fingerprint: `fp-${id}`, createdAt: 1_700_000_000_000 };
}

/** Items whose result the worker fixture reads off the request: the body comes back, x-outcome: failed fails it. */
function workerItems(count: number, size: (i: number) => number): ItemRequest[] {
  return Array.from({ length: count }, (_, i): ItemRequest => ({
    method: 'POST',
    path: '/v1/infer',
    headers: i % 5 === 4 ? { 'x-outcome': 'failed' } : {},
    body: { kind: 'inline', data: randomBytes(size(i)) },
  }));
}

/** What the worker fixture records for an item. */
function workerResult(item: ItemRecord): ItemResult {
  const failed = item.request.headers['x-outcome'] === 'failed';
  return {
    state: failed ? 'failed' : 'succeeded',
    status: failed ? 500 : 200,
    headers: { 'x-item': String(item.index) },
    body: item.request.body.kind === 'inline' ? { kind: 'inline', data: item.request.body.data } : { kind: 'none' },
    instance: 'worker',
    attempts: 1,
    ms: item.index,
    error: failed ? 'the service answered 500' : null,
    finishedAt: item.index,
  };
}

function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (error) {
    return error;
  }
  throw new Error('expected it to throw');
}

const children = new Set<ChildProcess>();
afterEach(async () => {
  for (const child of children) await terminate(child, { graceMs: 1000 });
  children.clear();
});

interface Worker {
  proc: ChildProcess;
  /** Resolves with the first IPC message of `type`. */
  message(type: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  kill(): Promise<void>;
}

function startWorker(...args: string[]): Worker {
  const proc = spawn(process.execPath, ['--import', 'tsx', WORKER, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
  children.add(proc);
  const output = captureTail([proc.stdout, proc.stderr]);
  const messages: Record<string, unknown>[] = [];
  proc.on('message', (m) => messages.push(m as Record<string, unknown>));
  return {
    proc,
    async message(type, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = messages.find((m) => m.type === type || m.type === 'error');
        if (found?.type === 'error') throw new Error(`the worker could not open the store: ${String(found.code)} ${String(found.message)}`);
        if (found) return found;
        if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`the worker exited (${proc.exitCode ?? proc.signalCode}) before ${type}: ${output()}`);
        if (Date.now() > deadline) throw new Error(`no ${type} from the worker in ${timeoutMs} ms: ${output()}`);
        await sleep(10);
      }
    },
    async kill() {
      proc.kill('SIGKILL');
      expect(await waitForExit(proc, 5000)).toBe(true);
      children.delete(proc);
    },
  };
}

describe('sqlite job store: locking', () => {
  it('a second opener of a file held by a live process gets STORE_LOCKED naming the file; after that process is SIGKILLed the store opens with its data intact', async () => {
    const file = storeFile();
    const first = SqliteJobStore.open(file);
    await first.createJob(job('j', workerItems(3, () => 100)));
    const [zero] = await first.items('j', 0, 1);
    await first.recordResult('j', 0, workerResult(zero!));
    await first.close();

    const holder = startWorker('hold', file, 'j');
    expect((await holder.message('ready')).recorded).toEqual([1]);

    const error = caught(() => SqliteJobStore.open(file));
    expect(error).toBeInstanceOf(StoreError);
    expect(error).toMatchObject({ code: 'STORE_LOCKED', retryable: false });
    expect((error as Error).message).toContain(file);
    // Still locked on a second try: the failed open left nothing behind that changes this.
    expect(caught(() => SqliteJobStore.open(file))).toMatchObject({ code: 'STORE_LOCKED' });

    await holder.kill();
    const store = SqliteJobStore.open(file);
    try {
      const items = await store.items('j', 0, 10);
      expect(items.map((item) => item.state)).toEqual(['succeeded', 'succeeded', 'pending']);
      for (const item of items.slice(0, 2)) expect(plain(item.result)).toEqual(plain(workerResult(item)));
      expect(await store.getJob('j')).toMatchObject({ succeeded: 2, failed: 0, total: 3 });
    } finally {
      await store.close();
    }
  });

  it('a store closed by its owner opens again in another process', async () => {
    const file = storeFile();
    const first = SqliteJobStore.open(file);
    await first.createJob(job('j', workerItems(2, () => 10)));
    await first.close();
    const worker = startWorker('hold', file, 'j');
    expect((await worker.message('ready')).recorded).toEqual([0]);
    await worker.kill();
  });
});

describe('sqlite job store: files that are not a job store', () => {
  /** Opening `file` fails with STORE_CORRUPT and leaves the file, and the folder, as they were. */
  function expectRefused(file: string, message: RegExp): void {
    const before = readFileSync(file);
    const listing = readdirSync(path.dirname(file));
    const error = caught(() => SqliteJobStore.open(file));
    expect(error).toBeInstanceOf(StoreError);
    expect(error).toMatchObject({ code: 'STORE_CORRUPT' });
    expect((error as Error).message).toContain(file);
    expect((error as Error).message).toMatch(message);
    expect(readFileSync(file).equals(before), 'the file is byte-for-byte unchanged').toBe(true);
    expect(readdirSync(path.dirname(file))).toEqual(listing);
  }

  it('a file of random bytes is STORE_CORRUPT and left unchanged', () => {
    const file = storeFile();
    writeFileSync(file, randomBytes(16_384));
    expectRefused(file, /corrupt/);
  });

  it('a SQLite database that is not a job store (a table of its own, user_version 0) is STORE_CORRUPT and left unchanged', () => {
    const file = storeFile();
    const db = new Database(file);
    db.exec("CREATE TABLE notes (text TEXT); INSERT INTO notes VALUES ('mine')");
    db.close();
    expectRefused(file, /not a job store/);
    const again = new Database(file, { readonly: true });
    expect(again.prepare('SELECT text FROM notes').all()).toEqual([{ text: 'mine' }]);
    expect(again.pragma('journal_mode', { simple: true })).toBe('delete');
    again.close();
  });

  it('a store written by a newer schema (user_version 99) is STORE_CORRUPT naming "newer", and left unchanged', async () => {
    const file = storeFile();
    const store = SqliteJobStore.open(file);
    await store.createJob(job('j', workerItems(2, () => 10)));
    await store.close();
    const db = new Database(file);
    db.pragma('user_version = 99');
    db.close();
    expectRefused(file, /newer/);
  });

  it('an empty file becomes an empty store', async () => {
    const file = storeFile();
    writeFileSync(file, '');
    const store = SqliteJobStore.open(file);
    try {
      expect(await store.listJobs()).toEqual([]);
    } finally {
      await store.close();
    }
  });
});

/** Mounts a 1 MiB tmpfs; undefined where that is not permitted (not root, no CAP_SYS_ADMIN). */
function mountSmallDisk(): string | undefined {
  const dir = mkdtempSync(path.join(tmpdir(), 'understudy-full-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', dir], { stdio: 'pipe' });
    return dir;
  } catch {
    rmSync(dir, { recursive: true, force: true });
    return undefined;
  }
}

function unmount(dir: string): void {
  execFileSync('umount', [dir], { stdio: 'pipe' });
  rmSync(dir, { recursive: true, force: true });
}

// Tried once while the tests are collected, and undone at once: hooks of a suite whose
// tests are filtered out never run, so a disk mounted here could not be relied on to go.
const canMount = ((dir) => (dir ? (unmount(dir), true) : false))(mountSmallDisk());

describe('sqlite job store: a full disk', () => {
  const name = 'recordResult on a full disk throws STORE_FULL; every result recorded before survives reopening unchanged, the failed item stays pending';
  it.skipIf(!canMount)(canMount ? name : `${name} (skipped: cannot mount a tmpfs here, needs root)`, async () => {
    const disk = mountSmallDisk();
    if (!disk) throw new Error('mounting a tmpfs worked a moment ago, and now fails');
    // Runs after the finally below has closed the store, which would otherwise keep the mount busy.
    onTestFinished(() => unmount(disk));
    const file = path.join(disk, 'jobs.db');
    // Room to free once the disk is full, to show the store goes on from there.
    const ballast = path.join(disk, 'ballast');
    writeFileSync(ballast, Buffer.alloc(128 * 1024));
    let store = SqliteJobStore.open(file);
    try {
      await store.createJob(job('j', workerItems(200, () => 0)));
      const recorded = new Map<number, ItemResult>();
      let failure: unknown;
      let failedAt = -1;
      for (let i = 0; i < 200; i++) {
        const result: ItemResult = { ...workerResult((await store.items('j', i, 1))[0]!), body: { kind: 'inline', data: randomBytes(8 * 1024) } };
        try {
          expect(await store.recordResult('j', i, result)).toBe(true);
          recorded.set(i, result);
        } catch (error) {
          failure = error;
          failedAt = i;
          break;
        }
      }
      expect(failure, 'a 1 MiB disk fills up before 200 results of 8 KiB').toBeInstanceOf(StoreError);
      expect(failure).toMatchObject({ code: 'STORE_FULL', retryable: true });
      expect((failure as Error).message).toMatch(/full/);
      expect(recorded.size).toBeGreaterThan(10);

      const check = async () => {
        const items = await store.items('j', 0, 1000);
        for (const [i, result] of recorded) expect(plain(items[i]!.result), `item ${i}`).toEqual(plain(result));
        expect(items[failedAt]).toMatchObject({ state: 'pending', result: null });
        expect(items.filter((item) => item.state !== 'pending')).toHaveLength(recorded.size);
        const counts = await store.getJob('j');
        expect((counts?.succeeded ?? 0) + (counts?.failed ?? 0)).toBe(recorded.size);
      };
      await check();
      await store.close();
      store = SqliteJobStore.open(file);
      await check();

      // Once there is room again, the item that failed is recorded.
      rmSync(ballast);
      const retry = { ...workerResult((await store.items('j', failedAt, 1))[0]!), body: { kind: 'inline' as const, data: randomBytes(8 * 1024) } };
      expect(await store.recordResult('j', failedAt, retry)).toBe(true);
      recorded.set(failedAt, retry);
      await store.close();
      store = SqliteJobStore.open(file);
      const items = await store.items('j', 0, 1000);
      for (const [i, result] of recorded) expect(plain(items[i]!.result), `item ${i}`).toEqual(plain(result));
    } finally {
      await store.close();
    }
  });
});

describe('sqlite job store: crash safety', () => {
  it('a process SIGKILLed while it records results leaves every item either pending or with its whole result, counted in the job', async () => {
    const file = storeFile();
    const total = 600;
    // 100 B to 16 KiB: some results fit a page, some span several.
    const setup = SqliteJobStore.open(file);
    await setup.createJob(job('j', workerItems(total, (i) => 100 + ((i * 7919) % 16_000))));
    await setup.close();

    const history: string[] = [];
    let done = 0;
    for (let round = 0; round < 5 && done < total; round++) {
      const worker = startWorker('record', file, 'j');
      await worker.message('ready');
      const delay = 20 + Math.floor(Math.random() * 300);
      await sleep(delay);
      await worker.kill();

      const store = SqliteJobStore.open(file);
      try {
        const items = await store.items('j', 0, total);
        expect(items).toHaveLength(total);
        const finished = items.filter((item) => item.state !== 'pending');
        for (const item of items) {
          if (item.state === 'pending') expect(item.result, `item ${item.index}`).toBeNull();
          else expect(plain(item.result), `item ${item.index}`).toEqual(plain(workerResult(item)));
        }
        const record = (await store.getJob('j'))!;
        expect(record.succeeded, 'succeeded count').toBe(finished.filter((item) => item.state === 'succeeded').length);
        expect(record.failed, 'failed count').toBe(finished.filter((item) => item.state === 'failed').length);
        expect((await store.pendingItems('j')).length).toBe(total - finished.length);
        history.push(`round ${round}: killed after ${delay} ms, ${finished.length - done} more results`);
        expect(finished.length, history.join('; ')).toBeGreaterThanOrEqual(done);
        done = finished.length;
      } finally {
        await store.close();
      }
      const db = new Database(file);
      db.pragma('locking_mode = EXCLUSIVE');
      expect(db.pragma('integrity_check', { simple: true })).toBe('ok');
      db.close();
    }
    expect(done, `the worker recorded something: ${history.join('; ')}`).toBeGreaterThan(0);
  });
});
