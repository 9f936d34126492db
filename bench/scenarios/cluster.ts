import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ClusterView } from '../../src/cluster/index.js';
import type { JobView } from '../../src/jobs/index.js';
import { externalInstance, makeCluster, type TestCluster } from '../../test/cluster/support.js';
import { inferJob, runsPerItem } from '../../test/jobs/support.js';
import { startUp, stopUp, type UpProcess } from '../../test/jobs/up-process.js';
import { etcdAvailable, startEtcd, type EtcdCluster } from '../../test/support/etcd.js';
import { startModelServer, type ModelServer } from '../../test/support/fixture.js';
import { epochNow, isFailure, percentile, runLoad, type LoadRun, type RequestResult } from '../../test/support/load.js';
import { freePorts } from '../../test/support/ports.js';
import { waitUntil } from '../../test/support/wait.js';
import { freshDir, inferRequest, progress } from '../workload.js';
import { median } from './jobs.js';
import { spread } from './rollback.js';

/*
 * Understudy's cluster mode (several `understudy up --node NAME` on one config, etcd, PostgreSQL):
 * the leader SIGKILLed under load, and the data plane's latency with `cluster:` on against off.
 */

export const CLUSTER_RUNS = 5;
export const TTL_MS = 2000;
/** The take-over goal: the TTL and half a second. */
export const TAKEOVER_GOAL_MS = TTL_MS + 500;
/** The leader renews its lease every TTL/3 (src/cluster/leadership.ts). */
export const RENEW_MS = TTL_MS / 3;
/** etcd 3.4 looks for expired leases every 500 ms (lease/lessor.go, runLoop): a lease can outlive its TTL by that much. */
export const ETCD_EXPIRY_SWEEP_MS = 500;
export const NODES = ['n1', 'n2', 'n3'];
/** Open-loop load through each node's gateway during the kill. */
export const RATE = 100;
export const MODEL_LATENCY_MS = 20;
/** How often the bench asks each survivor GET /v1/cluster after the kill. */
export const POLL_MS = 10;
export const JOB_ITEMS = 200;
export const JOB_CONCURRENCY = 2;
export const KILL_AT_DONE = 40;
/** Data-plane latency: requests per batch, one at a time, and the rounds (each runs off and on, in alternating order). */
export const LATENCY_REQUESTS = 2000;
export const LATENCY_ROUNDS = 6;
const LATENCY_WARMUP = 2000;
/** Load before the kill (without a job), and after the take-over. */
const WARM_MS = 1000;
const TAIL_MS = 2000;
const CLIENT_TIMEOUT_MS = 5000;
const TAKEOVER_TIMEOUT_MS = 15_000;
const JOB_TIMEOUT_MS = 30_000;

export interface GatewayLoad {
  node: string;
  sent: number;
  failed: number;
  failures: Record<string, number>;
  /** Requests started after the kill: p99 and the slowest, ms. */
  p99AfterKillMs: number;
  maxAfterKillMs: number;
}

export interface KilledGatewayLoad {
  node: string;
  sent: number;
  /** Requests sent before the kill and not answered by it (their end after the kill). */
  inFlightAtKill: number;
  /** Of those, the ones that failed. */
  failedInFlight: number;
  /** Requests sent to the dead node after the kill: refused (a virtual IP moves them to another node). */
  sentAfterKill: number;
  failedAfterKill: number;
  /** Failed requests sent before the kill and answered (or not) before it: should be 0. */
  failedBeforeKill: number;
  failures: Record<string, number>;
}

export interface JobLoss {
  id: string;
  total: number;
  concurrency: number;
  /** The done count the bench last read before the kill. */
  doneBeforeKill: number;
  /** The new leader's job-resumed figure: items recorded in PostgreSQL when the leader died. */
  doneAtResume: number | null;
  /** Items that had reached a model server 100 ms after the kill (the fixture's --record file). */
  reachedAtKill: number;
  /** Reached but not recorded: in flight on the killed leader. */
  inFlightAtKill: number | null;
  runTwice: number;
  extraRuns: number;
  neverRun: number;
  state: string;
  succeeded: number;
}

