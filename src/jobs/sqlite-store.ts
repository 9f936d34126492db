import { mkdirSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { JobError, StoreError } from './errors.js';
import { pickPruned, type JobFilter, type JobStore, type PruneRule } from './store.js';
import type { ItemBody, ItemRecord, ItemResult, JobOptions, JobRecord, JobState, NewJob, ResultBody, StoredReply } from './types.js';

const SCHEMA_VERSION = 1;

const SCHEMA = `
CREATE TABLE jobs (
  id TEXT PRIMARY KEY,
  service TEXT NOT NULL,
  name TEXT,
  state TEXT NOT NULL,
  options TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  finished_at INTEGER,
  total INTEGER NOT NULL,
  succeeded INTEGER NOT NULL DEFAULT 0,
  failed INTEGER NOT NULL DEFAULT 0,
  reason TEXT,
  key TEXT UNIQUE,
  fingerprint TEXT NOT NULL
);
CREATE INDEX jobs_by_state ON jobs (state);
CREATE TABLE items (
  job_id TEXT NOT NULL REFERENCES jobs (id),
  idx INTEGER NOT NULL,
  method TEXT NOT NULL,
  path TEXT NOT NULL,
  headers TEXT NOT NULL,
  body_kind TEXT NOT NULL,
  body_data BLOB,
  body_path TEXT,
  body_size INTEGER,
  state TEXT NOT NULL DEFAULT 'pending',
  failed_tries INTEGER NOT NULL DEFAULT 0,
  status INTEGER,
  result_headers TEXT,
  result_kind TEXT,
  result_data BLOB,
  result_path TEXT,
  result_size INTEGER,
  instance TEXT,
  attempts INTEGER,
  ms REAL,
  error TEXT,
  finished_at INTEGER,
  PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE TABLE replies (
  scope TEXT NOT NULL,
  key TEXT NOT NULL,
  fingerprint TEXT NOT NULL,
  status INTEGER NOT NULL,
  headers TEXT NOT NULL,
  body BLOB NOT NULL,
  expires_at INTEGER NOT NULL,
  PRIMARY KEY (scope, key)
) WITHOUT ROWID;
`;

interface JobRow {
  id: string;
  service: string;
  name: string | null;
  state: JobState;
  options: string;
  created_at: number;
  updated_at: number;
  finished_at: number | null;
  total: number;
  succeeded: number;
  failed: number;
  reason: string | null;
  key: string | null;
  fingerprint: string;
}

interface ItemRow {
  job_id: string;
  idx: number;
  method: string;
  path: string;
  headers: string;
  body_kind: string;
  body_data: Buffer | null;
  body_path: string | null;
  body_size: number | null;
  state: ItemRecord['state'];
  failed_tries: number;
  status: number | null;
  result_headers: string | null;
  result_kind: string | null;
  result_data: Buffer | null;
  result_path: string | null;
  result_size: number | null;
  instance: string | null;
  attempts: number | null;
  ms: number | null;
  error: string | null;
  finished_at: number | null;
}

interface PendingResult {
  jobId: string;
  index: number;
  result: ItemResult;
  resolve(recorded: boolean): void;
  reject(error: unknown): void;
}

/**
 * The embedded job store: one SQLite file in WAL mode with synchronous=FULL, so a
 * commit is on disk before it returns. The file is locked for one Understudy at a
 * time (locking_mode=EXCLUSIVE): two of them running the same jobs would run every
 * item twice.
 */
export class SqliteJobStore implements JobStore {
  readonly kind = 'sqlite';
  private db: Database.Database | undefined;
  private batch: PendingResult[] = [];
  private readonly statements: ReturnType<SqliteJobStore['prepare']>;

  private constructor(
    readonly file: string,
    db: Database.Database,
  ) {
    this.db = db;
    this.statements = this.prepare(db);
  }

  /** Opens (or creates) the store; throws StoreError when it is locked, corrupt or unreadable. */
  static open(file: string): SqliteJobStore {
    const where = path.resolve(file);
    let db: Database.Database | undefined;
    try {
      mkdirSync(path.dirname(where), { recursive: true });
      db = new Database(where, { timeout: 200 });
      db.pragma('locking_mode = EXCLUSIVE');
      // Before anything is written: switching a file that is not a job store to WAL would rewrite its header.
      checkSchema(db, where);
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
      db.pragma('foreign_keys = ON');
      // Takes the exclusive lock now, so a second Understudy on this file fails at once.
      db.exec('BEGIN IMMEDIATE; COMMIT');
      migrate(db);
      return new SqliteJobStore(where, db);
    } catch (error) {
      db?.close();
      throw storeError(error, where, 'open');
    }
  }

  async createJob(job: NewJob): Promise<{ job: JobRecord; created: boolean }> {
    const s = this.statements;
    return this.run('record a new job', () =>
      this.database().transaction(() => {
        if (job.key !== null) {
          const existing = s.jobByKey.get(job.key) as JobRow | undefined;
          if (existing) {
            if (existing.fingerprint !== job.fingerprint) throw keyReused(job.key, existing.id);
            return { job: toJob(existing), created: false };
          }
        }
        s.insertJob.run({
          id: job.id,
          service: job.service,
          name: job.name,
          state: 'running',
          options: JSON.stringify(job.options),
          created_at: job.createdAt,
          total: job.items.length,
          key: job.key,
          fingerprint: job.fingerprint,
        });
        job.items.forEach((item, idx) => {
          s.insertItem.run({
            job_id: job.id,
            idx,
            method: item.method,
            path: item.path,
            headers: JSON.stringify(item.headers),
            body_kind: item.body.kind,
            body_data: item.body.kind === 'inline' ? item.body.data : null,
            body_path: item.body.kind === 'file' ? item.body.path : null,
            body_size: item.body.kind === 'file' ? item.body.size : null,
          });
        });
        return { job: toJob(s.job.get(job.id) as JobRow), created: true };
      })(),
    );
  }

  async getJob(id: string): Promise<JobRecord | undefined> {
    const row = this.run('read a job', () => this.statements.job.get(id) as JobRow | undefined);
    return row && toJob(row);
  }

  async listJobs(filter: JobFilter = {}): Promise<JobRecord[]> {
    const rows = this.run(
      'list jobs',
      () =>
        this.statements.listJobs.all({
          state: filter.state ?? null,
          service: filter.service ?? null,
          limit: filter.limit ?? 100,
        }) as JobRow[],
    );
    return rows.map(toJob);
  }

  async setJobState(id: string, state: JobState, reason: string | null, now: number): Promise<JobRecord> {
    return this.run('change a job', () => {
      const final = state === 'succeeded' || state === 'failed' || state === 'cancelled';
      const changed = this.statements.setState.run({ id, state, reason, now, finished_at: final ? now : null });
      if (changed.changes === 0) throw noJob(id);
      return toJob(this.statements.job.get(id) as JobRow);
    });
  }

  async pendingItems(jobId: string): Promise<ItemRecord[]> {
    return this.run('read items', () => (this.statements.pending.all(jobId) as ItemRow[]).map(toItem));
  }

  async items(jobId: string, from: number, limit: number): Promise<ItemRecord[]> {
    return this.run('read items', () => (this.statements.items.all(jobId, from, limit) as ItemRow[]).map(toItem));
  }

  /**
   * Results that finish close together share one transaction, so one fsync (a few
   * milliseconds on a virtual disk) is paid per batch, not per item.
   */
  recordResult(jobId: string, index: number, result: ItemResult): Promise<boolean> {
    return new Promise((resolve, reject) => {
      try {
        this.database();
      } catch (error) {
        reject(error);
        return;
      }
      this.batch.push({ jobId, index, result, resolve, reject });
      if (this.batch.length === 1) setImmediate(() => this.flush());
    });
  }

  private flush(): void {
    const batch = this.batch;
    this.batch = [];
    if (batch.length === 0) return;
    const what = batch.length === 1 ? `record the result of item ${batch[0]!.index}` : `record the results of ${batch.length} items`;
    let recorded: boolean[];
    try {
      recorded = this.run(what, () => this.database().transaction(() => batch.map((entry) => this.recordOne(entry)))());
    } catch (error) {
      for (const entry of batch) entry.reject(error);
      return;
    }
    batch.forEach((entry, i) => entry.resolve(recorded[i]!));
  }

  private recordOne({ jobId, index, result }: PendingResult): boolean {
    const s = this.statements;
    const body = result.body;
    const changed = s.recordResult.run({
      job_id: jobId,
      idx: index,
      state: result.state,
      status: result.status,
      result_headers: JSON.stringify(result.headers),
      result_kind: body.kind,
      result_data: body.kind === 'inline' ? body.data : null,
      result_path: body.kind === 'file' ? body.path : null,
      result_size: body.kind === 'file' ? body.size : body.kind === 'inline' ? body.data.length : 0,
      instance: result.instance,
      attempts: result.attempts,
      ms: result.ms,
      error: result.error,
      finished_at: result.finishedAt,
    });
    if (changed.changes === 0) return false;
    s.countResult.run({
      id: jobId,
      succeeded: result.state === 'succeeded' ? 1 : 0,
      failed: result.state === 'failed' ? 1 : 0,
      now: result.finishedAt,
    });
    return true;
  }

  async noteFailedTry(jobId: string, index: number): Promise<number> {
    return this.run(`count a failed try of item ${index}`, () => {
      const row = this.statements.failedTry.get(jobId, index) as { failed_tries: number } | undefined;
      return row?.failed_tries ?? 0;
    });
  }

  async getReply(scope: string, key: string, now: number): Promise<StoredReply | undefined> {
    const row = this.run('read an idempotent reply', () => this.statements.reply.get(scope, key, now)) as
      | { fingerprint: string; status: number; headers: string; body: Buffer; expires_at: number }
      | undefined;
    if (!row) return undefined;
    return {
      fingerprint: row.fingerprint,
      status: row.status,
      headers: JSON.parse(row.headers) as StoredReply['headers'],
      body: row.body,
      expiresAt: row.expires_at,
    };
  }

  async putReply(scope: string, key: string, reply: StoredReply, now: number): Promise<void> {
    this.run('keep an idempotent reply', () => {
      this.statements.putReply.run({
        scope,
        key,
        fingerprint: reply.fingerprint,
        status: reply.status,
        headers: JSON.stringify(reply.headers),
        body: reply.body,
        expires_at: reply.expiresAt,
        now,
      });
    });
  }

  async pruneReplies(now: number): Promise<number> {
    return this.run('forget expired replies', () => this.statements.prune.run(now).changes);
  }

  async pruneJobs(rule: PruneRule): Promise<JobRecord[]> {
    const s = this.statements;
    return this.run('remove finished jobs', () =>
      this.database().transaction(() => {
        const gone = pickPruned((s.finishedJobs.all() as JobRow[]).map(toJob), rule);
        if (!rule.dryRun) {
          for (const job of gone) {
            s.deleteItems.run(job.id);
            s.deleteJob.run(job.id);
          }
        }
        return gone;
      })(),
    );
  }

  async close(): Promise<void> {
    if (this.db) this.flush();
    const db = this.db;
    this.db = undefined;
    db?.close();
  }

  private database(): Database.Database {
    if (!this.db) throw new StoreError('STORE_CLOSED', `the job store ${this.file} is closed`);
    return this.db;
  }

  /** Runs one operation, turning SQLite's errors into StoreErrors that say what failed. */
  private run<T>(what: string, fn: () => T): T {
    this.database();
    try {
      return fn();
    } catch (error) {
      if (error instanceof JobError || error instanceof StoreError) throw error;
      throw storeError(error, this.file, what);
    }
  }

  private prepare(db: Database.Database) {
    return {
      job: db.prepare('SELECT * FROM jobs WHERE id = ?'),
      finishedJobs: db.prepare(
        `SELECT * FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') ORDER BY COALESCE(finished_at, updated_at) DESC, id DESC`,
      ),
      deleteItems: db.prepare('DELETE FROM items WHERE job_id = ?'),
      deleteJob: db.prepare('DELETE FROM jobs WHERE id = ?'),
      jobByKey: db.prepare('SELECT * FROM jobs WHERE key = ?'),
      listJobs: db.prepare(
        `SELECT * FROM jobs WHERE (:state IS NULL OR state = :state) AND (:service IS NULL OR service = :service)
         ORDER BY created_at DESC, id DESC LIMIT :limit`,
      ),
      insertJob: db.prepare(
        `INSERT INTO jobs (id, service, name, state, options, created_at, updated_at, total, key, fingerprint)
         VALUES (:id, :service, :name, :state, :options, :created_at, :created_at, :total, :key, :fingerprint)`,
      ),
      insertItem: db.prepare(
        `INSERT INTO items (job_id, idx, method, path, headers, body_kind, body_data, body_path, body_size)
         VALUES (:job_id, :idx, :method, :path, :headers, :body_kind, :body_data, :body_path, :body_size)`,
      ),
      setState: db.prepare(
        'UPDATE jobs SET state = :state, reason = :reason, updated_at = :now, finished_at = :finished_at WHERE id = :id',
      ),
      pending: db.prepare(`SELECT * FROM items WHERE job_id = ? AND state = 'pending' ORDER BY idx`),
      items: db.prepare('SELECT * FROM items WHERE job_id = ? AND idx >= ? ORDER BY idx LIMIT ?'),
      // The `state = 'pending'` guard is what makes a result exactly-once.
      recordResult: db.prepare(
        `UPDATE items SET state = :state, status = :status, result_headers = :result_headers, result_kind = :result_kind,
           result_data = :result_data, result_path = :result_path, result_size = :result_size, instance = :instance,
           attempts = :attempts, ms = :ms, error = :error, finished_at = :finished_at
         WHERE job_id = :job_id AND idx = :idx AND state = 'pending'`,
      ),
      countResult: db.prepare(
        'UPDATE jobs SET succeeded = succeeded + :succeeded, failed = failed + :failed, updated_at = :now WHERE id = :id',
      ),
      failedTry: db.prepare(
        `UPDATE items SET failed_tries = failed_tries + 1 WHERE job_id = ? AND idx = ? AND state = 'pending' RETURNING failed_tries`,
      ),
      reply: db.prepare('SELECT * FROM replies WHERE scope = ? AND key = ? AND expires_at > ?'),
      putReply: db.prepare(
        `INSERT INTO replies (scope, key, fingerprint, status, headers, body, expires_at)
         VALUES (:scope, :key, :fingerprint, :status, :headers, :body, :expires_at)
         ON CONFLICT (scope, key) DO UPDATE SET fingerprint = excluded.fingerprint, status = excluded.status,
           headers = excluded.headers, body = excluded.body, expires_at = excluded.expires_at
         WHERE replies.expires_at <= :now`,
      ),
      prune: db.prepare('DELETE FROM replies WHERE expires_at <= ?'),
    };
  }
}

/** Throws STORE_CORRUPT for a file that is not a job store this version can use; only reads. */
function checkSchema(db: Database.Database, file: string): void {
  const version = db.pragma('user_version', { simple: true }) as number;
  if (version > SCHEMA_VERSION) {
    throw new StoreError(
      'STORE_CORRUPT',
      `the job store ${file} was written by a newer Understudy (schema ${version}, this one knows ${SCHEMA_VERSION}); upgrade, or move the file aside`,
    );
  }
  const tables = db.prepare("SELECT count(*) AS n FROM sqlite_master WHERE type = 'table'").get() as { n: number };
  if (version === 0 && tables.n > 0) {
    throw new StoreError('STORE_CORRUPT', `${file} is a SQLite database but not a job store; point stateDir elsewhere or move the file aside`);
  }
}

function migrate(db: Database.Database): void {
  if (db.pragma('user_version', { simple: true }) === SCHEMA_VERSION) return;
  db.transaction(() => {
    db.exec(SCHEMA);
    db.pragma(`user_version = ${SCHEMA_VERSION}`);
  })();
}

function storeError(error: unknown, file: string, what: string): StoreError {
  if (error instanceof StoreError) return error;
  const code = (error as { code?: string }).code ?? '';
  const message = (error as Error).message ?? String(error);
  if (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED')) {
    return new StoreError(
      'STORE_LOCKED',
      `the job store ${file} is locked by another process (another Understudy with the same stateDir?); stop it or give this one its own stateDir`,
      { cause: error },
    );
  }
  if (code === 'SQLITE_NOTADB' || code.startsWith('SQLITE_CORRUPT')) {
    return new StoreError(
      'STORE_CORRUPT',
      `the job store ${file} is corrupt (${message}); it was left as it is: move it aside to start with an empty store, or restore it from a backup`,
      { cause: error },
    );
  }
  if (code === 'SQLITE_FULL') {
    return new StoreError('STORE_FULL', `could not ${what}: the disk holding ${file} is full`, { cause: error });
  }
  return new StoreError('STORE_IO', `could not ${what} in the job store ${file}: ${message}`, { cause: error });
}

function keyReused(key: string, job: string): JobError {
  return new JobError(
    'KEY_REUSED',
    `Idempotency-Key ${JSON.stringify(key)} was already used for job ${job} with a different submission; use a new key for a new job`,
    422,
    { job },
  );
}

function noJob(id: string): JobError {
  return new JobError('NO_JOB', `no job ${id}`, 404);
}

function toJob(row: JobRow): JobRecord {
  return {
    id: row.id,
    service: row.service,
    name: row.name,
    state: row.state,
    options: JSON.parse(row.options) as JobOptions,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    finishedAt: row.finished_at,
    total: row.total,
    succeeded: row.succeeded,
    failed: row.failed,
    reason: row.reason,
    key: row.key,
    fingerprint: row.fingerprint,
  };
}

function toItem(row: ItemRow): ItemRecord {
  const body: ItemBody =
    row.body_kind === 'inline'
      ? { kind: 'inline', data: row.body_data ?? Buffer.alloc(0) }
      : row.body_kind === 'file'
        ? { kind: 'file', path: row.body_path ?? '', size: row.body_size ?? 0 }
        : { kind: 'none' };
  let result: ItemResult | null = null;
  if (row.state !== 'pending') {
    const resultBody: ResultBody =
      row.result_kind === 'inline'
        ? { kind: 'inline', data: row.result_data ?? Buffer.alloc(0) }
        : row.result_kind === 'file'
          ? { kind: 'file', path: row.result_path ?? '', size: row.result_size ?? 0 }
          : { kind: 'none' };
    result = {
      state: row.state,
      status: row.status,
      headers: JSON.parse(row.result_headers ?? '{}') as Record<string, string>,
      body: resultBody,
      instance: row.instance,
      attempts: row.attempts ?? 0,
      ms: row.ms ?? 0,
      error: row.error,
      finishedAt: row.finished_at ?? 0,
    };
  }
  return {
    job: row.job_id,
    index: row.idx,
    request: { method: row.method, path: row.path, headers: JSON.parse(row.headers) as Record<string, string>, body },
    state: row.state,
    failedTries: row.failed_tries,
    result,
  };
}
