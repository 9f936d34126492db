import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { stringify } from 'yaml';
import { MODEL_SERVER_PATH } from '../../test/support/fixture.js';
import { freePorts } from '../../test/support/ports.js';
import { waitForExit } from '../../test/support/process.js';
import { waitUntil } from '../../test/support/wait.js';
import { spawnService, type Service } from '../services.js';
import { freshDir, progress } from '../workload.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const CLI = path.join(REPO, 'dist/cli/main.js');
const TOKEN = 'bench-jobs-token';

/** A model doing real work per item. */
export const JOB_LATENCY_MS = 50;
export const JOB_ITEMS = 400;
export const JOB_CONCURRENCY = 8;
export const THROUGHPUT_RUNS = 3;
export const RESTART_RUNS = 3;
/** Items of the warm-up, each side, before the throughput runs. */
const WARMUP_ITEMS = 200;
/** The kill comes once this many items are done (of JOB_ITEMS): mid-job. */
const KILL_AT_DONE = 120;
/** The done count is polled this often after a restart. */
const DONE_POLL_MS = 10;
/** The --record file is read this often after a restart. */
const RECORD_POLL_MS = 2;
const JOB_TIMEOUT_MS = 30_000;

export interface ThroughputRun {
  side: 'direct' | 'understudy';
  round: number;
  items: number;
  /** Submit (first request, direct) to the job's end (last answer, direct), as the client sees it. */
  ms: number;
  itemsPerSecond: number;
  /** Understudy only: the job's own finishedAt - createdAt. */
  serverMs: number | null;
  failed: number;
}

export interface RestartRun {
  run: number;
  /** Items the store had recorded when Understudy was SIGKILLed (from the job-resumed event). */
  doneAtKill: number;
  /** From the new `understudy up` process's spawn to the first resumed item reaching a model server (the --record file). */
  toFirstDispatchMs: number | null;
  /** From the spawn to the done count rising (admin API, polled every 10 ms). */
  toFirstRecordedMs: number | null;
  /** The model server that took the first resumed item. */
  servedBy: string | null;
  /** That model server's own start: its process start to its model loaded (/__stats startedAt to readyAt). */
  modelServerStartMs: number | null;
  /** From Understudy's spawn to that model server's process start: Understudy's own start, the orphan stopped. */
  toModelServerSpawnMs: number | null;
  /** toFirstDispatchMs less modelServerStartMs: what the restart of Understudy itself costs. */
  addedMs: number | null;
  /** From the spawn to the new Understudy's first `orphan-stopped` event: its own start, up to stopping what the killed one left. */
  toOrphanStopMs: number | null;
  /** From the spawn to the `job-resumed` event. */
  toResumedMs: number | null;
  /** From the spawn to the `instance-state ... ready` event of the model server that took the first resumed item. */
  toServerReadyMs: number | null;
  succeeded: number;
  total: number;
}

export interface FailureRun {
  kind: 'understudy-sigkill' | 'primary-sigkill';
  run: number;
  /** Items that had reached the killed side's model server and had no recorded result from it. */
  inFlightAtKill: number;
  /** Items that reached a model server more than once. */
  runTwice: number;
  /** Runs beyond the first, over all items. */
  extraRuns: number;
  /** Items that never reached a model server (should be 0). */
  neverRun: number;
  succeeded: number;
  total: number;
}

export interface JobsResult {
  items: number;
  latencyMs: number;
  concurrency: number;
  throughput: {
    runs: ThroughputRun[];
    directMedian: number;
    understudyMedian: number;
    /** understudyMedian / directMedian. */
    ratio: number;
  };
  /** A fixture model server started alone: spawn to /health answering 200 (polled every 5 ms). */
  modelServerAloneMs: number[];
  restarts: RestartRun[];
  failures: FailureRun[];
}

