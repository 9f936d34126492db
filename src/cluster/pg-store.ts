import pg from 'pg';
import { JobError, pickPruned, StoreError, type JobFilter, type JobStore, type PruneRule } from '../jobs/index.js';
import type { ItemRecord, ItemResult, JobOptions, JobRecord, JobState, NewJob, StoredReply } from '../jobs/index.js';

const { Pool } = pg;

export interface PgStoreOptions {
  /** postgres://user@host:port/db; a password in $PGPASSWORD or ~/.pgpass rather than here. */
  url: string;
  /** The schema the tables live in; created at open. Default understudy. */
  schema?: string;
  /**
   * The epoch of the newest leader term this node held, or null for a node that is not
   * fenced (Understudy alone). The leader's writes (a job's state, an item's result, a
   * failed try) are refused once a newer leader raised the fence.
   */
  epoch?: () => number | null;
  poolSize?: number;
  /** How long to wait for a connection, in ms. Default 2000. */
  connectTimeoutMs?: number;
  /** Each operation's latency (what it did, in words), for metrics. */
  onOperation?: (operation: string, ms: number, ok: boolean) => void;
}

/**
 * The migrations, in order: each runs once, in a transaction, under an advisory lock so
 * that nodes opening the store at once do not race. Never edit one that shipped: add one.
 */
const MIGRATIONS: ((schema: string) => string)[] = [
  (s) => `
    CREATE TABLE ${s}.jobs (
      id text PRIMARY KEY,
      service text NOT NULL,
      name text,
      state text NOT NULL,
      options jsonb NOT NULL,
      created_at bigint NOT NULL,
      updated_at bigint NOT NULL,
      finished_at bigint,
      total integer NOT NULL,
      succeeded integer NOT NULL DEFAULT 0,
      failed integer NOT NULL DEFAULT 0,
      reason text,
      key text UNIQUE,
      fingerprint text NOT NULL
    );
    CREATE INDEX jobs_by_state ON ${s}.jobs (state);
    CREATE TABLE ${s}.items (
      job_id text NOT NULL REFERENCES ${s}.jobs (id),
      idx integer NOT NULL,
      method text NOT NULL,
      path text NOT NULL,
      headers jsonb NOT NULL,
      body_kind text NOT NULL,
      body_data bytea,
      body_path text,
      body_size bigint,
      state text NOT NULL DEFAULT 'pending',
      failed_tries integer NOT NULL DEFAULT 0,
      status integer,
      result_headers jsonb,
      result_kind text,
      result_data bytea,
      result_path text,
      result_size bigint,
      instance text,
      attempts integer,
      ms double precision,
      error text,
      finished_at bigint,
      PRIMARY KEY (job_id, idx)
    );
    CREATE TABLE ${s}.replies (
      scope text NOT NULL,
      key text NOT NULL,
      fingerprint text NOT NULL,
      status integer NOT NULL,
      headers jsonb NOT NULL,
      body bytea NOT NULL,
      expires_at bigint NOT NULL,
      PRIMARY KEY (scope, key)
    );
    CREATE TABLE ${s}.fence (id integer PRIMARY KEY CHECK (id = 1), epoch bigint NOT NULL);
    INSERT INTO ${s}.fence (id, epoch) VALUES (1, 0);`,
];

/** pg_advisory_xact_lock key for migrations: "understudy" in ASCII, folded to 32 bits. */
const MIGRATION_LOCK = 0x756e6473;

type Client = pg.PoolClient;

/**
 * The job store shared by the nodes of a cluster, in PostgreSQL. The same contract as
 * the SQLite store (test/jobs/store-conformance.ts), plus the leader's fence: a row
 * holding the newest leader's epoch, read `FOR SHARE` by every fenced write, so a
 * new leader raising it waits for the writes in flight and every later write of an
 * older epoch is refused (STORE_FENCED). PostgreSQL away is STORE_UNAVAILABLE; the
 * pool reconnects by itself once it is back.
 */
export class PgJobStore implements JobStore {
  readonly kind = 'postgres';
  private closed = false;

  private constructor(
    private readonly pool: pg.Pool,
    private readonly schema: string,
    private readonly where: string,
    private readonly epoch: () => number | null,
    private readonly onOperation: PgStoreOptions['onOperation'],
  ) {}

