import { mkdir, open, readdir, readFile, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { Cron } from 'croner';
import { faultsAllowed, type SmokeConfig } from '../config/index.js';
import type { Clock, EventBody, InstanceState, ServiceStatus, UnderstudyEvent } from '../core/index.js';
import {
  DrillError,
  FAULT_KINDS,
  latencies,
  ProbeTraffic,
  recoveryMs,
  round,
  renderReportMarkdown,
  renderTimelineSvg,
  type DrillMark,
  type DrillReport,
  type FaultKind,
  type ProbeSample,
  type ProbeTarget,
  type StateSpan,
} from '../drill/index.js';
import type { JobRunner, JobView } from '../jobs/index.js';
import { FINAL_STATES } from '../jobs/index.js';
import type { EventLog } from '../observe/index.js';
import type { Deployer } from './deploy.js';
import type { ServiceController } from './service.js';

export interface DrillOrder {
  service: string;
  fault: FaultKind;
  /** The instance to fail; default the active one. Not used by cold-start, which fails every warm instance. */
  instance?: string;
  trigger?: 'manual' | 'schedule';
}

/** A drill as listed: the report's figures without its samples. */
export type DrillSummary = Omit<DrillReport, 'samples' | 'spans' | 'marks'> & { dir: string };

interface DrillDeps {
  services: (name: string) => ServiceController | undefined;
  serviceNames: () => string[];
  events: EventLog;
  jobs: () => JobRunner | undefined;
  deploys: () => Deployer | undefined;
  /** Where clients reach `service` through the gateway. */
  target: (service: string) => Omit<ProbeTarget, 'request'>;
  /** Reports go to DIR/<drill id>/. */
  dir: string;
  clock: Clock;
  publish(service: string, event: EventBody): void;
  onError(message: string, error: unknown): void;
  /** Why this node may not run a drill now (in a cluster, only the leader does), or undefined. */
  notLeader?: () => string | undefined;
}

/** Time the probe traffic runs before the fault, to know the service's normal latency. */
const BASELINE_MS = 1000;
/** Time the probe traffic runs after the service is back as it was, to show it is. */
const AFTERGLOW_MS = 1000;
/** Bound on putting the service back after a drill that ended early (its own deadline passed, or it failed). */
const RESTORE_AFTER_MS = 30_000;
/** Reports kept per service; older ones are removed after each drill. */
const KEEP_REPORTS = 50;

/** States that take an instance out of service (suspect still serves): the fault was noticed. */
const OUT = new Set<InstanceState>(['down', 'quarantined']);

/** Events shown on the timeline besides the drill's own marks. */
const NOTABLE = new Set(['active-changed', 'no-ready-instance', 'quarantined', 'start-failed', 'restart-scheduled', 'model-ejected']);

/**
 * Failure drills: a chosen instance of a running service is failed on purpose while
 * probe traffic (and a small job) goes through the gateway; the drill measures how
 * long clients went without an answer, counts failed requests and lost job items,
 * puts the service back as it was, and keeps a report (JSON, Markdown, an SVG
 * timeline) under stateDir/drills.
 */
export class Drills {
  /** The drill running on each service: one at a time. */
  private readonly running = new Map<string, { id: string; done: Promise<DrillReport> }>();
  private readonly schedules = new Map<string, Cron>();
  /** Next fault kind of each service's scheduled drills, which take the kinds in turn. */
  private readonly turns = new Map<string, number>();
  private readonly abort = new AbortController();

  constructor(private readonly deps: DrillDeps) {}

  /** Starts the services' drill schedules. */
  start(): void {
    if (this.abort.signal.aborted) return; // closed while Understudy was starting
    for (const name of this.deps.serviceNames()) {
      const schedule = this.deps.services(name)!.config.drill.schedule;
      if (schedule !== undefined) this.schedules.set(name, new Cron(schedule, { protect: true }, () => this.scheduled(name)));
    }
  }

  /** When each service's next scheduled drill runs. */
  nextRuns(): Record<string, string | null> {
    return Object.fromEntries(this.deps.serviceNames().map((name) => [name, this.schedules.get(name)?.nextRun()?.toISOString() ?? null]));
  }

  /** The drill running on `service` now, if any. */
  current(service: string): string | undefined {
    return this.running.get(service)?.id;
  }

  /** Why a deploy or rollback of `service` must wait, or undefined: one change to a service at a time. */
  busy(service: string): string | undefined {
    return this.running.has(service) ? `a drill of ${service} is running; try again when it ends (understudy drills)` : undefined;
  }

  /** Stops schedules; drills running now lift their faults and end at once (the shutdown stops every instance anyway). */
  async close(): Promise<void> {
    for (const cron of this.schedules.values()) cron.stop();
    this.abort.abort(new Error('Understudy is shutting down'));
    await Promise.allSettled([...this.running.values()].map((r) => r.done));
  }

  /**
   * Begins a drill and returns at once with what it will do and a promise of its report;
   * throws a DrillError, having changed nothing, when it cannot run now.
   */
  begin(order: DrillOrder): { id: string; fault: FaultKind; instances: string[]; done: Promise<DrillReport> } {
    const plan = this.plan(order);
    const done = this.execute(plan).finally(() => this.running.delete(order.service));
    this.running.set(order.service, { id: plan.id, done });
    return { id: plan.id, fault: plan.fault, instances: plan.hit, done };
  }

  /** Runs a drill to its end. */
  run(order: DrillOrder): Promise<DrillReport> {
    return this.begin(order).done;
  }

  /** Reports kept, newest last. */
  async list(service?: string): Promise<DrillSummary[]> {
    let names: string[];
    try {
      names = await readdir(this.deps.dir);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw error;
    }
    const summaries: DrillSummary[] = [];
    for (const name of names.sort()) {
      const report = await this.read(name).catch(() => undefined);
      if (!report || (service !== undefined && report.service !== service)) continue;
      const { samples: _samples, spans: _spans, marks: _marks, ...summary } = report;
      summaries.push({ ...summary, dir: path.join(this.deps.dir, name) });
    }
    return summaries.sort((a, b) => a.startedAt - b.startedAt);
  }

  /** Where a drill's report is kept. */
  dirOf(id: string): string {
    return path.join(this.deps.dir, id);
  }

  /** One report, whole. */
  async get(id: string): Promise<DrillReport> {
    if (!/^[\w-]+$/.test(id)) throw new DrillError('NOT_FOUND', `no drill ${id}`, 404);
    try {
      return await this.read(id);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw new DrillError('NOT_FOUND', `no drill ${id}`, 404);
      throw error;
    }
  }

  /** The fault kinds a service's instances allow (see faultsAllowed). */
  faultsFor(service: ServiceController): FaultKind[] {
    return faultsAllowed(service.config.instances);
  }

  // ---------------------------------------------------------------- planning

  /** Checks that the drill can run now and what it hits; throws a DrillError otherwise. */
  private plan(order: DrillOrder): Plan {
    const service = this.deps.services(order.service);
    if (!service) throw new DrillError('NOT_FOUND', `no service named ${order.service}`, 404);
    const name = service.config.name;
    if (!FAULT_KINDS.includes(order.fault)) {
      throw new DrillError('BAD_REQUEST', `unknown fault ${JSON.stringify(order.fault)}: use one of ${FAULT_KINDS.join(', ')}`, 400);
    }
    if (this.abort.signal.aborted) throw new DrillError('DRILL_REFUSED', 'Understudy is shutting down', 503);
    const notLeader = this.deps.notLeader?.();
    if (notLeader !== undefined) throw new DrillError('DRILL_REFUSED', notLeader, 409);
    if (this.running.has(name)) throw new DrillError('DRILL_RUNNING', `a drill of ${name} is already running`, 409);
    const deploy = this.deps.deploys()?.view(name);
    if (deploy) throw new DrillError('DRILL_REFUSED', `a ${deploy.kind} of ${name} to ${deploy.to} is running; drill after it ends`, 409);
    const request = service.config.drill.request ?? service.config.deploy.smoke;
    if (!request) {
      throw new DrillError('DRILL_REFUSED', `service ${name} has no probe request: set drill.request (or deploy.smoke) to the request a drill sends`, 409);
    }
    if (order.fault === 'cold-start' && order.instance !== undefined) {
      throw new DrillError('BAD_REQUEST', 'a cold-start drill fails every warm instance; it takes no --instance', 400);
    }

    // Only a service as it should be is drilled: a drill must not turn a degraded service into an outage.
    const state = service.machineState();
    const unwell = Object.values(state.instances).filter((i) => (i.tier === 'cold' ? i.state !== 'stopped' && i.state !== 'ready' : i.state !== 'ready') || i.maintenance);
    if (state.active === null || unwell.length > 0) {
      const why = unwell.map((i) => `${i.name} is ${i.maintenance ? 'held for maintenance' : i.state}`).join(', ') || 'no instance is active';
      throw new DrillError('DRILL_REFUSED', `service ${name} is not healthy enough to drill: ${why}`, 409);
    }
    if (state.mode !== 'normal') {
      // Traffic on another instance than the preferred one (failed over, or a person's switchover): the drill could not put it back as it is.
      throw new DrillError('DRILL_REFUSED', `service ${name} is ${state.mode === 'pinned' ? 'pinned' : 'failed over'} to ${state.active}; drill it once traffic is back on its preferred instance`, 409);
    }
    const configOf = (instance: string) => service.config.instances.find((i) => i.name === instance)!;

    let hit: string[];
    if (order.fault === 'cold-start') {
      const cold = service.config.instances.filter((i) => i.tier === 'cold' && i.runtime.type !== 'external');
      if (cold.length === 0) throw new DrillError('DRILL_REFUSED', `service ${name} has no cold standby Understudy can start`, 409);
      if (cold.some((i) => state.instances[i.name]!.state !== 'stopped')) {
        throw new DrillError('DRILL_REFUSED', `a cold standby of ${name} is already running; a cold-start drill needs it stopped`, 409);
      }
      hit = service.config.instances.filter((i) => i.tier !== 'cold').map((i) => i.name);
    } else {
      const target = order.instance ?? state.active;
      if (target === null || !state.instances[target]) throw new DrillError('NOT_FOUND', `service ${name} has no instance ${order.instance}`, 404);
      const status = state.instances[target]!;
      if (status.state !== 'ready') throw new DrillError('DRILL_REFUSED', `${target} is ${status.state}; a drill fails a ready instance`, 409);
      const others = Object.values(state.instances).filter((i) => i.name !== target);
      if (others.length === 0) throw new DrillError('DRILL_REFUSED', `${target} is the only instance of ${name}: a drill would be an outage`, 409);
      hit = [target];
    }
    for (const instance of order.fault === 'kill' || order.fault === 'hang' || order.fault === 'cold-start' ? hit : []) {
      if (configOf(instance).runtime.type === 'external') {
        throw new DrillError('DRILL_REFUSED', `${instance} runs outside Understudy (runtime external), so it has no process to ${order.fault === 'hang' ? 'stop' : 'kill'}; drill it with error or slow`, 409);
      }
      const pid = service.pidOf(instance);
      if (pid === undefined) throw new DrillError('DRILL_REFUSED', `${instance} has no running process to fail`, 409);
      try {
        process.kill(pid, 0);
      } catch (error) {
        throw new DrillError('DRILL_REFUSED', `Understudy may not signal ${instance}'s process ${pid} (${(error as NodeJS.ErrnoException).code}); run it as the same user, or drill with error or slow`, 409);
      }
    }
    const startedAt = this.deps.clock.now();
    const id = `${new Date(startedAt).toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z')}-${name}-${order.fault}`;
    return { id, startedAt, service, fault: order.fault, hit, request, trigger: order.trigger ?? 'manual' };
  }

  private async scheduled(name: string): Promise<void> {
    // In a cluster every node has the schedule and the leader runs it: the others say nothing.
    if (this.deps.notLeader?.() !== undefined) return;
    const service = this.deps.services(name)!;
    const kinds = service.config.drill.faults ?? this.faultsFor(service);
    const turn = this.turns.get(name) ?? 0;
    const fault = kinds[turn % kinds.length]!;
    try {
      const { done } = this.begin({ service: name, fault, trigger: 'schedule' });
      // A refused drill keeps its turn; one that ran passes it on.
      this.turns.set(name, turn + 1);
      await done;
    } catch (error) {
      if (error instanceof DrillError) this.deps.publish(name, { type: 'drill-skipped', fault, reason: error.message });
      else this.deps.onError(`scheduled drill of ${name} failed`, error);
    }
  }

  // ---------------------------------------------------------------- running

  private async execute(plan: Plan): Promise<DrillReport> {
    const { id, startedAt, service, fault, hit, request } = plan;
    const name = service.config.name;
    const config = service.config.drill;
    const clock = this.deps.clock;
    const rel = (time = clock.now()) => round(time - startedAt);
    const deadline = AbortSignal.any([this.abort.signal, AbortSignal.timeout(config.timeout)]);
    const before = stateOf(service.machineState());
    const carried = hit.includes(before.active ?? '');
    const timeline = new Timeline(service.machineState(), startedAt);
    const marks: DrillMark[] = [];
    const notes: string[] = [];
    let faultAt: number | undefined;
    let detectedMs: number | null = null;
    const unsubscribe = this.deps.events.subscribe((event) => {
      if (event.service !== name) return;
      timeline.observe(event);
      if (NOTABLE.has(event.type)) marks.push({ at: rel(event.time), kind: 'event', label: describe(event) });
      // Noticed: a hit instance out of service, traffic moved off it, or (an error on a
      // server of named models) its model ejected, so that model's requests go elsewhere.
      const noticed =
        (event.type === 'instance-state' && hit.includes(event.instance) && OUT.has(event.to)) ||
        (event.type === 'model-ejected' && hit.includes(event.instance)) ||
        (event.type === 'active-changed' && event.from !== null && hit.includes(event.from));
      if (noticed && faultAt !== undefined && detectedMs === null) detectedMs = round(rel(event.time) - faultAt);
    });
    const why = plan.trigger === 'schedule' ? `drill.schedule (${config.schedule})` : 'requested';
    this.deps.publish(name, { type: 'drill-started', drill: id, fault, instances: hit, trigger: plan.trigger, reason: `${why}; up to ${config.timeout}ms` });

    const traffic = new ProbeTraffic({ ...this.deps.target(name), request }, { rate: config.rate, max: config.requests, now: () => rel() });
    const fault$ = new Fault(service, fault, hit, config);
    let liftedAt: number | null = null;
    let restoredMs: number | null = null;
    let job: DrillReport['job'] = null;
    let jobId: string | undefined;
    let samples: ProbeSample[] = [];
    const aborted = () => this.abort.signal.aborted;
    try {
      try {
        traffic.start();
        await delay(BASELINE_MS, undefined, { signal: deadline });
        await fault$.prepare(deadline);
        // Submitted at the last moment, so its items are in flight when the fault hits.
        jobId = await this.submitJob(name, id, request, config.jobItems).catch((error: unknown) => {
          notes.push(`no job was run: ${(error as Error).message}`);
          return undefined;
        });
        faultAt = rel();
        fault$.inject();
        marks.push({ at: faultAt, kind: 'fault', label: `${fault} ${hit.join(', ')}` });
        if (!carried) notes.push(`${hit.join(', ')} carried no traffic when the fault began, so clients were not affected`);

        await fault$.hold(deadline, faultAt, rel);
        liftedAt = fault$.liftable ? rel() : null;
        fault$.lift();
        if (liftedAt !== null) marks.push({ at: liftedAt, kind: 'lifted', label: 'fault lifted' });

        await this.restore(service, before, deadline, notes);
        restoredMs = round(rel() - faultAt);
        marks.push({ at: rel(), kind: 'restored', label: 'back as before' });
        await delay(AFTERGLOW_MS, undefined, { signal: deadline }).catch(() => {});
      } catch (error) {
        notes.push(aborted() ? 'cut short: Understudy is shutting down' : deadline.aborted ? `the drill did not end within ${config.timeout}ms` : `the drill stopped: ${(error as Error).message}`);
      } finally {
        try {
          fault$.lift();
        } catch (error) {
          notes.push(`could not lift the fault: ${(error as Error).message}`);
        }
      }
      if (restoredMs === null && faultAt !== undefined && !aborted()) {
        // Past its deadline or after an error, the service is still not left as the fault left it (a cold standby holding its GPU).
        await this.restore(service, before, AbortSignal.timeout(RESTORE_AFTER_MS), notes).then(
          () => notes.push('the service was put back after the drill ended'),
          (error: unknown) => notes.push(`could not put the service back: ${(error as Error).message}`),
        );
      }
      // The drill's failures were on purpose: they must not bring a real failure closer to a quarantine.
      for (const instance of hit) service.dispatch({ type: 'forgive', instance });
      samples = await traffic.stop(aborted());
      if (jobId !== undefined && !aborted()) {
        job = await this.jobOutcome(jobId, deadline, notes).catch((error: unknown) => {
          notes.push(`could not read the outcome of job ${jobId}: ${(error as Error).message}`);
          return null;
        });
      }
    } finally {
      unsubscribe();
    }
    faultAt ??= rel();
    if (detectedMs !== null) marks.push({ at: round(faultAt + detectedMs), kind: 'detected', label: `out of service after ${detectedMs} ms` });

    const durationMs = rel();
    const failedSamples = samples.filter((s) => !s.ok);
    const recoveredMs = recoveryMs(samples, faultAt, new Set(hit), carried);
    if (recoveredMs !== null && recoveredMs > 0) marks.push({ at: round(faultAt + recoveredMs), kind: 'recovered', label: `answered again after ${recoveredMs} ms` });
    const after = stateOf(service.machineState());
    const lastSent = samples.at(-1)?.sentAt ?? 0;
    const watchedUntil = restoredMs === null ? durationMs : faultAt + restoredMs + AFTERGLOW_MS / 2;
    const changed = differences(before, after);
    // A fault that lasts (or kills) on an instance Understudy should see: it must be noticed, not just survived.
    const mustNotice = carried || fault === 'kill' || fault === 'hang' || fault === 'cold-start';
    const problems = aborted()
      ? ['cut short: Understudy is shutting down']
      : [
          failedSamples.length > 0 && `${failedSamples.length} of ${samples.length} probe requests failed`,
          job && job.lost > 0 && `${job.lost} of ${job.items} job items were lost`,
          job && job.unfinished > 0 && `${job.unfinished} of ${job.items} job items had not finished when the drill ended`,
          restoredMs === null && 'the service was not put back as it was',
          changed.length > 0 && `the service is not as it was: ${changed.join(', ')}`,
          recoveredMs === null && 'no other instance answered after the fault',
          detectedMs === null && mustNotice && `Understudy never took ${hit.join(', ')} out of service`,
          traffic.exhausted && lastSent < watchedUntil &&
            `the probe traffic ran out at +${(lastSent / 1000).toFixed(1)}s, before the drill could see the service back: raise drill.requests (drill.rate × the seconds a drill takes)`,
        ].filter((p): p is string => typeof p === 'string');
    const report: DrillReport = {
      id,
      service: name,
      fault,
      instances: hit,
      trigger: plan.trigger,
      startedAt,
      durationMs,
      faultAt,
      liftedAt,
      passed: problems.length === 0,
      aborted: aborted(),
      verdict: problems.length === 0 ? `clients saw no failure; answered again after ${recoveredMs} ms; back as before after ${restoredMs} ms` : problems.join('; '),
      detectedMs,
      recoveredMs,
      restoredMs,
      requests: {
        sent: samples.length,
        ok: samples.length - failedSamples.length,
        failed: failedSamples.length,
        failures: failedSamples.slice(0, 10).map((s) => `+${(s.sentAt / 1000).toFixed(3)}s ${s.error ?? 'failed'}`),
        before: latencies(samples.filter((s) => s.sentAt < faultAt)),
        during: latencies(samples.filter((s) => s.sentAt >= faultAt && (restoredMs === null || s.sentAt <= faultAt + restoredMs))),
      },
      job,
      before,
      after,
      samples,
      spans: timeline.spans(rel()),
      marks: marks.sort((a, b) => a.at - b.at),
      notes,
    };
    const dir = await this.save(report).catch((error: unknown) => {
      this.deps.onError(`could not write the report of drill ${id}`, error);
      return '';
    });
    this.deps.publish(name, {
      type: 'drill-finished',
      drill: id,
      fault,
      instances: hit,
      passed: report.passed,
      aborted: report.aborted,
      recoveredMs,
      failedRequests: failedSamples.length,
      lostItems: job?.lost ?? 0,
      report: dir,
      reason: report.verdict,
    });
    return report;
  }

  /** Puts the service back as it was before the drill: the same instances ready, cold standbys stopped, the same one active. */
  private async restore(service: ServiceController, before: StateCopy, deadline: AbortSignal, notes: string[]): Promise<void> {
    const wasReady = Object.entries(before.states).filter(([, s]) => s === 'ready').map(([n]) => n);
    for (const [instance, status] of Object.entries(service.machineState().instances)) {
      // A drill's repeated failures may quarantine an instance, or leave it held: that was the drill, not the instance.
      if ((status.state === 'quarantined' || status.maintenance) && wasReady.includes(instance)) {
        if (status.state === 'quarantined') notes.push(`${instance} was quarantined during the drill and was resumed`);
        service.dispatch({ type: 'resume', instance });
      }
    }
    const readyAgain = (s: ServiceStatus) => wasReady.every((i) => s.instances[i]!.state === 'ready' && s.instances[i]!.admitted);
    await service.waitFor(readyAgain, service.config.drill.timeout, deadline, 'the instances ready again');
    const active = before.active;
    if (active !== null && service.machineState().active !== active) {
      const refused = service.dispatch({ type: 'switchover', to: active });
      if (refused !== undefined) throw new Error(`could not move traffic back to ${active}: ${refused}`);
    }
    // A cold standby that took over goes back to its place, stopped, once traffic has left it.
    for (const [instance, was] of Object.entries(before.states)) {
      const now = service.machineState().instances[instance]!;
      if (was !== 'stopped' || (now.state === 'stopped' && !now.maintenance)) continue;
      if (!now.maintenance) {
        const refused = service.dispatch({ type: 'drain', instance });
        if (refused !== undefined) throw new Error(`could not stop ${instance} again: ${refused}`);
      }
      try {
        await service.waitFor((s) => s.instances[instance]!.state === 'stopped', service.config.timeouts.total, deadline, `${instance} stopping`);
      } finally {
        // Stopped or not, it is not left held: a held cold standby would never start on demand again.
        service.dispatch({ type: 'resume', instance, start: false });
      }
    }
  }

  /** A small job through the service, submitted just before the fault so its items are in flight when it hits. */
  private async submitJob(service: string, drill: string, request: SmokeConfig, items: number): Promise<string | undefined> {
    const runner = this.deps.jobs();
    if (items === 0 || !runner) return undefined;
    const body = request.body === undefined ? {} : typeof request.body === 'string' ? { text: request.body } : { json: request.body };
    const { job } = await runner.submit(
      {
        service,
        name: `drill ${drill}`,
        defaults: { method: request.method, path: request.path, headers: request.headers },
        items: Array.from({ length: items }, () => body),
        concurrency: 1,
      },
      null,
    );
    return job.id;
  }

  /** Waits (bounded by the drill's deadline) for the drill's job to end and counts lost and redone items. */
  private async jobOutcome(id: string, deadline: AbortSignal, notes: string[]): Promise<DrillReport['job']> {
    const runner = this.deps.jobs()!;
    let unsubscribe = () => {};
    await new Promise<void>((resolve) => {
      const check = (view: JobView) => FINAL_STATES.has(view.state) && resolve();
      unsubscribe = runner.subscribe(id, check);
      void runner.view(id).then(check, () => resolve());
      if (deadline.aborted) resolve();
      deadline.addEventListener('abort', () => resolve(), { once: true });
    });
    unsubscribe();
    const view = await runner.view(id);
    if (!FINAL_STATES.has(view.state)) {
      notes.push(`the drill's job ${id} had not ended when the drill did (${view.done}/${view.total}); it was cancelled`);
      await runner.cancel(id).catch(() => {});
    }
    const items = await runner.options.store.items(id, 0, view.total);
    return {
      id,
      items: view.total,
      succeeded: items.filter((i) => i.state === 'succeeded').length,
      // Lost: the work is gone (every try failed). Unfinished: still pending when the drill ended.
      lost: items.filter((i) => i.state === 'failed').length,
      unfinished: items.filter((i) => i.state === 'pending').length,
      redone: items.filter((i) => (i.result?.attempts ?? 0) > 1).length,
    };
  }

  private async save(report: DrillReport): Promise<string> {
    const dir = this.dirOf(report.id);
    await mkdir(dir, { recursive: true });
    const files = { json: 'report.json', svg: 'timeline.svg' };
    const write = async (file: string, text: string) => {
      // Whole or not at all, and on disk before the drill-finished event points to it.
      const temp = path.join(dir, `${file}.tmp`);
      const handle = await open(temp, 'w');
      try {
        await handle.writeFile(text);
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(temp, path.join(dir, file));
    };
    await write('timeline.svg', renderTimelineSvg(report));
    await write('report.md', renderReportMarkdown(report, files));
    await write('report.json', `${JSON.stringify(report, null, 2)}\n`);
    await this.prune(report.service).catch((error: unknown) => this.deps.onError('could not remove old drill reports', error));
    return dir;
  }

  /** Keeps the newest KEEP_REPORTS reports of a service (ids sort by time). */
  private async prune(service: string): Promise<void> {
    const ofService = (name: string) => FAULT_KINDS.some((kind) => name.slice(17) === `${service}-${kind}`);
    const names = (await readdir(this.deps.dir)).filter(ofService).sort();
    for (const name of names.slice(0, Math.max(0, names.length - KEEP_REPORTS))) {
      await rm(path.join(this.deps.dir, name), { recursive: true, force: true });
    }
  }

  private async read(id: string): Promise<DrillReport> {
    return JSON.parse(await readFile(path.join(this.deps.dir, id, 'report.json'), 'utf8')) as DrillReport;
  }
}

interface Plan {
  id: string;
  startedAt: number;
  service: ServiceController;
  fault: FaultKind;
  hit: string[];
  request: SmokeConfig;
  trigger: 'manual' | 'schedule';
}

interface StateCopy {
  active: string | null;
  states: Record<string, InstanceState>;
}

function stateOf(state: ServiceStatus): StateCopy {
  return { active: state.active, states: Object.fromEntries(Object.values(state.instances).map((i) => [i.name, i.state])) };
}

/** How `after` differs from `before`, in words. */
function differences(before: StateCopy, after: StateCopy): string[] {
  const changed = Object.entries(before.states)
    .filter(([instance, state]) => after.states[instance] !== state)
    .map(([instance, state]) => `${instance} is ${after.states[instance]} (was ${state})`);
  if (after.active !== before.active) changed.unshift(`${after.active ?? 'no instance'} is active (was ${before.active})`);
  return changed;
}

function describe(event: UnderstudyEvent): string {
  switch (event.type) {
    case 'active-changed':
      return `active → ${event.to} (${event.kind})`;
    case 'restart-scheduled':
      return `${event.instance} restart in ${event.delayMs} ms`;
    case 'no-ready-instance':
      return 'no ready instance';
    default:
      return 'instance' in event ? `${event.type} ${event.instance}` : event.type;
  }
}

/** The instances' states over the drill, from the events, for the timeline picture. */
class Timeline {
  private readonly open = new Map<string, { state: InstanceState; from: number }>();
  private readonly closed: StateSpan[] = [];
  private active: string | null;

  constructor(
    state: ServiceStatus,
    private readonly startedAt: number,
  ) {
    this.active = state.active;
    for (const instance of Object.values(state.instances)) this.open.set(instance.name, { state: instance.state, from: 0 });
  }

  observe(event: UnderstudyEvent): void {
    const at = round(event.time - this.startedAt);
    if (event.type === 'instance-state') {
      this.cut(event.instance, at);
      this.open.set(event.instance, { state: event.to, from: at });
    } else if (event.type === 'active-changed' || event.type === 'no-ready-instance') {
      const changed = [this.active, event.type === 'active-changed' ? event.to : null].filter((n): n is string => n !== null);
      for (const name of changed) {
        const span = this.open.get(name);
        this.cut(name, at);
        if (span) this.open.set(name, { state: span.state, from: at });
      }
      this.active = event.type === 'active-changed' ? event.to : null;
    }
  }

  spans(end: number): StateSpan[] {
    const spans = [...this.closed];
    for (const [instance, span] of this.open) spans.push({ instance, state: span.state, from: span.from, to: end, active: instance === this.active });
    return spans.sort((a, b) => a.from - b.from);
  }

  private cut(instance: string, at: number): void {
    const span = this.open.get(instance);
    if (!span) return;
    if (at > span.from) this.closed.push({ instance, state: span.state, from: span.from, to: at, active: instance === this.active });
    this.open.delete(instance);
  }
}

/** The fault itself: how it is put on the instances, held, and lifted. */
class Fault {
  private stopped: string[] = [];
  private injected = false;
  private held: string[] = [];
  /** Ends the cold-start's watch for the active instance going down, when the fault is lifted. */
  private readonly watch = new AbortController();

  constructor(
    private readonly service: ServiceController,
    private readonly kind: FaultKind,
    private readonly hit: string[],
    private readonly config: ServiceController['config']['drill'],
  ) {}

  /** Whether the fault lasts until lifted (a kill is over at once). */
  get liftable(): boolean {
    return this.kind !== 'kill';
  }

  /** What must happen before the fault (a cold-start holds the warm standbys first: not a failure clients see). */
  async prepare(deadline: AbortSignal): Promise<void> {
    if (this.kind !== 'cold-start') return;
    const { service } = this;
    const active = service.machineState().active!;
    for (const instance of this.hit.filter((i) => i !== active)) {
      const refused = service.dispatch({ type: 'drain', instance });
      if (refused !== undefined) throw new Error(`could not hold ${instance}: ${refused}`);
      this.held.push(instance);
    }
    await service.waitFor((s) => this.held.every((i) => s.instances[i]!.state === 'stopped'), this.config.timeout, deadline, 'the warm standbys held');
  }

  inject(): void {
    const { service, hit } = this;
    switch (this.kind) {
      case 'kill':
        service.signal(hit[0]!, 'SIGKILL');
        return;
      case 'hang':
        service.signal(hit[0]!, 'SIGSTOP');
        this.stopped.push(hit[0]!);
        return;
      case 'error':
        service.injectFault(hit[0]!, { kind: 'error', status: 500 });
        this.injected = true;
        return;
      case 'slow':
        // Slow, not timed out: below timeouts.firstByte unless the config says otherwise (the config refuses that).
        service.injectFault(hit[0]!, { kind: 'slow', delayMs: this.config.delay ?? Math.min(5000, this.service.config.timeouts.firstByte / 2) });
        this.injected = true;
        return;
      case 'cold-start':
        this.loseActive();
        return;
    }
  }

  /** Holds the fault: `hold` for a lasting fault; for a cold-start, until the cold standby has taken the traffic. */
  async hold(deadline: AbortSignal, faultAt: number, now: () => number): Promise<void> {
    if (this.kind === 'kill') {
      // Over at once, but its exit is seen a moment later: the service is not "back" before it has gone.
      const gone = (s: ServiceStatus) => this.hit.every((i) => s.instances[i]!.state !== 'ready');
      await this.service.waitFor(gone, this.config.timeout, deadline, 'the killed instance noticed');
      return;
    }
    if (this.kind === 'cold-start') {
      const cold = this.service.config.instances.filter((i) => i.tier === 'cold').map((i) => i.name);
      await this.service.waitFor((s) => s.active !== null && cold.includes(s.active), this.config.timeout, deadline, 'a cold standby taking the traffic');
    }
    const left = this.config.hold - (now() - faultAt);
    if (left > 0) await delay(left, undefined, { signal: deadline });
  }

  /** Lifts whatever is still in place; safe to call twice. Throws only when a stopped process cannot be continued. */
  lift(): void {
    this.watch.abort();
    if (this.injected) {
      for (const instance of this.hit) this.service.injectFault(instance, undefined);
      this.injected = false;
    }
    for (const instance of this.held.splice(0)) this.service.dispatch({ type: 'resume', instance });
    for (const instance of this.stopped.splice(0)) {
      try {
        this.service.signal(instance, 'SIGCONT');
      } catch (error) {
        // Stopped and restarted by the supervisor meanwhile (it stops a hung instance): nothing left to wake.
        if (!/no running|ESRCH/.test(`${(error as NodeJS.ErrnoException).code ?? ''} ${(error as Error).message}`)) throw error;
      }
    }
  }

  /**
   * The last warm instance lost, as when the GPU box goes: the active one is killed and
   * held once it is down, before its restart, so that only a cold standby can answer.
   */
  private loseActive(): void {
    const { service } = this;
    const active = service.machineState().active!;
    const fallen = (s: ServiceStatus) => ['down', 'quarantined'].includes(s.instances[active]!.state);
    // Resolved inside the dispatch that made it fall, so before the restart timer; never after the fault is lifted.
    const hold = () => {
      if (this.watch.signal.aborted || this.held.includes(active)) return;
      if (service.dispatch({ type: 'drain', instance: active }) === undefined) this.held.push(active);
    };
    void service.waitFor(fallen, this.config.timeout, this.watch.signal).then(hold, () => {});
    service.signal(active, 'SIGKILL');
  }
}