export function median(values: number[]): number {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** Epoch ms with sub-millisecond precision, comparable with other processes' Date.now(). */
const epoch = () => performance.timeOrigin + performance.now();

// --- processes --------------------------------------------------------------------------

/** Model servers Understudy started (their pids, from /v1/status): killed at the end if anything left them running. */
const fixturePids = new Set<number>();

function killFixturesNow(): void {
  for (const pid of fixturePids) {
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  fixturePids.clear();
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

interface Setup {
  dir: string;
  configFile: string;
  record: string;
  adminPort: number;
  ports: { primary: number; hot: number };
}

async function setup(root: string, name: string): Promise<Setup> {
  const dir = await freshDir(root, `jobs-${name}`);
  const [gateway, admin, primary, hot] = (await freePorts(4)) as [number, number, number, number];
  const record = path.join(dir, 'requests.log');
  const instance = (instanceName: string, tier: string, port: number) => ({
    tier,
    url: `http://127.0.0.1:${port}`,
    runtime: {
      type: 'process',
      command: [process.execPath, MODEL_SERVER_PATH, '--port', String(port), '--name', instanceName, '--latency', String(JOB_LATENCY_MS), '--record', record],
      stopGrace: '2s',
    },
    probes: {
      startup: { http: { path: '/health' }, interval: '50ms', budget: '20s' },
      ready: { http: { path: '/health' }, interval: '200ms', fall: 2 },
    },
  });
  const configFile = path.join(dir, 'understudy.yaml');
  await mkdir(path.join(dir, 'state'), { recursive: true });
  await writeFile(
    configFile,
    stringify({
      stateDir: path.join(dir, 'state'),
      gateway: { listen: `127.0.0.1:${gateway}` },
      admin: { listen: `127.0.0.1:${admin}`, token: TOKEN },
      log: { level: 'warn', access: false },
      services: {
        infer: {
          route: { pathPrefix: '/' },
          failback: 'never',
          instances: { primary: instance('primary', 'primary', primary), hot: instance('hot', 'hot', hot) },
        },
      },
    }),
  );
  return { dir, configFile, record, adminPort: admin, ports: { primary, hot } };
}

interface InstanceStatus {
  name: string;
  state: string;
  pid: number | null;
}

interface JobView {
  id: string;
  state: string;
  total: number;
  done: number;
  succeeded: number;
  failed: number;
  createdAt: number;
  finishedAt: number | null;
}

const FINAL = new Set(['succeeded', 'failed', 'cancelled']);

/** `understudy up` (the built CLI) in its own process group, and a client for its admin API. */
class Up {
  readonly service: Service;
  readonly admin: string;
  /** Epoch ms just before the spawn. */
  readonly spawnedAt: number;

  constructor(readonly s: Setup) {
    this.admin = `http://127.0.0.1:${s.adminPort}`;
    this.spawnedAt = epoch();
    this.service = spawnService('understudy', process.execPath, [CLI, 'up', '-c', s.configFile], REPO);
  }

  async api<T>(method: 'GET' | 'POST', route: string, body?: unknown, timeoutMs = 5000): Promise<T> {
    const response = await request(`${this.admin}${route}`, {
      method,
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await response.body.text();
    if (response.statusCode >= 400) throw new Error(`${method} ${route}: ${response.statusCode} ${text}`);
    return JSON.parse(text) as T;
  }

  async job(id: string, timeoutMs = 5000): Promise<JobView> {
    return (await this.api<{ job: JobView }>('GET', `/v1/jobs/${id}`, undefined, timeoutMs)).job;
  }

  async instances(): Promise<InstanceStatus[]> {
    const status = await this.api<{ services: { infer: { instances: InstanceStatus[] } } }>('GET', '/v1/status');
    const instances = status.services.infer.instances;
    for (const { pid } of instances) if (pid !== null) fixturePids.add(pid);
    return instances;
  }

  /** Both model servers ready. */
  async waitReady(): Promise<void> {
    await this.service.waitUntilReady(async () => (await this.instances()).every((i) => i.state === 'ready'), 30_000);
  }

  async submit(items: number, tag: string): Promise<JobView> {
    const body = {
      service: 'infer',
      name: tag,
      defaults: { path: '/v1/infer' },
      items: Array.from({ length: items }, (_, i) => ({ json: { input: 'The quick brown fox', max_tokens: 16, n: i } })),
      concurrency: JOB_CONCURRENCY,
    };
    return (await this.api<{ job: JobView }>('POST', '/v1/jobs', body, 30_000)).job;
  }

  /** Resolves with the job's final view from its SSE stream, at the moment the `end` event arrives. */
  async waitEnd(id: string, timeoutMs = JOB_TIMEOUT_MS): Promise<JobView> {
    const response = await request(`${this.admin}/v1/jobs/${id}/stream`, {
      headers: { authorization: `Bearer ${TOKEN}` },
      signal: AbortSignal.timeout(timeoutMs),
    });
    if (response.statusCode !== 200) throw new Error(`stream of ${id}: ${response.statusCode} ${await response.body.text()}`);
    let buffer = '';
    for await (const chunk of response.body) {
      buffer += (chunk as Buffer).toString('utf8');
      let split: number;
      while ((split = buffer.indexOf('\n\n')) >= 0) {
        const message = buffer.slice(0, split);
        buffer = buffer.slice(split + 2);
        if (!message.startsWith('event: end')) continue;
        const data = message.split('\n').find((line) => line.startsWith('data: '));
        response.body.destroy();
        return JSON.parse(data!.slice('data: '.length)) as JobView;
      }
    }
    throw new Error(`the stream of ${id} ended before the job did`);
  }

  async results(id: string): Promise<{ index: number; state: string; instance: string | null }[]> {
    const response = await request(`${this.admin}/v1/jobs/${id}/results`, {
      headers: { authorization: `Bearer ${TOKEN}` },
      signal: AbortSignal.timeout(10_000),
    });
    const text = await response.body.text();
    if (response.statusCode !== 200) throw new Error(`results of ${id}: ${response.statusCode} ${text}`);
    return text
      .trim()
      .split('\n')
      .filter((line) => line.length > 0)
      .map((line) => JSON.parse(line) as { index: number; state: string; instance: string | null });
  }

  /** SIGTERM: Understudy stops the model servers it started; then whatever is left of them is killed. */
  async stop(): Promise<void> {
    await this.service.stop();
  }

  async sigkill(): Promise<void> {
    this.service.proc.kill('SIGKILL');
    if (!(await waitForExit(this.service.proc, 5000))) throw new Error('understudy did not die on SIGKILL');
    await this.service.stop();
  }
}

async function stopFixturesLeft(): Promise<void> {
  for (const pid of fixturePids) {
    if (!alive(pid)) continue;
    progress(`  model server ${pid} outlived Understudy: killing it`);
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  fixturePids.clear();
}

// --- the --record file --------------------------------------------------------------------

interface RecordLine {
  name: string;
  id: string;
}

function readRecord(file: string, from = 0): { lines: RecordLine[]; size: number } {
  let size: number;
  try {
    size = statSync(file).size;
  } catch {
    return { lines: [], size: from };
  }
  if (size <= from) return { lines: [], size: from };
  const fd = openSync(file, 'r');
  const buffer = Buffer.alloc(size - from);
  try {
    readSync(fd, buffer, 0, buffer.length, from);
  } finally {
    closeSync(fd);
  }
  // Only whole lines: a line being written is read next time.
  const text = buffer.toString('utf8');
  const end = text.lastIndexOf('\n') + 1;
  const lines = text
    .slice(0, end)
    .split('\n')
    .filter((line) => line.length > 0)
    .map((line) => {
      const [name = '', id = ''] = line.split(' ');
      return { name, id };
    });
  return { lines, size: from + Buffer.byteLength(text.slice(0, end)) };
}

/** Runs per item of `job`, from the --record file. */
function runsPerItem(file: string, job: string): Map<number, number> {
  const runs = new Map<number, number>();
  for (const line of readRecord(file).lines) {
    if (!line.id.startsWith(`${job}.`)) continue;
    const index = Number(line.id.slice(job.length + 1));
    runs.set(index, (runs.get(index) ?? 0) + 1);
  }
  return runs;
}

function lossCounts(record: string, job: string, total: number): Pick<FailureRun, 'runTwice' | 'extraRuns' | 'neverRun'> {
  const runs = [...runsPerItem(record, job).values()];
  return {
    runTwice: runs.filter((n) => n > 1).length,
    extraRuns: runs.reduce((sum, n) => sum + n - 1, 0),
    neverRun: total - runs.length,
  };
}

// --- 1. throughput ------------------------------------------------------------------------

/** The same items, straight to the model server: a pool of JOB_CONCURRENCY workers. */
async function runDirect(url: string, items: number, tag: string): Promise<{ ms: number; failed: number }> {
  let next = 0;
  let failed = 0;
  const started = performance.now();
  const worker = async () => {
    while (next < items) {
      const i = next++;
      try {
        const response = await request(`${url}/v1/infer`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'x-request-id': `${tag}.${i}` },
          body: JSON.stringify({ input: 'The quick brown fox', max_tokens: 16, n: i }),
          signal: AbortSignal.timeout(10_000),
        });
        await response.body.text();
        if (response.statusCode !== 200) failed += 1;
      } catch {
        failed += 1;
      }
    }
  };
  await Promise.all(Array.from({ length: JOB_CONCURRENCY }, worker));
  const ms = performance.now() - started;
  // As a job that does not succeed fails the Understudy side: a throughput with failures in it means nothing.
  if (failed > 0) throw new Error(`${failed} of ${items} direct requests failed`);
  return { ms, failed };
}

async function runJob(up: Up, items: number, tag: string): Promise<{ ms: number; serverMs: number | null; failed: number }> {
  const started = performance.now();
  const job = await up.submit(items, tag);
  const end = await up.waitEnd(job.id);
  const ms = performance.now() - started;
  if (end.state !== 'succeeded') throw new Error(`job ${job.id} ended ${end.state}: ${end.succeeded} succeeded, ${end.failed} failed`);
  return { ms, serverMs: end.finishedAt === null ? null : end.finishedAt - end.createdAt, failed: end.failed };
}

async function measureThroughput(root: string): Promise<JobsResult['throughput']> {
  const up = new Up(await setup(root, 'throughput'));
  try {
    await up.waitReady();
    // Direct goes to the very model server Understudy sends the job to: same process, same latency, same --record.
    const direct = `http://127.0.0.1:${up.s.ports.primary}`;
    progress(`jobs: throughput warm-up (${WARMUP_ITEMS} items each side)`);
    await runDirect(direct, WARMUP_ITEMS, 'warmup-direct');
    await runJob(up, WARMUP_ITEMS, 'warmup');

    const runs: ThroughputRun[] = [];
    for (let round = 1; round <= THROUGHPUT_RUNS; round++) {
      // Alternate which side goes first, so drift on the machine is shared out.
      const order: ThroughputRun['side'][] = round % 2 === 1 ? ['direct', 'understudy'] : ['understudy', 'direct'];
      for (const side of order) {
        const r =
          side === 'direct'
            ? { ...(await runDirect(direct, JOB_ITEMS, `direct-${round}`)), serverMs: null }
            : await runJob(up, JOB_ITEMS, `throughput-${round}`);
        const run: ThroughputRun = { side, round, items: JOB_ITEMS, ms: r.ms, itemsPerSecond: JOB_ITEMS / (r.ms / 1000), serverMs: r.serverMs, failed: r.failed };
        progress(`jobs: throughput round ${round}, ${side}: ${run.itemsPerSecond.toFixed(1)} items/s (${Math.round(run.ms)} ms)`);
        runs.push(run);
      }
    }
    const directMedian = median(runs.filter((r) => r.side === 'direct').map((r) => r.itemsPerSecond));
    const understudyMedian = median(runs.filter((r) => r.side === 'understudy').map((r) => r.itemsPerSecond));
    return { runs, directMedian, understudyMedian, ratio: understudyMedian / directMedian };
  } finally {
    await up.stop();
    await stopFixturesLeft();
  }
}

// --- model server start, alone ------------------------------------------------------------

async function modelServerAlone(root: string): Promise<number> {
  const [port] = (await freePorts(1)) as [number];
  const record = path.join(await freshDir(root, 'jobs-alone'), 'requests.log');
  const started = performance.now();
  const fixture = spawnService('model-server', process.execPath, [MODEL_SERVER_PATH, '--port', String(port), '--name', 'alone', '--latency', String(JOB_LATENCY_MS), '--record', record]);
  try {
    const deadline = started + 10_000;
    while (performance.now() < deadline) {
      try {
        const response = await request(`http://127.0.0.1:${port}/health`, { signal: AbortSignal.timeout(1000) });
        await response.body.dump();
        if (response.statusCode === 200) return performance.now() - started;
      } catch {
        // not listening yet
      }
      await sleep(5);
    }
    throw new Error(`the model server did not answer /health within 10 s:\n${fixture.output()}`);
  } finally {
    await fixture.stop();
  }
}

// --- 2. and 3. Understudy SIGKILLed mid-job, started again --------------------------------

async function untilDone(up: Up, id: string, done: number): Promise<JobView> {
  let view: JobView | undefined;
  await waitUntil(
    async () => {
      view = await up.job(id);
      return view.done >= done || FINAL.has(view.state);
    },
    { timeoutMs: JOB_TIMEOUT_MS, intervalMs: 10, what: `${done} items of ${id} done` },
  );
  if (FINAL.has(view!.state)) throw new Error(`job ${id} ended (${view!.state}) before the kill`);
  return view!;
}

async function restartRun(root: string, run: number): Promise<{ restart: RestartRun; failure: FailureRun }> {
  const s = await setup(root, `restart-${run}`);
  let first: Up | undefined = new Up(s);
  let second: Up | undefined;
  try {
    await first.waitReady();
    const job = await first.submit(JOB_ITEMS, `restart-${run}`);
    await untilDone(first, job.id, KILL_AT_DONE);
    await first.sigkill();
    first = undefined;
    // A request the killed process had already written may still reach a model server a moment
    // later; let it land before the snapshot, so it is not taken for a resumed item.
    await sleep(100);
    // What had reached a model server when Understudy died; the model servers it left run on, idle.
    const atKill = readRecord(s.record);
    const reached = new Set(atKill.lines.filter((l) => l.id.startsWith(`${job.id}.`)).map((l) => l.id));

    second = new Up(s);
    const spawnedAt = second.spawnedAt;
    const deadline = performance.now() + 20_000;

    // The first new line for the job in the --record file: the first resumed item reaching a model server.
    const dispatched = (async () => {
      let offset = atKill.size;
      while (performance.now() < deadline) {
        const { lines, size } = readRecord(s.record, offset);
        const at = epoch();
        offset = size;
        const line = lines.find((l) => l.id.startsWith(`${job.id}.`));
        if (line) return { at, name: line.name };
        await sleep(RECORD_POLL_MS);
      }
      return null;
    })();
    // The done count, every 10 ms, until it rises past what the store had: the first resumed item recorded.
    const samples: { at: number; done: number }[] = [];
    const recorded = (async () => {
      while (performance.now() < deadline) {
        try {
          const view = await second!.job(job.id, 1000);
          samples.push({ at: epoch(), done: view.done });
          if (samples.length > 1 && view.done > samples[0]!.done) return;
          if (FINAL.has(view.state)) return;
        } catch {
          // not up yet
        }
        await sleep(DONE_POLL_MS);
      }
    })();
    const [dispatch] = await Promise.all([dispatched, recorded]);

    const events = (
      await second.api<{ events: { type: string; time: number; job?: string; done?: number; instance?: string; to?: string }[] }>(
        'GET',
        `/v1/events?since=${Math.floor(spawnedAt)}&limit=1000`,
      )
    ).events.sort((a, b) => a.time - b.time);
    const since = (event: { time: number } | undefined) => (event ? event.time - spawnedAt : null);
    const resumed = events.find((e) => e.type === 'job-resumed' && e.job === job.id);
    if (!resumed || resumed.done === undefined) throw new Error(`no job-resumed event for ${job.id}`);
    const doneAtKill = resumed.done;
    const firstRecorded = samples.find((sample) => sample.done > doneAtKill);

    let modelServerStartMs: number | null = null;
    let toModelServerSpawnMs: number | null = null;
    if (dispatch) {
      const port = dispatch.name === 'primary' ? s.ports.primary : s.ports.hot;
      const stats = (await (await request(`http://127.0.0.1:${port}/__stats`, { signal: AbortSignal.timeout(2000) })).body.json()) as {
        startedAt: number;
        readyAt: number | null;
      };
      if (stats.readyAt !== null) modelServerStartMs = stats.readyAt - stats.startedAt;
      toModelServerSpawnMs = stats.startedAt - spawnedAt;
    }
    const toFirstDispatchMs = dispatch ? dispatch.at - spawnedAt : null;

    const end = await second.waitEnd(job.id);
    await second.instances();
    const restart: RestartRun = {
      run,
      doneAtKill,
      toFirstDispatchMs,
      toFirstRecordedMs: firstRecorded ? firstRecorded.at - spawnedAt : null,
      servedBy: dispatch?.name ?? null,
      modelServerStartMs,
      toModelServerSpawnMs,
      addedMs: toFirstDispatchMs !== null && modelServerStartMs !== null ? toFirstDispatchMs - modelServerStartMs : null,
      toOrphanStopMs: since(events.find((e) => e.type === 'orphan-stopped')),
      toResumedMs: since(resumed),
      toServerReadyMs: since(events.find((e) => e.type === 'instance-state' && e.to === 'ready' && e.instance === dispatch?.name)),
      succeeded: end.succeeded,
      total: end.total,
    };
    const failure: FailureRun = {
      kind: 'understudy-sigkill',
      run,
      inFlightAtKill: reached.size - doneAtKill,
      ...lossCounts(s.record, job.id, end.total),
      succeeded: end.succeeded,
      total: end.total,
    };
    return { restart, failure };
  } finally {
    await first?.stop();
    await second?.stop();
    await stopFixturesLeft();
  }
}

/** The primary model server SIGKILLed mid-job: its items in flight go to the hot standby. */
async function primaryKillRun(root: string): Promise<FailureRun> {
  const s = await setup(root, 'primary-kill');
  const up = new Up(s);
  try {
    await up.waitReady();
    const job = await up.submit(JOB_ITEMS, 'primary-kill');
    await untilDone(up, job.id, KILL_AT_DONE);
    const primary = (await up.instances()).find((i) => i.name === 'primary');
    if (!primary?.pid) throw new Error('no pid for the primary');
    process.kill(primary.pid, 'SIGKILL');
    await waitUntil(() => !alive(primary.pid!), { timeoutMs: 5000, intervalMs: 5, what: 'the primary to die' });
    fixturePids.delete(primary.pid);
    // Items that had reached the primary when it died (failback: never, so it takes no more).
    const reachedPrimary = new Set(
      readRecord(s.record)
        .lines.filter((l) => l.name === 'primary' && l.id.startsWith(`${job.id}.`))
        .map((l) => l.id),
    );
    const end = await up.waitEnd(job.id);
    await up.instances();
    const answeredByPrimary = (await up.results(job.id)).filter((r) => r.instance === 'primary').length;
    return {
      kind: 'primary-sigkill',
      run: 1,
      inFlightAtKill: reachedPrimary.size - answeredByPrimary,
      ...lossCounts(s.record, job.id, end.total),
      succeeded: end.succeeded,
      total: end.total,
    };
  } finally {
    await up.stop();
    await stopFixturesLeft();
  }
}

/**
 * Durable jobs through Understudy: throughput against calling the model server directly,
 * time from a restart of Understudy to the first resumed item, and the work lost per failure.
 */
export async function runJobs(root: string): Promise<JobsResult> {
  // If the benchmark dies between a SIGKILL of Understudy and its restart, the model servers it left are killed here.
  process.on('exit', killFixturesNow);
  try {
    const modelServerAloneMs: number[] = [];
    for (let i = 0; i < RESTART_RUNS; i++) modelServerAloneMs.push(await modelServerAlone(root));
    progress(`jobs: a model server alone starts in ${modelServerAloneMs.map((v) => Math.round(v)).join(', ')} ms`);

    const throughput = await measureThroughput(root);
    progress(`jobs: median ${throughput.understudyMedian.toFixed(1)} items/s through Understudy, ${throughput.directMedian.toFixed(1)} direct: ${throughput.ratio.toFixed(3)}`);

    const restarts: RestartRun[] = [];
    const failures: FailureRun[] = [];
    for (let run = 1; run <= RESTART_RUNS; run++) {
      progress(`jobs: restart ${run}/${RESTART_RUNS}: Understudy SIGKILLed at ${KILL_AT_DONE} of ${JOB_ITEMS} items, started again`);
      const { restart, failure } = await restartRun(root, run);
      progress(
        `  first resumed item at a model server ${Math.round(restart.toFirstDispatchMs ?? NaN)} ms after the spawn, recorded ${Math.round(restart.toFirstRecordedMs ?? NaN)} ms; ` +
          `model server start ${Math.round(restart.modelServerStartMs ?? NaN)} ms; ran twice ${failure.runTwice}, in flight ${failure.inFlightAtKill}`,
      );
      progress(
        `  from the spawn: orphan-stopped ${Math.round(restart.toOrphanStopMs ?? NaN)} ms, model server spawned ${Math.round(restart.toModelServerSpawnMs ?? NaN)} ms, ` +
          `${restart.servedBy} ready ${restart.toServerReadyMs === null ? 'n/a' : Math.round(restart.toServerReadyMs)} ms, job-resumed ${restart.toResumedMs === null ? 'n/a' : Math.round(restart.toResumedMs)} ms`,
      );
      restarts.push(restart);
      failures.push(failure);
    }
    progress('jobs: primary model server SIGKILLed mid-job');
    const primary = await primaryKillRun(root);
    progress(`  ran twice ${primary.runTwice}, in flight ${primary.inFlightAtKill}`);
    failures.push(primary);

    return { items: JOB_ITEMS, latencyMs: JOB_LATENCY_MS, concurrency: JOB_CONCURRENCY, throughput, modelServerAloneMs, restarts, failures };
  } finally {
    killFixturesNow();
    process.off('exit', killFixturesNow);
  }
}