  static async open(options: PgStoreOptions): Promise<PgJobStore> {
    const schema = options.schema ?? 'understudy';
    if (!/^[a-z_][a-z0-9_]*$/.test(schema)) throw new StoreError('STORE_CORRUPT', `${JSON.stringify(schema)} is not a schema name (lower-case letters, digits, _)`);
    const where = describe(options.url);
    const pool = new Pool({ connectionString: options.url, max: options.poolSize ?? 8, connectionTimeoutMillis: options.connectTimeoutMs ?? 2000 });
    // An idle client whose server went away must not crash the process: the next query reconnects.
    pool.on('error', () => undefined);
    const store = new PgJobStore(pool, `"${schema}"`, where, options.epoch ?? (() => null), options.onOperation);
    try {
      await store.migrate();
    } catch (error) {
      await pool.end().catch(() => undefined);
      throw store.failure(error, 'open the job store');
    }
    return store;
  }

  /** Raises the fence to `epoch` (a new leader, before it acts); returns the fence. */
  async raiseFence(epoch: number): Promise<number> {
    const { rows } = await this.query<{ epoch: string }>('raise the leader fence', `UPDATE ${this.schema}.fence SET epoch = GREATEST(epoch, $1) WHERE id = 1 RETURNING epoch`, [epoch]);
    return Number(rows[0]!.epoch);
  }

  async fenceEpoch(): Promise<number> {
    const { rows } = await this.query<{ epoch: string }>('read the leader fence', `SELECT epoch FROM ${this.schema}.fence WHERE id = 1`);
    return Number(rows[0]!.epoch);
  }

