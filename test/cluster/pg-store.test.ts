import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PgJobStore } from '../../src/cluster/index.js';
import { StoreError, type ItemResult, type NewJob } from '../../src/jobs/index.js';
import { storeConformance } from '../jobs/store-conformance.js';
import { postgresAvailable, startPostgres, type TestPostgres } from '../support/postgres.js';

/* The PostgreSQL job store on a real server: the store contract, the leader's fence, PostgreSQL going away. */

let server: TestPostgres;
const schemaName = () => `s_${randomBytes(5).toString('hex')}`;

async function dropSchema(schema: string): Promise<void> {
  const client = new pg.Client({ connectionString: server.url });
  await client.connect();
  await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  await client.end();
}

const result = (overrides: Partial<ItemResult> = {}): ItemResult => ({
  state: 'succeeded',
  status: 200,
  headers: {},
  body: { kind: 'inline', data: Buffer.from('ok') },
  instance: 'a',
  attempts: 1,
  ms: 1,
  error: null,
  finishedAt: Date.now(),
  ...overrides,
});

const job = (id: string, items = 3): NewJob => ({
  id,
  service: 'svc',
  name: null,
  options: { concurrency: 1, itemTimeout: 1000, retries: 0, join: 'none' },
  items: Array.from({ length: items }, () => ({ method: 'POST', path: '/', headers: {}, body: { kind: 'none' as const } })),
  key: null,
  fingerprint: id,
  createdAt: Date.now(),
});

describe.skipIf(!postgresAvailable())('PostgreSQL job store', () => {
  beforeAll(async () => {
    server = await startPostgres();
  }, 30_000);
  afterAll(async () => server?.stop());

  storeConformance(
    'PostgreSQL',
    async () => {
      const schema = schemaName();
      const store = await PgJobStore.open({ url: server.url, schema });
      return {
        store,
        location: schema,
        async cleanup() {
          await store.close();
          await dropSchema(schema);
        },
      };
    },
    (schema) => PgJobStore.open({ url: server.url, schema }),
  );

  it('refuses the writes of a leader whose epoch a newer one passed, changing nothing', async () => {
    const schema = schemaName();
    let epochA = 1;
    const a = await PgJobStore.open({ url: server.url, schema, epoch: () => epochA });
    const b = await PgJobStore.open({ url: server.url, schema, epoch: () => 2 });
    try {
      await a.raiseFence(1);
      await a.createJob(job('j1'));
      expect(await a.recordResult('j1', 0, result())).toBe(true);
      expect(await b.raiseFence(2)).toBe(2);
      await expect(a.recordResult('j1', 1, result())).rejects.toMatchObject({ code: 'STORE_FENCED' });
      await expect(a.setJobState('j1', 'paused', 'x', Date.now())).rejects.toMatchObject({ code: 'STORE_FENCED' });
      await expect(a.noteFailedTry('j1', 2)).rejects.toMatchObject({ code: 'STORE_FENCED' });
      const seen = await b.getJob('j1');
      expect(seen).toMatchObject({ state: 'running', succeeded: 1 });
      expect((await b.pendingItems('j1')).map((i) => [i.index, i.failedTries])).toEqual([[1, 0], [2, 0]]);
      expect(await b.recordResult('j1', 1, result())).toBe(true);
      // A fence is never lowered.
      expect(await a.raiseFence(1)).toBe(2);
      epochA = 3; // a later term of the first node: allowed again
      expect(await a.recordResult('j1', 2, result())).toBe(true);
    } finally {
      await a.close();
      await b.close();
      await dropSchema(schema);
    }
  });

  it('a write in flight while the fence is raised either committed before it or is refused', async () => {
    const schema = schemaName();
    const a = await PgJobStore.open({ url: server.url, schema, epoch: () => 1 });
    const b = await PgJobStore.open({ url: server.url, schema, epoch: () => 2 });
    try {
      await a.createJob(job('j2', 40));
      // Forty writes of the old leader racing the new leader's raise.
      const writes = Array.from({ length: 40 }, (_, i) => a.recordResult('j2', i, result()).then(() => 'recorded', (e: StoreError) => e.code));
      const raised = b.raiseFence(2);
      const outcomes = await Promise.all(writes);
      await raised;
      const recorded = outcomes.filter((o) => o === 'recorded').length;
      expect(outcomes.every((o) => o === 'recorded' || o === 'STORE_FENCED')).toBe(true);
      expect((await b.getJob('j2'))!.succeeded).toBe(recorded);
      // After the raise, nothing more from the old epoch.
      await expect(a.recordResult('j2', 0, result())).rejects.toMatchObject({ code: 'STORE_FENCED' });
    } finally {
      await a.close();
      await b.close();
      await dropSchema(schema);
    }
  });

  it('PostgreSQL stopped: operations fail with STORE_UNAVAILABLE in bounded time, the process goes on, and the same store works once it is back', async () => {
    const schema = schemaName();
    const store = await PgJobStore.open({ url: server.url, schema, connectTimeoutMs: 500 });
    try {
      await store.createJob(job('j3'));
      await store.recordResult('j3', 0, result());
      await server.pause();
      const started = Date.now();
      await expect(store.recordResult('j3', 1, result())).rejects.toMatchObject({ code: 'STORE_UNAVAILABLE', message: expect.stringMatching(/PostgreSQL at 127\.0\.0\.1:\d+\/postgres cannot be reached/) });
      await expect(store.getJob('j3')).rejects.toMatchObject({ code: 'STORE_UNAVAILABLE' });
      expect(Date.now() - started).toBeLessThan(5000);
      await server.resume();
      expect(await store.recordResult('j3', 1, result())).toBe(true);
      expect(await store.getJob('j3')).toMatchObject({ succeeded: 2 });
    } finally {
      await store.close();
      await dropSchema(schema);
    }
  }, 60_000);

  it('two nodes opening one schema at once both migrate safely and see each other\'s jobs', async () => {
    const schema = schemaName();
    const [a, b] = await Promise.all([PgJobStore.open({ url: server.url, schema }), PgJobStore.open({ url: server.url, schema })]);
    try {
      await a.createJob(job('j4'));
      expect((await b.getJob('j4'))?.total).toBe(3);
    } finally {
      await a.close();
      await b.close();
      await dropSchema(schema);
    }
  });
});
