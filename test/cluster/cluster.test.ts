import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { JobView } from '../../src/jobs/index.js';
import { inferJob, runsPerItem } from '../jobs/support.js';
import { etcdAvailable, startEtcd, type EtcdCluster } from '../support/etcd.js';
import { startModelServer, stopAll, type ModelServer } from '../support/fixture.js';
import { runLoad } from '../support/load.js';
import { postgresAvailable, startPostgres } from '../support/postgres.js';
import { waitUntil } from '../support/wait.js';
import { externalInstance, makeCluster, type TestCluster } from './support.js';

/*
 * Three Understudy nodes as a user runs them (`understudy up --node NAME`, real
 * processes), coordinated by a real three-member etcd, jobs in a real PostgreSQL.
 */

const TTL_MS = 2000;

let etcd: EtcdCluster;
let postgres: Awaited<ReturnType<typeof startPostgres>>;
let primary: ModelServer;
let hot: ModelServer;
let record: string;
let cluster: TestCluster | undefined;

describe.skipIf(!etcdAvailable() || !postgresAvailable())('a cluster of three nodes', () => {
  beforeAll(async () => {
    [etcd, postgres] = await Promise.all([startEtcd(), startPostgres()]);
    record = `${etcd.members[0]!.dataDir}/../requests.log`;
    [primary, hot] = await Promise.all([
      startModelServer({ name: 'primary', latencyMs: 20, record }),
      startModelServer({ name: 'hot', latencyMs: 20, record }),
    ]);
  }, 60_000);

  afterAll(async () => {
    await stopAll();
    await etcd?.stop();
    await postgres?.stop();
  });

  afterEach(async () => {
    await cluster?.stop();
    cluster = undefined;
  });

  async function threeNodes(): Promise<TestCluster> {
    cluster = await makeCluster({
      etcd: etcd.endpoints,
      postgres,
      instances: `${externalInstance('primary', 'primary', primary.url)}${externalInstance('hot', 'hot', hot.url)}`,
    });
    await Promise.all(['n1', 'n2', 'n3'].map((node) => cluster!.start(node)));
    return cluster;
  }

  it('SIGKILL of the leader under load: a new leader within the TTL, no failed request through a surviving node, the job finishes with one result per item', async () => {
    const c = await threeNodes();
    const leader = await c.leader();
    const survivor = ['n1', 'n2', 'n3'].find((n) => n !== leader)!;

    const { job } = await c.nodes.get(leader)!.api<{ job: JobView }>('POST', '/v1/jobs', inferJob(200, { concurrency: 2 }));
    const load = runLoad({ url: `${c.gateways.get(survivor)}/v1/infer`, method: 'POST', body: '{}', headers: { 'content-type': 'application/json' }, rate: 100, durationMs: 6000, maxRequests: 600, timeoutMs: 10_000 });
    await waitUntil(async () => (await c.nodes.get(leader)!.job(job.id)).done >= 40, { timeoutMs: 20_000, what: 'a fifth of the job' });

    const killedAt = performance.now();
    await c.kill(leader);
    const next = await c.leader({ besides: leader, timeoutMs: 10_000 });
    const takeOverMs = performance.now() - killedAt;
    console.log(`new leader ${next} ${Math.round(takeOverMs)} ms after the SIGKILL of ${leader} (TTL ${TTL_MS} ms)`);
    // Generous for a loaded CI machine; `npm run bench -- --scenario cluster` measures it.
    expect(takeOverMs).toBeLessThan(TTL_MS + 3000);

    const run = await load;
    expect(run.failed, JSON.stringify(run.summary().failures)).toBe(0);
    expect(run.ok).toBeGreaterThan(300);

    const newLeader = c.nodes.get(next)!;
    await waitUntil(async () => (await newLeader.job(job.id)).state === 'succeeded', { timeoutMs: 30_000, what: `${job.id} to finish on ${next}` });
    const lines = (await newLeader.text(`/v1/jobs/${job.id}/results`)).trim().split('\n').map((line) => JSON.parse(line) as { index: number; state: string });
    expect(lines.map((line) => line.index)).toEqual(Array.from({ length: 200 }, (_, i) => i));
    expect(lines.every((line) => line.state === 'succeeded')).toBe(true);
    // Items run twice: at most those in flight on the killed leader. With concurrency 2 that is two at
    // the model servers plus any whose answers were being committed (the runner frees a slot at the answer).
    const twice = [...runsPerItem(record, job.id).values()].filter((runs) => runs > 1).length;
    expect(twice).toBeLessThanOrEqual(4);
  }, 90_000);

  it('a leader paused with SIGSTOP for 2 × TTL writes nothing after it wakes, and no second leader ever acts', async () => {
    const c = await threeNodes();
    const leader = await c.leader();
    const up = c.nodes.get(leader)!;
    const { job } = await up.api<{ job: JobView }>('POST', '/v1/jobs', inferJob(400, { concurrency: 2 }));
    await waitUntil(async () => (await up.job(job.id)).done >= 20, { timeoutMs: 20_000, what: 'the job under way' });

    up.proc.kill('SIGSTOP');
    const next = await c.leader({ besides: leader, timeoutMs: 10_000 });
    // Still paused: the new leader is at work. Let the pause last 2 × TTL in all.
    await new Promise((resolve) => setTimeout(resolve, 2 * TTL_MS));
    const client = new pg.Client({ connectionString: postgres.url });
    await client.connect();
    try {
      const woke = Date.now();
      up.proc.kill('SIGCONT');
      // The woken node sees it lost, and says so, without acting in between.
      await waitUntil(async () => !(await c.view(leader)).acting && (await c.view(leader)).leader === next, { timeoutMs: 10_000, what: `${leader} to see ${next} lead` });
      const views = await Promise.all([...c.nodes.keys()].map((node) => c.view(node)));
      expect(views.filter((view) => view.acting).map((view) => view.node)).toEqual([next]);
      // etcd: every routing key was last written by the new leader's epoch or before the pause.
      const routing = views.find((view) => view.node === next)!.routing;
      for (const entry of Object.values(routing)) expect(entry.leader === next || entry.at < woke).toBe(true);
      // PostgreSQL: the fence names the new leader's epoch, and the job goes on there.
      const schema = (await client.query<{ nspname: string }>("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'c\\_%' ORDER BY oid DESC LIMIT 1")).rows[0]!.nspname;
      const fence = (await client.query<{ epoch: string }>(`SELECT epoch FROM ${schema}.fence WHERE id = 1`)).rows[0]!;
      expect(Number(fence.epoch)).toBe(views.find((view) => view.node === next)!.epoch);
      await waitUntil(async () => (await c.nodes.get(next)!.job(job.id)).state === 'succeeded', { timeoutMs: 30_000, what: `${job.id} to finish on ${next}` });
      const twice = [...runsPerItem(record, job.id).values()].filter((runs) => runs > 1).length;
      expect(twice).toBeLessThanOrEqual(4); // in flight: see above
    } finally {
      await client.end();
    }
  }, 90_000);

  it('PostgreSQL stopped mid-job: the job pauses with the reason, traffic is served, and the job goes on by itself once it is back', async () => {
    const c = await threeNodes();
    const leader = await c.leader();
    const up = c.nodes.get(leader)!;
    const { job } = await up.api<{ job: JobView }>('POST', '/v1/jobs', inferJob(150, { concurrency: 2 }));
    await waitUntil(async () => (await up.job(job.id)).done >= 20, { timeoutMs: 20_000, what: 'the job under way' });

    await postgres.pause();
    try {
      const load = runLoad({ url: `${c.gateways.get(leader)}/v1/infer`, method: 'POST', body: '{}', headers: { 'content-type': 'application/json' }, rate: 50, durationMs: 2000, maxRequests: 100, timeoutMs: 10_000 });
      await waitUntil(async () => (await up.job(job.id)).state === 'paused', { timeoutMs: 15_000, what: `${job.id} to pause` });
      expect((await up.job(job.id)).reason).toMatch(/the job store cannot be reached: .*PostgreSQL at 127\.0\.0\.1:\d+\/postgres cannot be reached.*goes on by itself/);
      const run = await load;
      expect(run.failed, JSON.stringify(run.summary().failures)).toBe(0);
    } finally {
      await postgres.resume();
    }
    await waitUntil(async () => (await up.job(job.id)).state === 'succeeded', { timeoutMs: 30_000, what: `${job.id} to go on and finish` });
    const lines = (await up.text(`/v1/jobs/${job.id}/results`)).trim().split('\n').map((line) => JSON.parse(line) as { index: number });
    expect(lines.map((line) => line.index)).toEqual(Array.from({ length: 150 }, (_, i) => i));
  }, 90_000);
});