  async createJob(job: NewJob): Promise<{ job: JobRecord; created: boolean }> {
    const s = this.schema;
    return this.transaction('record a new job', async (client) => {
      if (job.key !== null) {
        // One job per key even for two submissions at once: the second waits on the first's row.
        await client.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`${s}:${job.key}`]);
        const existing = await client.query<JobRow>(`SELECT * FROM ${s}.jobs WHERE key = $1`, [job.key]);
        const row = existing.rows[0];
        if (row) {
          if (row.fingerprint !== job.fingerprint) throw keyReused(job.key, row.id);
          return { job: toJob(row), created: false };
        }
      }
      await client.query(
        `INSERT INTO ${s}.jobs (id, service, name, state, options, created_at, updated_at, total, key, fingerprint)
         VALUES ($1, $2, $3, 'running', $4, $5, $5, $6, $7, $8)`,
        [job.id, job.service, job.name, JSON.stringify(job.options), job.createdAt, job.items.length, job.key, job.fingerprint],
      );
      // Items in batches of 500 rows: one round trip each, within PostgreSQL's parameter limit.
      for (let from = 0; from < job.items.length; from += 500) {
        const batch = job.items.slice(from, from + 500);
        const values: unknown[] = [];
        const rows = batch.map((item, i) => {
          const body = item.body;
          values.push(job.id, from + i, item.method, item.path, JSON.stringify(item.headers), body.kind, body.kind === 'inline' ? body.data : null, body.kind === 'file' ? body.path : null, body.kind === 'file' ? body.size : null);
          const base = i * 9;
          return `(${Array.from({ length: 9 }, (_, k) => `$${base + k + 1}`).join(', ')})`;
        });
        await client.query(`INSERT INTO ${s}.items (job_id, idx, method, path, headers, body_kind, body_data, body_path, body_size) VALUES ${rows.join(', ')}`, values);
      }
      const created = await client.query<JobRow>(`SELECT * FROM ${s}.jobs WHERE id = $1`, [job.id]);
      return { job: toJob(created.rows[0]!), created: true };
    });
  }

  async getJob(id: string): Promise<JobRecord | undefined> {
    const { rows } = await this.query<JobRow>('read a job', `SELECT * FROM ${this.schema}.jobs WHERE id = $1`, [id]);
    return rows[0] && toJob(rows[0]);
  }

  async listJobs(filter: JobFilter = {}): Promise<JobRecord[]> {
    const { rows } = await this.query<JobRow>(
      'list jobs',
      `SELECT * FROM ${this.schema}.jobs WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR service = $2)
       ORDER BY created_at DESC, id DESC LIMIT $3`,
      [filter.state ?? null, filter.service ?? null, filter.limit ?? 100],
    );
    return rows.map(toJob);
  }

  async setJobState(id: string, state: JobState, reason: string | null, now: number): Promise<JobRecord> {
    return this.fenced('change a job', async (client) => {
      const final = state === 'succeeded' || state === 'failed' || state === 'cancelled';
      const { rows } = await client.query<JobRow>(
        `UPDATE ${this.schema}.jobs SET state = $2, reason = $3, updated_at = $4, finished_at = $5 WHERE id = $1 RETURNING *`,
        [id, state, reason, now, final ? now : null],
      );
      if (!rows[0]) throw new JobError('NO_JOB', `no job ${id}`, 404);
      return toJob(rows[0]);
    });
  }

  async pendingItems(jobId: string): Promise<ItemRecord[]> {
    const { rows } = await this.query<ItemRow>('read items', `SELECT * FROM ${this.schema}.items WHERE job_id = $1 AND state = 'pending' ORDER BY idx`, [jobId]);
    return rows.map(toItem);
  }

  async items(jobId: string, from: number, limit: number): Promise<ItemRecord[]> {
    const { rows } = await this.query<ItemRow>('read items', `SELECT * FROM ${this.schema}.items WHERE job_id = $1 AND idx >= $2 ORDER BY idx LIMIT $3`, [jobId, from, limit]);
    return rows.map(toItem);
  }

  async recordResult(jobId: string, index: number, result: ItemResult): Promise<boolean> {
    const s = this.schema;
    return this.fenced(`record the result of item ${index}`, async (client) => {
      const body = result.body;
      const changed = await client.query(
        `UPDATE ${s}.items SET state = $3, status = $4, result_headers = $5, result_kind = $6, result_data = $7, result_path = $8,
           result_size = $9, instance = $10, attempts = $11, ms = $12, error = $13, finished_at = $14
         WHERE job_id = $1 AND idx = $2 AND state = 'pending'`,
        [
          jobId,
          index,
          result.state,
          result.status,
          JSON.stringify(result.headers),
          body.kind,
          body.kind === 'inline' ? body.data : null,
          body.kind === 'file' ? body.path : null,
          body.kind === 'file' ? body.size : body.kind === 'inline' ? body.data.length : 0,
          result.instance,
          result.attempts,
          result.ms,
          result.error,
          result.finishedAt,
        ],
      );
      if (changed.rowCount === 0) return false;
      await client.query(`UPDATE ${s}.jobs SET succeeded = succeeded + $2, failed = failed + $3, updated_at = $4 WHERE id = $1`, [
        jobId,
        result.state === 'succeeded' ? 1 : 0,
        result.state === 'failed' ? 1 : 0,
        result.finishedAt,
      ]);
      return true;
    });
  }

  async noteFailedTry(jobId: string, index: number): Promise<number> {
    return this.fenced(`count a failed try of item ${index}`, async (client) => {
      const { rows } = await client.query<{ failed_tries: number }>(
        `UPDATE ${this.schema}.items SET failed_tries = failed_tries + 1 WHERE job_id = $1 AND idx = $2 AND state = 'pending' RETURNING failed_tries`,
        [jobId, index],
      );
      return rows[0]?.failed_tries ?? 0;
    });
  }

  async getReply(scope: string, key: string, now: number): Promise<StoredReply | undefined> {
    const { rows } = await this.query<{ fingerprint: string; status: number; headers: StoredReply['headers']; body: Buffer; expires_at: string }>(
      'read an idempotent reply',
      `SELECT * FROM ${this.schema}.replies WHERE scope = $1 AND key = $2 AND expires_at > $3`,
      [scope, key, now],
    );
    const row = rows[0];
    if (!row) return undefined;
    return { fingerprint: row.fingerprint, status: row.status, headers: row.headers, body: row.body, expiresAt: Number(row.expires_at) };
  }

  async putReply(scope: string, key: string, reply: StoredReply, now: number): Promise<void> {
    await this.query(
      'keep an idempotent reply',
      `INSERT INTO ${this.schema}.replies (scope, key, fingerprint, status, headers, body, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
       ON CONFLICT (scope, key) DO UPDATE SET fingerprint = excluded.fingerprint, status = excluded.status, headers = excluded.headers,
         body = excluded.body, expires_at = excluded.expires_at
       WHERE ${this.schema}.replies.expires_at <= $8`,
      [scope, key, reply.fingerprint, reply.status, JSON.stringify(reply.headers), reply.body, reply.expiresAt, now],
    );
  }

  async pruneReplies(now: number): Promise<number> {
    const result = await this.query('forget expired replies', `DELETE FROM ${this.schema}.replies WHERE expires_at <= $1`, [now]);
    return result.rowCount ?? 0;
  }

  async pruneJobs(rule: PruneRule): Promise<JobRecord[]> {
    // Not fenced by epoch: a finished job no longer changes, so any node may forget it.
    return this.transaction('remove finished jobs', async (client) => {
      const { rows } = await client.query<JobRow>(
        `SELECT * FROM ${this.schema}.jobs WHERE state IN ('succeeded', 'failed', 'cancelled') ORDER BY COALESCE(finished_at, updated_at) DESC, id DESC FOR UPDATE`,
      );
      const gone = pickPruned(rows.map(toJob), rule);
      if (!rule.dryRun && gone.length > 0) {
        const ids = gone.map((job) => job.id);
        await client.query(`DELETE FROM ${this.schema}.items WHERE job_id = ANY($1::text[])`, [ids]);
        await client.query(`DELETE FROM ${this.schema}.jobs WHERE id = ANY($1::text[])`, [ids]);
      }
      return gone;
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.pool.end();
  }

  private async migrate(): Promise<void> {
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN');
      await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
      await client.query(`CREATE SCHEMA IF NOT EXISTS ${this.schema}`);
      await client.query(`CREATE TABLE IF NOT EXISTS ${this.schema}.schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`);
      const { rows } = await client.query<{ version: number }>(`SELECT coalesce(max(version), 0) AS version FROM ${this.schema}.schema_migrations`);
      const at = rows[0]!.version;
      if (at > MIGRATIONS.length) {
        throw new StoreError('STORE_CORRUPT', `the job store at ${this.where} (schema ${this.schema}) was written by a newer Understudy (migration ${at}, this one knows ${MIGRATIONS.length}); upgrade this node`);
      }
      for (let version = at + 1; version <= MIGRATIONS.length; version++) {
        await client.query(MIGRATIONS[version - 1]!(this.schema));
        await client.query(`INSERT INTO ${this.schema}.schema_migrations (version) VALUES ($1)`, [version]);
      }
      await client.query('COMMIT');
    } catch (error) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw error;
    } finally {
      client.release();
    }
  }

  private async query<R extends pg.QueryResultRow = pg.QueryResultRow>(what: string, text: string, values: unknown[] = []): Promise<pg.QueryResult<R>> {
    this.checkOpen();
    const started = performance.now();
    try {
      const result = await this.pool.query<R>(text, values);
      this.onOperation?.(operationOf(what), performance.now() - started, true);
      return result;
    } catch (error) {
      this.onOperation?.(operationOf(what), performance.now() - started, false);
      throw this.failure(error, what);
    }
  }

  private async transaction<T>(what: string, fn: (client: Client) => Promise<T>): Promise<T> {
    this.checkOpen();
    const started = performance.now();
    let client: Client;
    try {
      client = await this.pool.connect();
    } catch (error) {
      this.onOperation?.(operationOf(what), performance.now() - started, false);
      throw this.failure(error, what);
    }
    let broken = false;
    try {
      await client.query('BEGIN');
      const result = await fn(client);
      // A COMMIT whose answer is lost is an unknown outcome: reported as a failure, never as done.
      await client.query('COMMIT');
      this.onOperation?.(operationOf(what), performance.now() - started, true);
      return result;
    } catch (error) {
      this.onOperation?.(operationOf(what), performance.now() - started, false);
      broken = isConnectionError(error);
      if (!broken) await client.query('ROLLBACK').catch(() => undefined);
      throw this.failure(error, what);
    } finally {
      client.release(broken);
    }
  }

  /** A leader's write: refused, changing nothing, once a newer leader raised the fence. */
  private fenced<T>(what: string, fn: (client: Client) => Promise<T>): Promise<T> {
    return this.transaction(what, async (client) => {
      const mine = this.epoch();
      if (mine !== null) {
        const { rows } = await client.query<{ epoch: string }>(`SELECT epoch FROM ${this.schema}.fence WHERE id = 1 FOR SHARE`);
        const fence = Number(rows[0]!.epoch);
        if (fence > mine) throw new StoreError('STORE_FENCED', `a newer leader (epoch ${fence}) holds the job store; this node (epoch ${mine}) may not ${what}`);
      }
      return fn(client);
    });
  }

  private checkOpen(): void {
    if (this.closed) throw new StoreError('STORE_CLOSED', `the job store at ${this.where} is closed`);
  }

  private failure(error: unknown, what: string): Error {
    if (error instanceof StoreError || error instanceof JobError) return error;
    const message = (error as Error).message ?? String(error);
    if (isConnectionError(error)) {
      return new StoreError('STORE_UNAVAILABLE', `could not ${what}: PostgreSQL at ${this.where} cannot be reached (${message})`, { cause: error });
    }
    const code = (error as { code?: string }).code ?? '';
    if (code === '53100') return new StoreError('STORE_FULL', `could not ${what}: the disk under PostgreSQL at ${this.where} is full`, { cause: error });
    return new StoreError('STORE_IO', `could not ${what} in PostgreSQL at ${this.where}: ${message}`, { cause: error });
  }
}