export interface TakeoverRun {
  run: number;
  killed: string;
  next: string | null;
  /** SIGKILL of the leader to a survivor answering GET /v1/cluster with acting: true. */
  takeoverMs: number | null;
  /** SIGKILL to etcd deleting the leader key (its lease ran out), on the bench's own watch. */
  toDeleteMs: number | null;
  /** That delete to the new leader's claim (the put on the key), on the same watch. */
  deleteToClaimMs: number | null;
  /** The claim to a survivor saying acting: true (its own step, then the bench's 10 ms poll). */
  claimToActingMs: number | null;
  /** SIGKILL to the new leader's own leader-changed event (its clock). */
  toElectedEventMs: number | null;
  survivors: GatewayLoad[];
  killedGateway: KilledGatewayLoad;
  job: JobLoss | null;
}

export interface LatencyBatch {
  round: number;
  side: 'off' | 'on';
  requests: number;
  failed: number;
  p50Ms: number;
  p99Ms: number;
}

export interface LatencyResult {
  requestsPerBatch: number;
  rounds: number;
  batches: LatencyBatch[];
  /** Medians over the rounds of each side's p50 and p99. */
  off: { p50Ms: number; p99Ms: number };
  on: { p50Ms: number; p99Ms: number };
  /** on − off. */
  deltaP50Ms: number;
  deltaP99Ms: number;
  /** Noise: half the spread (max − min) of the `cluster:` off figure between rounds, i.e. the same config against itself (±). */
  noiseP50Ms: number;
  noiseP99Ms: number;
  /** Rounds in which `cluster:` on was slower than off in the same round (paired): about half when there is no difference. */
  onSlowerP50: number;
  onSlowerP99: number;
}

export interface ClusterResult {
  ttlMs: number;
  nodes: number;
  etcdMembers: number;
  rate: number;
  modelLatencyMs: number;
  runs: TakeoverRun[];
  /** Why the job figure was not measured; null when it was. */
  jobSkipped: string | null;
  latency: LatencyResult;
}

// --- processes left by a crash of the bench --------------------------------------------------

const liveClusters = new Set<TestCluster>();
const liveUps = new Set<UpProcess>();
const liveFixtures = new Set<ModelServer>();

