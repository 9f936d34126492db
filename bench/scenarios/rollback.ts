import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import type { UnderstudyEvent } from '../../src/core/index.js';
import { versionedInstance } from '../../test/deploy/support.js';
import { startGateway, type RunningGateway } from '../../test/support/gateway.js';
import { freePorts } from '../../test/support/ports.js';
import { freshDir, inferRequest, progress } from '../workload.js';
import { median } from './jobs.js';

export const ROLLBACK_RUNS = 3;
/** Version 2 of the "fails" variant answers 500 to every inference request after this many. */
export const FAIL_AFTER = 100;
/** Version 2 of the "crashes" variant exits this long after each start. */
export const EXIT_AFTER_MS = 1500;
export const CLIENTS = 4;
/** Each client waits this long between requests: about 35 req/s each with the model's 20 ms. */
export const CLIENT_PAUSE_MS = 5;
export const MODEL_LATENCY_MS = 20;
/** How often the bench reads the moved instance's /version and /__stats, to see its first failure itself. */
export const POLL_MS = 20;
/** Load on version 1 before the deploy, and after the rollback to see version 1 answer. */
const WARM_MS = 1000;
const TAIL_MS = 1000;
const CLIENT_TIMEOUT_MS = 10_000;
/** Bounds on one run: the rollback must finish within this, and no client sends more than MAX_REQUESTS in all. */
const RUN_TIMEOUT_MS = 90_000;
const MAX_REQUESTS = 40_000;

export type RollbackVariant = 'fails' | 'crashes';

/** What version 2 does wrong: the fixture's model.json fields. */
export const ROLLBACK_VARIANTS: Record<RollbackVariant, { label: string; model: Record<string, number> }> = {
  fails: { label: `version 2 answers 500 after ${FAIL_AFTER} requests`, model: { failAfter: FAIL_AFTER } },
  crashes: { label: `version 2 exits ${EXIT_AFTER_MS / 1000} s after every start`, model: { exitAfter: EXIT_AFTER_MS } },
};

/** Milliseconds each step of the rollback took, from Understudy's events; null when an event was not seen. */
export interface RollbackPhases {
  /** Understudy's first failure on version 2 to its `deploy-failed` verdict. */
  detect: number | null;
  /** `deploy-failed` to `rollback-started`. */
  begin: number | null;
  /** `rollback-started` to the moved instance `stopped` (out of traffic, its requests in flight finished). */
  drain: number | null;
  /**
   * `stopped` to `starting` at version 1: waiting for the version 2 process to exit. Understudy sends it
   * SIGTERM as it goes down, so this is often 0; the fixture waits up to 2 s for a connection that was
   * busy at SIGTERM and kept alive after (Node's server.close() leaves it open).
   */
  stop: number | null;
  /** `starting` to `ready`: the version 1 process started and passed its startup probe. */
  start: number | null;
  /** `ready` to `rollback-finished`: its version read by the version probe. */
  version: number | null;
}

export interface RollbackRun {
  variant: RollbackVariant;
  run: number;
  ok: boolean;
  /** Understudy's figure: `rollback-finished` durationMs, from the first failure it saw on version 2 to version 1 everywhere. */
  durationMs: number;
  /** Bench side: the first failure of version 2 as the bench saw it (the midpoint of what it knows, see FailureBracket) to `rollback-finished`. */
  benchFailureToFinishedMs: number | null;
  /** How wide the bench's knowledge of that first failure is: the figure is ± half of it. */
  benchFailureWindowMs: number | null;
  /** Bench side: that first failure to the moved instance answering /version with 1 (the other one never left version 1). */
  benchFailureToV1Ms: number | null;
  /** Understudy's first failure less the bench's: how late Understudy counted it. */
  countedLateMs: number | null;
  /** `deploy-started` to `rollback-finished`. */
  deployToFinishedMs: number;
  /** `deploy-started` to the bench's first failure: how long version 2 looked healthy. */
  healthyMs: number | null;
  phases: RollbackPhases;
  /** Instances on version 1 at the end, by /version, out of all of them. */
  onV1: number;
  instances: number;
  reason: string;
  requests: { sent: number; failed: number; failures: Record<string, number>; byVersion: Record<string, number> };
}