/** A connection lost or refused, the server shutting down or not yet up: PostgreSQL is away, nothing was decided. */
function isConnectionError(error: unknown): boolean {
  const code = String((error as { code?: string }).code ?? '');
  const message = String((error as Error).message ?? '');
  return (
    ['ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'EHOSTUNREACH', 'ETIMEDOUT', 'EPIPE', '57P01', '57P02', '57P03'].includes(code) ||
    code.startsWith('08') ||
    /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error/i.test(message)
  );
}

/** A metric label from what an operation does: "record the result of item 3" → "record-the-result-of-item". */
function operationOf(what: string): string {
  return what.replace(/ \d+$/, '').replace(/[^a-z]+/gi, '-').toLowerCase();
}

/** host:port/db of a connection URL, without user or password, for messages. */
function describe(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.hostname}:${parsed.port || 5432}${parsed.pathname}`;
  } catch {
    return 'the configured URL';
  }
}

interface JobRow {
  id: string;
  service: string;
  name: string | null;
  state: JobState;
  options: JobOptions;
  created_at: string;
  updated_at: string;
  finished_at: string | null;
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
  headers: Record<string, string>;
  body_kind: string;
  body_data: Buffer | null;
  body_path: string | null;
  body_size: string | null;
  state: ItemRecord['state'];
  failed_tries: number;
  status: number | null;
  result_headers: Record<string, string> | null;
  result_kind: string | null;
  result_data: Buffer | null;
  result_path: string | null;
  result_size: string | null;
  instance: string | null;
  attempts: number | null;
  ms: number | null;
  error: string | null;
  finished_at: string | null;
}

function keyReused(key: string, job: string): JobError {
  return new JobError(
    'KEY_REUSED',
    `Idempotency-Key ${JSON.stringify(key)} was already used for job ${job} with a different submission; use a new key for a new job`,
    422,
    { job },
  );
}

function toJob(row: JobRow): JobRecord {
  return {
    id: row.id,
    service: row.service,
    name: row.name,
    state: row.state,
    options: row.options,
    createdAt: Number(row.created_at),
    updatedAt: Number(row.updated_at),
    finishedAt: row.finished_at === null ? null : Number(row.finished_at),
    total: row.total,
    succeeded: row.succeeded,
    failed: row.failed,
    reason: row.reason,
    key: row.key,
    fingerprint: row.fingerprint,
  };
}

function toItem(row: ItemRow): ItemRecord {
  const body: ItemRecord['request']['body'] =
    row.body_kind === 'inline'
      ? { kind: 'inline', data: row.body_data ?? Buffer.alloc(0) }
      : row.body_kind === 'file'
        ? { kind: 'file', path: row.body_path ?? '', size: Number(row.body_size ?? 0) }
        : { kind: 'none' };
  let result: ItemResult | null = null;
  if (row.state !== 'pending') {
    result = {
      state: row.state,
      status: row.status,
      headers: row.result_headers ?? {},
      body:
        row.result_kind === 'inline'
          ? { kind: 'inline', data: row.result_data ?? Buffer.alloc(0) }
          : row.result_kind === 'file'
            ? { kind: 'file', path: row.result_path ?? '', size: Number(row.result_size ?? 0) }
            : { kind: 'none' },
      instance: row.instance,
      attempts: row.attempts ?? 0,
      ms: row.ms ?? 0,
      error: row.error,
      finishedAt: Number(row.finished_at ?? 0),
    };
  }
  return { job: row.job_id, index: row.idx, request: { method: row.method, path: row.path, headers: row.headers, body }, state: row.state, failedTries: row.failed_tries, result };
}