function killClusterNow(): void {
  const procs = [...[...liveClusters].flatMap((c) => [...c.nodes.values()]), ...liveUps].map((up) => up.proc);
  for (const proc of [...procs, ...[...liveFixtures].map((f) => f.proc)]) {
    try {
      proc.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
  for (const c of liveClusters) rmSync(c.dir, { recursive: true, force: true });
}

async function fixture(name: string, latencyMs: number, record?: string): Promise<ModelServer> {
  const server = await startModelServer({ name, latencyMs, ...(record ? { record } : {}) });
  liveFixtures.add(server);
  return server;
}

async function stopFixtures(...servers: ModelServer[]): Promise<void> {
  await Promise.all(servers.map((s) => s.stop().finally(() => liveFixtures.delete(s))));
}

async function stopCluster(c: TestCluster | undefined): Promise<void> {
  if (!c) return;
  try {
    await c.stop();
  } finally {
    liveClusters.delete(c);
  }
}

// --- 1.–3. the leader SIGKILLed --------------------------------------------------------------

type Postgres = { url: string; stop(): Promise<void> };

/** PostgreSQL for the job figure, or why there is none: the module is loaded only here, so the rest runs without it. */
async function maybePostgres(): Promise<{ postgres: Postgres | null; why: string | null }> {
  let mod: { postgresAvailable(): boolean; startPostgres(): Promise<Postgres> };
  try {
    mod = await import('../../test/support/postgres.js');
  } catch (error) {
    return { postgres: null, why: `test/support/postgres.ts could not be loaded (${(error as Error).message})` };
  }
  if (!mod.postgresAvailable()) return { postgres: null, why: 'PostgreSQL is not installed (scripts/cluster-parts.sh installs it)' };
  try {
    return { postgres: await mod.startPostgres(), why: null };
  } catch (error) {
    return { postgres: null, why: `PostgreSQL did not start: ${(error as Error).message.split('\n')[0]}` };
  }
}

function load(url: string, signal: AbortSignal): Promise<LoadRun> {
  return runLoad({
    url: `${url}/v1/infer`,
    method: 'POST',
    body: inferRequest.body,
    headers: inferRequest.headers,
    rate: RATE,
    durationMs: 60_000,
    maxRequests: RATE * 60,
    timeoutMs: CLIENT_TIMEOUT_MS,
    signal,
  });
}

function failuresOf(results: RequestResult[]): Record<string, number> {
  const failures: Record<string, number> = {};
  for (const r of results.filter(isFailure)) {
    const cause = r.error ?? String(r.status);
    failures[cause] = (failures[cause] ?? 0) + 1;
  }
  return failures;
}

function survivorLoad(node: string, run: LoadRun, killAt: number): GatewayLoad {
  const after = run.results.filter((r) => r.start >= killAt).map((r) => r.end - r.start);
  return {
    node,
    sent: run.results.length,
    failed: run.failed,
    failures: failuresOf(run.results),
    p99AfterKillMs: percentile(after, 99),
    maxAfterKillMs: after.length ? Math.max(...after) : NaN,
  };
}

function killedLoad(node: string, run: LoadRun, killAt: number): KilledGatewayLoad {
  const inFlight = run.results.filter((r) => r.start < killAt && r.end >= killAt);
  const after = run.results.filter((r) => r.start >= killAt);
  return {
    node,
    sent: run.results.length,
    inFlightAtKill: inFlight.length,
    failedInFlight: inFlight.filter(isFailure).length,
    sentAfterKill: after.length,
    failedAfterKill: after.filter(isFailure).length,
    failedBeforeKill: run.results.filter((r) => r.end < killAt && isFailure(r)).length,
    failures: failuresOf(run.results),
  };
}

/** Job ids that had reached a model server, from the --record file (`name request-id` per line). */
function reachedItems(record: string, job: string): Set<string> {
  let text = '';
  try {
    text = readFileSync(record, 'utf8');
  } catch {
    return new Set();
  }
  return new Set(
    text
      .split('\n')
      .map((line) => line.split(' ')[1] ?? '')
      .filter((id) => id.startsWith(`${job}.`)),
  );
}

interface LeaderKeyEvent {
  type: 'put' | 'delete';
  at: number;
  node: string | null;
}

/** The bench's own watch on PREFIX/leader: when etcd deleted it, and when the next leader claimed it. */
async function watchLeaderKey(etcd: EtcdCluster, key: string): Promise<{ events: LeaderKeyEvent[]; close(): Promise<void> }> {
  const { Etcd3 } = await import('etcd3');
  const client = new Etcd3({ hosts: etcd.endpoints });
  const events: LeaderKeyEvent[] = [];
  try {
    const watcher = await client.watch().key(key).create();
    watcher.on('delete', () => events.push({ type: 'delete', at: epochNow(), node: null }));
    watcher.on('put', (kv) => {
      let node: string | null = null;
      try {
        node = String((JSON.parse(kv.value.toString()) as { node?: string }).node ?? null);
      } catch {
        // not ours
      }
      events.push({ type: 'put', at: epochNow(), node });
    });
    return {
      events,
      close: async () => {
        await watcher.cancel().catch(() => undefined);
        client.close();
      },
    };
  } catch (error) {
    client.close();
    throw error;
  }
}

/** Polls every survivor's GET /v1/cluster every POLL_MS until one says it acts; the epoch ms of that answer. */
async function pollTakeover(c: TestCluster, survivors: string[], killed: string): Promise<{ node: string; at: number } | null> {
  const deadline = epochNow() + TAKEOVER_TIMEOUT_MS;
  while (epochNow() < deadline) {
    const started = performance.now();
    const views = await Promise.all(survivors.map((node) => c.view(node).then((view) => [view, epochNow()] as const, () => null)));
    const acting = views.find((v): v is readonly [ClusterView, number] => v !== null && v[0].acting && v[0].node !== killed);
    if (acting) return { node: acting[0].node, at: acting[1] };
    await sleep(Math.max(0, POLL_MS - (performance.now() - started)));
  }
  return null;
}

async function takeoverRun(
  root: string,
  etcd: EtcdCluster,
  postgres: Postgres | null,
  run: number,
): Promise<TakeoverRun> {
  const dir = await freshDir(root, `cluster-${run}`);
  const record = path.join(dir, 'requests.log');
  const [primary, hot] = await Promise.all([fixture('primary', MODEL_LATENCY_MS, record), fixture('hot', MODEL_LATENCY_MS, record)]);
  let c: TestCluster | undefined;
  let watch: Awaited<ReturnType<typeof watchLeaderKey>> | undefined;
  const stopLoad = new AbortController();
  try {
    c = await makeCluster({
      etcd: etcd.endpoints,
      ...(postgres ? { postgres } : {}),
      ttl: `${TTL_MS / 1000}s`,
      instances: `${externalInstance('primary', 'primary', primary.url)}${externalInstance('hot', 'hot', hot.url)}`,
    });
    liveClusters.add(c);
    const cluster = c;
    await Promise.all(NODES.map((node) => cluster.start(node)));
    const leader = await cluster.leader({ timeoutMs: 20_000 });
    // Settled: every node sees the same leader, all three members and the leader's routing.
    await waitUntil(
      async () => {
        const views = await Promise.all(NODES.map((node) => cluster.view(node)));
        return views.every((v) => v.leader === leader && v.members.length === NODES.length && v.routing.infer?.active === 'primary');
      },
      { timeoutMs: 15_000, intervalMs: 50, what: 'three nodes agreeing on the leader and its routing' },
    );
    const survivors = NODES.filter((n) => n !== leader);
    watch = await watchLeaderKey(etcd, `${cluster.prefix}leader`);

    const loads = new Map(NODES.map((node) => [node, load(cluster.gateways.get(node)!, stopLoad.signal)]));
    await sleep(WARM_MS);
    const up = cluster.nodes.get(leader)!;
    let job: JobView | undefined;
    let doneBeforeKill = 0;
    if (postgres) {
      job = (await up.api<{ job: JobView }>('POST', '/v1/jobs', inferJob(JOB_ITEMS, { concurrency: JOB_CONCURRENCY }))).job;
      await waitUntil(
        async () => {
          doneBeforeKill = (await up.job(job!.id)).done;
          return doneBeforeKill >= KILL_AT_DONE;
        },
        { timeoutMs: JOB_TIMEOUT_MS, intervalMs: 10, what: `${KILL_AT_DONE} items of the job done` },
      );
    }

    const killWall = Date.now();
    const killAt = epochNow();
    const killed = cluster.kill(leader);
    const taken = pollTakeover(cluster, survivors, leader);
    // A request the killed leader had already written may land a moment later: let it, then read the record.
    const reached = job ? sleep(100).then(() => reachedItems(record, job!.id)) : Promise.resolve(new Set<string>());
    await killed;
    const takeover = await taken;
    await sleep(TAIL_MS);
    stopLoad.abort();
    const results = new Map<string, LoadRun>();
    for (const [node, pending] of loads) results.set(node, await pending);

    const next = takeover?.node ?? null;
    const deleted = watch.events.find((e) => e.type === 'delete' && e.at >= killAt);
    const claimed = deleted ? watch.events.find((e) => e.type === 'put' && e.at >= deleted.at) : undefined;
    let toElectedEventMs: number | null = null;
    let jobLoss: JobLoss | null = null;
    if (next) {
      const newLeader = cluster.nodes.get(next)!;
      const { events } = await newLeader.api<{ events: { type: string; time: number; leader: string | null; self: boolean }[] }>('GET', '/v1/events?type=leader-changed');
      const elected = events.find((e) => e.self && e.leader === next && e.time >= killWall);
      toElectedEventMs = elected ? elected.time - killWall : null;
      if (job) {
        let view: JobView | undefined;
        await waitUntil(
          async () => {
            view = await newLeader.job(job!.id);
            return ['succeeded', 'failed', 'cancelled'].includes(view.state);
          },
          { timeoutMs: JOB_TIMEOUT_MS, intervalMs: 50, what: `${job.id} to finish on ${next}` },
        );
        const resumed = (await newLeader.api<{ events: { type: string; job?: string; done?: number }[] }>('GET', '/v1/events?type=job-resumed')).events.find(
          (e) => e.job === job!.id,
        );
        const doneAtResume = resumed?.done ?? null;
        const atKill = await reached;
        const runs = [...runsPerItem(record, job.id).values()];
        jobLoss = {
          id: job.id,
          total: JOB_ITEMS,
          concurrency: JOB_CONCURRENCY,
          doneBeforeKill,
          doneAtResume,
          reachedAtKill: atKill.size,
          inFlightAtKill: doneAtResume === null ? null : atKill.size - doneAtResume,
          runTwice: runs.filter((n) => n > 1).length,
          extraRuns: runs.reduce((sum, n) => sum + n - 1, 0),
          neverRun: JOB_ITEMS - runs.length,
          state: view!.state,
          succeeded: view!.succeeded,
        };
      }
    }
    return {
      run,
      killed: leader,
      next,
      takeoverMs: takeover ? takeover.at - killAt : null,
      toDeleteMs: deleted ? deleted.at - killAt : null,
      deleteToClaimMs: deleted && claimed ? claimed.at - deleted.at : null,
      claimToActingMs: claimed && takeover ? takeover.at - claimed.at : null,
      toElectedEventMs,
      survivors: survivors.map((node) => survivorLoad(node, results.get(node)!, killAt)),
      killedGateway: killedLoad(leader, results.get(leader)!, killAt),
      job: jobLoss,
    };
  } finally {
    stopLoad.abort();
    await watch?.close();
    await stopCluster(c);
    await stopFixtures(primary, hot);
  }
}

// --- 4. data-plane latency, cluster on against off -------------------------------------------

/** The same single node as makeCluster writes it, without `cluster:`. */
async function plainNode(root: string, instance: string): Promise<{ up: UpProcess; url: string }> {
  const dir = await freshDir(root, 'cluster-off');
  const [gateway] = (await freePorts(1)) as [number];
  const configFile = path.join(dir, 'understudy.yaml');
  writeFileSync(
    configFile,
    `stateDir: ${dir}
log: { level: warn }
jobs: { retryDelay: 100ms, concurrency: 4 }
admin: { listen: "127.0.0.1:0" }
gateway: { listen: "127.0.0.1:${gateway}" }
services:
  infer:
    route: { pathPrefix: / }
    instances:${instance}
`,
  );
  const up = await startUp(configFile, dir);
  liveUps.add(up);
  return { up, url: `http://127.0.0.1:${gateway}` };
}

async function batch(url: string, requests: number): Promise<{ requests: number; failed: number; p50Ms: number; p99Ms: number }> {
  const run = await runLoad({
    url: `${url}/v1/infer`,
    method: 'POST',
    body: inferRequest.body,
    headers: inferRequest.headers,
    concurrency: 1,
    maxRequests: requests,
    durationMs: 120_000,
    timeoutMs: 2000,
  });
  const s = run.summary();
  return { requests: s.total, failed: s.failed, p50Ms: s.p50, p99Ms: s.p99 };
}

async function measureLatency(root: string, etcd: EtcdCluster): Promise<LatencyResult> {
  const fast = await fixture('fast', 0);
  let c: TestCluster | undefined;
  let off: UpProcess | undefined;
  try {
    const instance = externalInstance('fast', 'primary', fast.url);
    c = await makeCluster({ etcd: etcd.endpoints, nodes: ['n1'], ttl: `${TTL_MS / 1000}s`, instances: instance });
    liveClusters.add(c);
    const cluster = c;
    await cluster.start('n1');
    await cluster.leader({ timeoutMs: 20_000 });
    const plain = await plainNode(root, instance);
    off = plain.up;
    const urls = { on: cluster.gateways.get('n1')!, off: plain.url };
    // Both serving the fast instance before the first batch.
    for (const url of Object.values(urls)) {
      await waitUntil(
        async () => (await batch(url, 1)).failed === 0,
        { timeoutMs: 15_000, intervalMs: 100, what: `${url} to serve` },
      );
    }
    progress(`cluster: data-plane latency warm-up (${LATENCY_WARMUP} requests each side)`);
    await batch(urls.off, LATENCY_WARMUP);
    await batch(urls.on, LATENCY_WARMUP);

    const batches: LatencyBatch[] = [];
    for (let round = 1; round <= LATENCY_ROUNDS; round++) {
      // Alternate which side goes first, so drift on the machine is shared out.
      const order: LatencyBatch['side'][] = round % 2 === 1 ? ['off', 'on'] : ['on', 'off'];
      for (const side of order) {
        const b: LatencyBatch = { round, side, ...(await batch(urls[side], LATENCY_REQUESTS)) };
        batches.push(b);
        progress(`  round ${round}, cluster ${side}: p50 ${b.p50Ms.toFixed(3)} ms, p99 ${b.p99Ms.toFixed(3)} ms, ${b.failed} failed`);
      }
    }
    const of = (side: LatencyBatch['side'], key: 'p50Ms' | 'p99Ms') => batches.filter((b) => b.side === side).map((b) => b[key]);
    const range = (values: number[]) => Math.max(...values) - Math.min(...values);
    const slower = (key: 'p50Ms' | 'p99Ms') =>
      batches.filter((b) => b.side === 'on' && b[key] > batches.find((o) => o.side === 'off' && o.round === b.round)![key]).length;
    const sides = {
      off: { p50Ms: median(of('off', 'p50Ms')), p99Ms: median(of('off', 'p99Ms')) },
      on: { p50Ms: median(of('on', 'p50Ms')), p99Ms: median(of('on', 'p99Ms')) },
    };
    return {
      requestsPerBatch: LATENCY_REQUESTS,
      rounds: LATENCY_ROUNDS,
      batches,
      ...sides,
      deltaP50Ms: sides.on.p50Ms - sides.off.p50Ms,
      deltaP99Ms: sides.on.p99Ms - sides.off.p99Ms,
      noiseP50Ms: range(of('off', 'p50Ms')) / 2,
      noiseP99Ms: range(of('off', 'p99Ms')) / 2,
      onSlowerP50: slower('p50Ms'),
      onSlowerP99: slower('p99Ms'),
    };
  } finally {
    if (off) await stopUp(off).finally(() => liveUps.delete(off!));
    await stopCluster(c);
    await stopFixtures(fast);
  }
}

// --- the scenario ------------------------------------------------------------------------------

const whole = (v: number | null) => (v === null || !Number.isFinite(v) ? 'n/a' : `${Math.round(v)} ms`);

/**
 * The cluster: CLUSTER_RUNS times, three nodes on a three-member etcd (and PostgreSQL for the
 * job), the leader SIGKILLed under load and mid-job; then the data plane's latency with
 * `cluster:` on and off. Null, with a note in `skipped`, when etcd is not installed.
 */
export async function runCluster(root: string, skipped: string[], runs = CLUSTER_RUNS): Promise<ClusterResult | null> {
  if (!etcdAvailable()) {
    skipped.push('cluster: etcd is not installed (scripts/cluster-parts.sh installs it)');
    progress('cluster: skipped, etcd is not installed');
    return null;
  }
  process.on('exit', killClusterNow);
  const etcd = await startEtcd({ name: 'bench-etcd' });
  const { postgres, why } = await maybePostgres();
  if (why) {
    skipped.push(`cluster: job items run twice not measured: ${why}`);
    progress(`cluster: the job figure is skipped: ${why}`);
  }
  try {
    const results: TakeoverRun[] = [];
    for (let run = 1; run <= runs; run++) {
      progress(`cluster: run ${run}/${runs}: the leader SIGKILLed under ${RATE} req/s per node${postgres ? `, at ${KILL_AT_DONE} of ${JOB_ITEMS} job items` : ''} (TTL ${TTL_MS} ms)`);
      const r = await takeoverRun(root, etcd, postgres, run);
      results.push(r);
      const k = r.killedGateway;
      progress(
        `  ${r.killed} killed, ${r.next ?? 'NO LEADER'} acting after ${whole(r.takeoverMs)}: etcd deleted the key at ${whole(r.toDeleteMs)}, ` +
          `claim +${whole(r.deleteToClaimMs)}, seen acting +${whole(r.claimToActingMs)} (its leader-changed event at ${whole(r.toElectedEventMs)})`,
      );
      progress(
        `  failed through survivors: ${r.survivors.map((s) => `${s.node} ${s.failed}/${s.sent}`).join(', ')}; through ${k.node}: ${k.failedInFlight} of ${k.inFlightAtKill} in flight, ` +
          `${k.failedAfterKill}/${k.sentAfterKill} sent after the kill` +
          (r.job ? `; job: ${r.job.runTwice} items run twice, ${r.job.inFlightAtKill ?? 'n/a'} in flight (${r.job.state})` : ''),
      );
    }
    progress('cluster: data-plane latency, one node with `cluster:` on and off');
    const latency = await measureLatency(root, etcd);
    progress(`  p50 ${latency.off.p50Ms.toFixed(3)} → ${latency.on.p50Ms.toFixed(3)} ms, p99 ${latency.off.p99Ms.toFixed(3)} → ${latency.on.p99Ms.toFixed(3)} ms (off → on)`);
    return {
      ttlMs: TTL_MS,
      nodes: NODES.length,
      etcdMembers: etcd.members.length,
      rate: RATE,
      modelLatencyMs: MODEL_LATENCY_MS,
      runs: results,
      jobSkipped: why,
      latency,
    };
  } finally {
    await postgres?.stop().catch(() => undefined);
    await etcd.stop().catch(() => undefined);
    killClusterNow();
    process.off('exit', killClusterNow);
  }
}

// --- the report --------------------------------------------------------------------------------

function fmt(value: number | null): string {
  if (value === null || Number.isNaN(value)) return 'n/a';
  if (Math.abs(value) >= 1000) return `${(value / 1000).toFixed(2)} s`;
  return `${value.toFixed(Math.abs(value) < 10 ? 2 : 0)} ms`;
}

const fine = (v: number) => `${v >= 0 ? '+' : ''}${v.toFixed(3)} ms`;

function table(header: string[], rows: string[][]): string {
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n');
}

function range(values: (number | null)[]): string {
  const s = spread(values);
  return `${fmt(s.min)} / ${fmt(s.median)} / ${fmt(s.max)}`;
}

const goal = (met: boolean) => (met ? 'met' : 'missed');

/** The Markdown section for the report (the other scenarios' sections live in report.ts). */
export function clusterSection(r: ClusterResult): string {
  const runs = r.runs;
  const takeovers = runs.map((x) => x.takeoverMs);
  const withinGoal = runs.filter((x) => x.takeoverMs !== null && x.takeoverMs <= TAKEOVER_GOAL_MS).length;
  const survivorFailed = runs.reduce((sum, x) => sum + x.survivors.reduce((s, g) => s + g.failed, 0), 0);
  const survivorSent = runs.reduce((sum, x) => sum + x.survivors.reduce((s, g) => s + g.sent, 0), 0);
  const killedInFlight = runs.reduce((sum, x) => sum + x.killedGateway.inFlightAtKill, 0);
  const killedFailedInFlight = runs.reduce((sum, x) => sum + x.killedGateway.failedInFlight, 0);
  const killedBefore = runs.reduce((sum, x) => sum + x.killedGateway.failedBeforeKill, 0);
  const jobs = runs.flatMap((x) => (x.job ? [x.job] : []));
  const jobWithin = jobs.filter((j) => j.inFlightAtKill !== null && j.runTwice <= j.inFlightAtKill).length;
  const overConcurrency = jobs.filter((j) => j.runTwice > j.concurrency).length;
  const l = r.latency;
  const latencyMet = Math.abs(l.deltaP50Ms) <= l.noiseP50Ms && Math.abs(l.deltaP99Ms) <= l.noiseP99Ms;
  const lo = TTL_MS - RENEW_MS;

  const summary: string[][] = [
    ['SIGKILL of the leader → a survivor says `acting: true`', range(takeovers), `≤ ${fmt(TAKEOVER_GOAL_MS)}`, `${goal(withinGoal === runs.length)} (${withinGoal} of ${runs.length})`],
    ['  SIGKILL → etcd deletes the leader key (lease ran out)', range(runs.map((x) => x.toDeleteMs)), `${fmt(lo)}–${fmt(TTL_MS)}, + up to ${ETCD_EXPIRY_SWEEP_MS} ms`, ''],
    ['  delete → the new leader claims the key', range(runs.map((x) => x.deleteToClaimMs)), '', ''],
    ['  claim → seen acting on GET /v1/cluster', range(runs.map((x) => x.claimToActingMs)), '', ''],
    ["  SIGKILL → the new leader's `leader-changed` event", range(runs.map((x) => x.toElectedEventMs)), '', ''],
    ['Failed requests through the surviving nodes', `${survivorFailed} / ${survivorSent}`, '0', goal(survivorFailed === 0)],
    [
      "Failed requests through the killed node's gateway, of those in flight at the kill",
      `${killedFailedInFlight} of ${killedInFlight} in flight${killedBefore > 0 ? ` (${killedBefore} more before the kill)` : ''}`,
      'only those in flight',
      goal(killedFailedInFlight <= killedInFlight && killedBefore === 0),
    ],
  ];
  if (jobs.length > 0) {
    summary.push([
      `Job items run twice per leader loss (${JOB_ITEMS} items, concurrency ${JOB_CONCURRENCY}, kill at ${KILL_AT_DONE} done)`,
      `${jobs.map((j) => j.runTwice).join(', ')} (in flight: ${jobs.map((j) => j.inFlightAtKill ?? 'n/a').join(', ')})`,
      '≤ in flight',
      `${goal(jobWithin === jobs.length)} (${jobWithin} of ${jobs.length})${overConcurrency > 0 ? `; more than the concurrency (${JOB_CONCURRENCY}) in ${overConcurrency}` : ''}`,
    ]);
  } else {
    summary.push(['Job items run twice per leader loss', 'not measured', '', r.jobSkipped ?? '']);
  }
  summary.push(
    ['Data plane p50, `cluster:` off → on', `${fmt(l.off.p50Ms)} → ${fmt(l.on.p50Ms)} (${fine(l.deltaP50Ms)})`, `within noise (± ${l.noiseP50Ms.toFixed(3)} ms)`, `${goal(Math.abs(l.deltaP50Ms) <= l.noiseP50Ms)}; on slower in ${l.onSlowerP50} of ${l.rounds} rounds`],
    ['Data plane p99, `cluster:` off → on', `${fmt(l.off.p99Ms)} → ${fmt(l.on.p99Ms)} (${fine(l.deltaP99Ms)})`, `within noise (± ${l.noiseP99Ms.toFixed(3)} ms)`, `${goal(Math.abs(l.deltaP99Ms) <= l.noiseP99Ms)}; on slower in ${l.onSlowerP99} of ${l.rounds} rounds`],
  );

  const runRows = runs.map((x) => {
    const k = x.killedGateway;
    return [
      String(x.run),
      `${x.killed} → ${x.next ?? 'none'}`,
      whole(x.takeoverMs),
      whole(x.toDeleteMs),
      whole(x.deleteToClaimMs),
      whole(x.claimToActingMs),
      whole(x.toElectedEventMs),
      x.survivors.map((s) => `${s.failed}/${s.sent}`).join(', '),
      x.survivors.map((s) => whole(s.maxAfterKillMs)).join(', '),
      `${k.failedInFlight} of ${k.inFlightAtKill}`,
      `${k.failedAfterKill}/${k.sentAfterKill}`,
      x.job ? `${x.job.runTwice} (${x.job.inFlightAtKill ?? 'n/a'} in flight; ${x.job.doneAtResume ?? 'n/a'} done; ${x.job.state})` : '–',
    ];
  });
  const latencyRows = l.batches.map((b) => [String(b.round), b.side, String(b.requests), String(b.failed), `${b.p50Ms.toFixed(3)} ms`, `${b.p99Ms.toFixed(3)} ms`]);

  return `## Cluster: losing the leader node (Understudy)

Three \`understudy up --node NAME\` processes on one config, a three-member etcd (on this machine) and
${jobs.length > 0 ? 'PostgreSQL for the jobs' : 'no PostgreSQL'}, \`cluster.ttl: ${TTL_MS / 1000}s\`; two fixture model servers (${r.modelLatencyMs} ms) reached
by URL from every node. ${runs.length} runs, each on a fresh cluster: ${r.rate} req/s of \`POST /v1/infer\` open loop through
each node's gateway${jobs.length > 0 ? `, a ${JOB_ITEMS}-item job at concurrency ${JOB_CONCURRENCY} on the leader` : ''}, and the leader
SIGKILLed${jobs.length > 0 ? ` once ${KILL_AT_DONE} items are done` : ' after 1 s'}. The take-over ends when a survivor answers
\`GET /v1/cluster\` with \`acting: true\` (asked every ${POLL_MS} ms); the bench's own etcd watch on the leader key splits it.
The leader renews its lease every TTL/3 (${Math.round(RENEW_MS)} ms), so the kill falls anywhere in that period and the lease ends
${fmt(lo)}–${fmt(TTL_MS)} after it; etcd then deletes the key at its next sweep for expired leases (every ${ETCD_EXPIRY_SWEEP_MS} ms), and the
survivors, woken by their watch, claim it at once. Cells are min / median / max. Client timeout ${CLIENT_TIMEOUT_MS / 1000} s.

${table(['Figure', 'Result', 'Goal', ''], summary)}

Each run ("max after" is the slowest request through each survivor sent after the kill; the killed node's own
gateway fails the requests in flight at the kill and refuses the ones sent after it, which the virtual IP would move).
A job item in flight at the kill is one that had reached a model server (the fixture's \`--record\` file, read 100 ms after
the kill) but was not recorded in PostgreSQL (the new leader's \`job-resumed\` count): besides the ${JOB_CONCURRENCY} on a model server, it
counts answers being committed, which no longer hold a slot (src/jobs/runner.ts, \`settle\`), so it can reach twice the concurrency:

${table(
  ['Run', 'Killed → new', 'Take-over', 'Kill → delete', 'Delete → claim', 'Claim → seen', 'Elected event', 'Failed via survivors', 'Max after', 'Killed gateway: failed of in flight', 'Sent after kill: failed', 'Job: run twice'],
  runRows,
)}

Data-plane latency: one node with and without \`cluster:\` (the same config otherwise; the one-node cluster leads
itself on the same etcd), ${l.requestsPerBatch} requests one at a time through its gateway to a model server that answers at once,
in ${l.rounds} rounds that alternate which side goes first, after ${LATENCY_WARMUP} requests each to warm up. Figures are the median
over rounds; noise is ± half the spread (max − min) of the \`cluster:\` off figure between rounds (the same config against
itself). "On slower in k rounds" pairs the two sides of each round: about half of them when the request path does
not wait on etcd, all of them when it does. Goal: ${goal(latencyMet)}.

${table(['Round', 'cluster', 'Requests', 'Failed', 'p50', 'p99'], latencyRows)}`;
}