export interface RollbackResult {
  runs: RollbackRun[];
  variants: RollbackVariant[];
}

interface Load {
  sent: number;
  failed: number;
  failures: Record<string, number>;
  byVersion: Record<string, number>;
}

const bump = (record: Record<string, number>, key: string) => {
  record[key] = (record[key] ?? 0) + 1;
};

/**
 * What the bench itself knows of version 2's first failure: it came after `after` and by `before`
 * (epoch ms). A 200 from version 2, or a read that finds the instance well, moves `after` up; a
 * client answered by version 1 once version 2 served (its request was moved off it), or a read
 * that finds the instance failing, moves `before` down. Either alone can miss it: Understudy
 * restarts an ejected process within milliseconds, between two reads.
 */
class FailureBracket {
  after = -Infinity;
  before = Infinity;
  /** Epoch ms: the first answer of version 1 from the moved instance after the failure. */
  v1At: number | null = null;
  /** Start of the first client request version 2 answered. */
  private v2Since = Infinity;

  fine(at: number): void {
    // A version 2 process started again after the failure answers well too: only earlier news counts.
    if (at < this.before) this.after = Math.max(this.after, at);
  }

  failed(at: number): void {
    this.before = Math.min(this.before, at);
  }

  client(version: string, start: number, end: number): void {
    if (version === '2') {
      this.v2Since = Math.min(this.v2Since, start);
      this.fine(start);
    } else if (start > this.v2Since) {
      this.failed(end);
    }
  }

  /** The midpoint of what is known, or null when no failure was seen. */
  at(): number | null {
    if (this.before === Infinity) return null;
    return Number.isFinite(this.after) && this.after <= this.before ? (this.after + this.before) / 2 : this.before;
  }

  width(): number | null {
    return this.before === Infinity || !Number.isFinite(this.after) ? null : Math.max(0, this.before - this.after);
  }
}

/** CLIENTS clients through the gateway, each one request at a time, until stop() (or the run's bounds). */
function clientLoad(url: string, bracket: FailureBracket): { stop(): void; done: Promise<Load> } {
  const load: Load = { sent: 0, failed: 0, failures: {}, byVersion: {} };
  let stopped = false;
  const deadline = Date.now() + RUN_TIMEOUT_MS + WARM_MS + TAIL_MS;
  const client = async () => {
    while (!stopped && load.sent < MAX_REQUESTS && Date.now() < deadline) {
      load.sent += 1;
      const start = Date.now();
      try {
        const answer = await request(`${url}/v1/infer`, {
          method: 'POST',
          body: inferRequest.body,
          headers: inferRequest.headers,
          signal: AbortSignal.timeout(CLIENT_TIMEOUT_MS),
        });
        const text = await answer.body.text();
        if (answer.statusCode !== 200) {
          load.failed += 1;
          bump(load.failures, String(answer.statusCode));
        } else {
          const { version } = JSON.parse(text) as { version: string };
          bump(load.byVersion, version);
          bracket.client(version, start, Date.now());
        }
      } catch (error) {
        load.failed += 1;
        bump(load.failures, (error as { code?: string }).code ?? (error as Error).name);
      }
      await sleep(CLIENT_PAUSE_MS);
    }
  };
  const done = Promise.all(Array.from({ length: CLIENTS }, client)).then(() => load);
  return { stop: () => (stopped = true), done };
}

async function getJson(url: string): Promise<Record<string, unknown>> {
  // A fresh connection each time: a kept-alive one would hold a stopping model server open (it waits for its connections).
  const answer = await request(url, { reset: true, signal: AbortSignal.timeout(1000) });
  return (await answer.body.json()) as Record<string, unknown>;
}

/**
 * Reads the moved instance every POLL_MS: its version, and its inference count (the fixture
 * answers 500 once it passes failAfter) or whether it answers at all (a crash refuses the connection).
 */
function watchInstance(port: number, variant: RollbackVariant, bracket: FailureBracket): { stop(): void; done: Promise<void> } {
  const base = `http://127.0.0.1:${port}`;
  let stopped = false;
  const poll = async () => {
    const deadline = Date.now() + RUN_TIMEOUT_MS + WARM_MS + TAIL_MS;
    let onV2 = false;
    while (!stopped && Date.now() < deadline && bracket.v1At === null) {
      const sent = Date.now();
      let version: string | undefined;
      let requests = 0;
      try {
        const [v, stats] = await Promise.all([getJson(`${base}/version`), getJson(`${base}/__stats`)]);
        version = String(v.version);
        requests = Number(stats.requests);
      } catch {
        // Refused (or no answer) from an instance that served version 2: it crashed.
        if (onV2 && variant === 'crashes') bracket.failed(Date.now());
      }
      if (version === '2') {
        onV2 = true;
        if (variant === 'fails' && requests > FAIL_AFTER) bracket.failed(Date.now());
        else bracket.fine(sent);
      }
      if (version === '1' && bracket.at() !== null) bracket.v1At = Date.now();
      await sleep(POLL_MS);
    }
  };
  return { stop: () => (stopped = true), done: poll() };
}

async function releases(dir: string, variant: RollbackVariant): Promise<void> {
  const models: Record<string, Record<string, number>> = { '1': {}, '2': ROLLBACK_VARIANTS[variant].model };
  for (const [version, extra] of Object.entries(models)) {
    await mkdir(path.join(dir, 'models', version), { recursive: true });
    await writeFile(path.join(dir, 'models', version, 'model.json'), JSON.stringify({ version, ...extra }));
  }
}

function instance(dir: string, name: string, tier: string, port: number): string {
  return versionedInstance(dir, name, tier, port, MODEL_LATENCY_MS);
}

/** A primary and a hot standby on version 1, run by Understudy from the fixture model server. */
function config(dir: string, ports: number[]): string {
  return `stateDir: STATE
gateway: { listen: "127.0.0.1:0" }
services:
  infer:
    route: { pathPrefix: / }
    version: { expect: "1", probe: { interval: 1s } }
    passive: { failures: 3 }
    deploy: { watch: 60s, rollback: { minRequests: 10, errorRate: 0.2 } }
    instances:${instance(dir, 'primary', 'primary', ports[0]!)}${instance(dir, 'hot', 'hot', ports[1]!)}
`;
}

const live = new Set<RunningGateway>();

/** Last resort from a synchronous 'exit' handler: the model servers Understudy runs are detached. */
export function killRollbackInstancesNow(): void {
  for (const gateway of live) {
    const service = gateway.app.service('infer');
    for (const name of ['primary', 'hot']) {
      const pid = service?.pidOf(name);
      try {
        if (pid !== undefined) process.kill(-pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
}

export async function closeRollbackGateways(): Promise<void> {
  await Promise.all([...live].map((g) => g.close().finally(() => live.delete(g))));
}

function phasesOf(events: UnderstudyEvent[], moved: string, firstFailureAt: number, finishedAt: number): RollbackPhases {
  const first = (match: (e: UnderstudyEvent) => boolean, after: number | null) =>
    after === null ? null : (events.find((e) => e.time >= after && match(e))?.time ?? null);
  const state = (to: string) => (e: UnderstudyEvent) => e.type === 'instance-state' && e.instance === moved && e.to === to;
  const failed = first((e) => e.type === 'deploy-failed', firstFailureAt);
  const started = first((e) => e.type === 'rollback-started', failed);
  const stopped = first(state('stopped'), started);
  const starting = first(state('starting'), stopped);
  const ready = first(state('ready'), starting);
  const span = (a: number | null, b: number | null) => (a === null || b === null ? null : b - a);
  return {
    detect: span(firstFailureAt, failed),
    begin: span(failed, started),
    drain: span(started, stopped),
    stop: span(stopped, starting),
    start: span(starting, ready),
    version: span(ready, finishedAt),
  };
}

async function versionOf(port: number): Promise<string | null> {
  try {
    return String((await getJson(`http://127.0.0.1:${port}/version`)).version);
  } catch {
    return null;
  }
}

async function oneRun(root: string, variant: RollbackVariant, run: number): Promise<RollbackRun> {
  const dir = await freshDir(root, `rollback-${variant}`);
  await releases(dir, variant);
  const ports = await freePorts(2);
  const gateway = await startGateway(config(dir, ports));
  live.add(gateway);
  try {
    await gateway.event((e) => e.type === 'active-changed' && e.to === 'primary', 20_000, 'the primary serving');
    const bracket = new FailureBracket();
    const load = clientLoad(gateway.url, bracket);
    await sleep(WARM_MS);

    const finishedEvent = gateway.event((e) => e.type === 'rollback-finished', RUN_TIMEOUT_MS, 'the rollback');
    finishedEvent.catch(() => {}); // awaited below; a deploy refused at once must not leave it unhandled
    // The hot standby moves first (the active one keeps version 1 ready): it is the one to watch.
    const watcher = watchInstance(ports[1]!, variant, bracket);
    let view: Awaited<ReturnType<typeof gateway.app.deploys.deploy>>;
    let finished: UnderstudyEvent;
    try {
      view = await gateway.app.deploys.deploy('infer', '2');
      finished = await finishedEvent;
      await sleep(TAIL_MS);
    } finally {
      load.stop();
      watcher.stop();
    }
    const [requests] = await Promise.all([load.done, watcher.done]);
    const failureAt = bracket.at();
    if (finished.type !== 'rollback-finished') throw new Error(`expected rollback-finished, got ${finished.type}`);

    const events = gateway.app.events.list({ service: 'infer' });
    const moved = [...new Set(events.flatMap((e) => (e.type === 'deploy-step' && e.step === 'upgrade' && e.instance ? [e.instance] : [])))];
    const understudyFailureAt = finished.time - finished.durationMs;
    const versions = await Promise.all(ports.map(versionOf));
    const reason = events.find((e) => e.type === 'deploy-failed')?.reason ?? '';
    const after = (at: number | null) => (at === null ? null : finished.time - at);
    return {
      variant,
      run,
      ok: finished.ok,
      durationMs: finished.durationMs,
      benchFailureToFinishedMs: after(failureAt),
      benchFailureWindowMs: bracket.width(),
      benchFailureToV1Ms: failureAt !== null && bracket.v1At !== null ? bracket.v1At - failureAt : null,
      countedLateMs: failureAt === null ? null : understudyFailureAt - failureAt,
      deployToFinishedMs: finished.time - view.startedAt,
      healthyMs: failureAt === null ? null : failureAt - view.startedAt,
      phases: phasesOf(events, moved[0] ?? 'hot', understudyFailureAt, finished.time),
      onV1: versions.filter((v) => v === '1').length,
      instances: ports.length,
      reason,
      requests,
    };
  } finally {
    live.delete(gateway);
    await gateway.close();
  }
}

const round = (v: number | null) => (v === null ? 'n/a' : `${Math.round(v)} ms`);

/**
 * Deploys a bad version 2 over a primary and a hot standby on version 1, under client load,
 * and times the automatic rollback: ROLLBACK_RUNS runs of each variant, each on a fresh Understudy.
 */
export async function runRollback(root: string, variants: RollbackVariant[] = ['fails', 'crashes']): Promise<RollbackResult> {
  const runs: RollbackRun[] = [];
  for (const variant of variants) {
    progress(`rollback: ${ROLLBACK_VARIANTS[variant].label}, ${ROLLBACK_RUNS} runs`);
    for (let run = 1; run <= ROLLBACK_RUNS; run++) {
      const r = await oneRun(root, variant, run);
      runs.push(r);
      const p = r.phases;
      progress(
        `  run ${run}: ${r.ok ? 'rolled back' : 'ROLLBACK FAILED'} in ${round(r.durationMs)} (Understudy), ${round(r.benchFailureToFinishedMs)} from the bench's ` +
          `first failure (± ${round((r.benchFailureWindowMs ?? NaN) / 2)}), ${round(r.deployToFinishedMs)} from the deploy; detect ${round(p.detect)}, drain ${round(p.drain)}, stop ${round(p.stop)}, ` +
          `start ${round(p.start)}, version ${round(p.version)}; ${r.requests.failed}/${r.requests.sent} requests failed, ${r.onV1}/${r.instances} on version 1`,
      );
    }
  }
  return { runs, variants };
}

export function spread(values: (number | null)[]): { min: number; median: number; max: number } {
  const finite = values.filter((v): v is number => v !== null && Number.isFinite(v));
  return { min: finite.length ? Math.min(...finite) : NaN, median: median(finite), max: finite.length ? Math.max(...finite) : NaN };
}
