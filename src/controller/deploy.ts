import { request } from 'undici';
import type { SmokeConfig } from '../config/index.js';
import { byPreference, isRoutable, type Clock, type DeployStep, type EventBody, type InstanceStatus } from '../core/index.js';
import { judge } from '../drill/index.js';
import { ReleaseError, type ReleaseBook, type ReleaseRecord } from './releases.js';
import type { ServiceController } from './service.js';

/** What deploys need of backups: a snapshot before a change, known-good marks, and a restore on rollback. */
export interface DeployBackups {
  /** A snapshot of what `service` needs at `version`; undefined when the service keeps no backups. */
  snapshot(service: string, version: string, trigger: 'deploy' | 'known-good'): Promise<string | undefined>;
  /** Marks a snapshot as known-good, so retention never deletes the newest one. */
  markKnownGood(snapshot: string): Promise<void>;
  /** Puts back what `version` needs (files, image) when it is missing or changed; says what it did. */
  ensure(service: string, version: string): Promise<string | undefined>;
}

export interface DeployView {
  service: string;
  kind: 'deploy' | 'rollback';
  from: string;
  to: string;
  step: DeployStep | 'rollback';
  startedAt: number;
  /** End of the watch window, while watching. */
  watchUntil: number | null;
  /** Attempts and failures on the new version during the watch. */
  attempts: number;
  failed: number;
  downs: number;
}

interface Running {
  view: DeployView;
  record: ReleaseRecord;
  abort: AbortController;
  /** The first failure seen on the new version, for the rollback time. */
  firstFailureAt: number | undefined;
  /** Set when a manual rollback stops this deploy: it unwinds quietly and the rollback carries on. */
  takenOver: boolean;
  done: Promise<void>;
}

const WATCH_TICK_MS = 200;

/**
 * Rolls a new version across a service's instances and back again. A deploy moves
 * the standbys first, one at a time, each checked (health, version, smoke request)
 * before any traffic; then traffic moves to the new version while the previous
 * active instance keeps the old version ready. During the watch window a crash loop,
 * failing probes or too many failed requests roll the service back without a person;
 * a version that survives the window is rolled onto the rest and becomes known-good.
 */
export class Deployer {
  private readonly running = new Map<string, Running>();
  private closed = false;

  constructor(
    private readonly deps: {
      services: (name: string) => ServiceController | undefined;
      book: ReleaseBook;
      backups?: DeployBackups;
      clock: Clock;
      publish(service: string, event: EventBody): void;
      onError(message: string, error: unknown): void;
      /** Why the service must not change now (a drill runs), or undefined. */
      busy?: (service: string) => string | undefined;
    },
  ) {}

  view(service: string): DeployView | undefined {
    const running = this.running.get(service);
    return running && { ...running.view };
  }

  /** Starts a deploy of `version`; resolves once it has begun, with its view. It goes on in the background. */
  async deploy(serviceName: string, version: string, reason = 'deploy requested'): Promise<DeployView> {
    const service = this.serviceOrThrow(serviceName);
    const from = service.release;
    if (from === undefined) throw new ReleaseError('DEPLOY_REFUSED', `service ${serviceName} pins no version: set version.expect and its probe`, 409);
    if (from === version) throw new ReleaseError('DEPLOY_REFUSED', `service ${serviceName} already runs version ${version}`, 409);
    const external = service.config.instances.filter((i) => i.runtime.type === 'external').map((i) => i.name);
    if (external.length > 0) {
      throw new ReleaseError('DEPLOY_REFUSED', `Understudy does not run ${external.join(', ')} (runtime external), so it cannot change their version`, 409);
    }
    if (service.config.instances.length < 2) {
      throw new ReleaseError('DEPLOY_REFUSED', `service ${serviceName} has one instance: a deploy needs a standby that keeps serving while an instance changes version`, 409);
    }
    const running = this.begin(service, 'deploy', from, version, reason);
    running.done = this.runDeploy(service, running).catch((error: unknown) => this.deps.onError(`deploy of ${serviceName} ${version} failed`, error));
    return { ...running.view };
  }

  /** Rolls back to `to` (default: the newest known-good other than the current version), ending any deploy. */
  async rollback(serviceName: string, reason: string, to?: string): Promise<DeployView> {
    const service = this.serviceOrThrow(serviceName);
    const current = service.release;
    if (current === undefined) throw new ReleaseError('DEPLOY_REFUSED', `service ${serviceName} pins no version`, 409);
    const deploying = this.running.get(serviceName);
    if (deploying?.view.kind === 'rollback' || deploying?.takenOver) {
      throw new ReleaseError('DEPLOY_RUNNING', `a rollback of ${serviceName} is already running`, 409);
    }
    const target = to ?? (deploying ? deploying.view.from : this.deps.book.lastKnownGood(serviceName, current));
    if (target === undefined) throw new ReleaseError('NO_KNOWN_GOOD', `service ${serviceName} has no known-good version other than ${current} to roll back to`, 409);
    if (!deploying && target === current && [...service.releases().values()].every((v) => v === target)) {
      throw new ReleaseError('DEPLOY_REFUSED', `service ${serviceName} already runs version ${target} everywhere`, 409);
    }
    if (deploying) {
      // The deploy unwinds first (its running entry stays, so nothing else begins meanwhile), then the rollback undoes it.
      deploying.takenOver = true;
      deploying.abort.abort(new Error(reason));
      await deploying.done;
      // It may have finished just before the abort reached it: then it stays a finished deploy, rolled back like any.
      if (deploying.record.outcome === 'running') {
        this.finish(deploying, 'rolled-back', reason);
        this.deps.publish(serviceName, { type: 'deploy-failed', from: deploying.view.from, to: deploying.view.to, reason: `stopped by a rollback: ${reason}` });
      }
      if (this.running.get(serviceName) === deploying) this.running.delete(serviceName);
    }
    const running = this.begin(service, 'rollback', deploying?.view.to ?? current, target, reason);
    running.firstFailureAt = deploying?.firstFailureAt;
    running.done = this.runRollback(service, running).catch((error: unknown) => this.deps.onError(`rollback of ${serviceName} failed`, error));
    return { ...running.view };
  }

  /** Resolves when the service's deploy or rollback (if any) has ended. */
  async settled(service: string): Promise<void> {
    for (let running = this.running.get(service); running; running = this.running.get(service)) await running.done;
  }

  async close(): Promise<void> {
    this.closed = true;
    const all = [...this.running.values()];
    for (const running of all) running.abort.abort(new Error('Understudy is shutting down'));
    await Promise.all(all.map((r) => r.done));
  }

  // ---------------------------------------------------------------- deploy

  private async runDeploy(service: ServiceController, running: Running): Promise<void> {
    const { from, to } = running.view;
    const name = service.config.name;
    const signal = running.abort.signal;
    try {
      this.step(running, 'backup', null, `backing up version ${from} before the deploy`);
      running.record.snapshot = (await this.deps.backups?.snapshot(name, from, 'deploy')) ?? null;
      await this.deps.book.save();

      // The active instance keeps the old version ready; the others move first, standbys before the rest.
      const state = service.machineState();
      const ordered = Object.values(state.instances).sort(byPreference).reverse();
      const fallback = state.active ?? ordered[ordered.length - 1]!.name;
      const first = ordered.filter((i) => i.name !== fallback);
      // Not admitted before the switch: an instance on the new version takes no traffic until every one is checked.
      for (const instance of first) {
        signal.throwIfAborted();
        await this.upgrade(service, running, instance.name, instance.tier === 'cold');
      }

      signal.throwIfAborted();
      const target = Object.values(service.machineState().instances)
        .filter((i) => i.name !== fallback && i.tier !== 'cold')
        .sort(byPreference)[0];
      service.dispatch({ type: 'expect', versions: [to, from] });
      if (target) {
        const refused = service.dispatch({ type: 'switchover', to: target.name });
        if (refused !== undefined) throw new Error(`could not move traffic to ${target.name}: ${refused}`);
        this.step(running, 'switch', target.name, `traffic moved to ${target.name} on version ${to}; ${fallback} keeps version ${from} ready`);
      }

      const verdict = await this.watch(service, running);
      if (verdict !== undefined) {
        this.deps.publish(name, { type: 'deploy-failed', from, to, reason: `in service: ${verdict}` });
        void this.rollbackAfter(service, running, verdict);
        return;
      }

      signal.throwIfAborted();
      await this.upgrade(service, running, fallback, service.config.instances.find((i) => i.name === fallback)!.tier === 'cold');
      service.dispatch({ type: 'expect', versions: [to] });
      // Traffic goes back to the preferred instance, now on the new version.
      const preferred = Object.values(service.machineState().instances).sort(byPreference)[0]!;
      if (service.machineState().active !== preferred.name) service.dispatch({ type: 'switchover', to: preferred.name });
      this.step(running, 'complete', null, `every instance runs version ${to}`);

      // The last point a person's rollback can stop the deploy; after it the version is known-good.
      signal.throwIfAborted();
      this.deps.book.markKnownGood(name, to);
      this.deps.book.setCurrent(name, to);
      await this.deps.book.save();
      const snapshot = await this.deps.backups?.snapshot(name, to, 'known-good').catch((error: unknown) => {
        this.deps.onError(`could not back up the known-good version ${to} of ${name}`, error);
        return undefined;
      });
      if (snapshot) {
        await this.deps.backups!.markKnownGood(snapshot).catch((error: unknown) => this.deps.onError(`could not mark snapshot ${snapshot} known-good`, error));
      }
      this.step(running, 'known-good', null, `version ${to} survived the watch window and is known-good${snapshot ? ` (snapshot ${snapshot})` : ''}`);
      this.finish(running, 'known-good', `version ${to} is known-good`);
      this.deps.publish(name, { type: 'deploy-finished', to, reason: `version ${to} runs everywhere and is known-good` });
      await this.deps.book.save();
    } catch (error) {
      if (running.takenOver) return; // a manual rollback takes over from here
      const reason = (error as Error).message;
      this.deps.publish(name, { type: 'deploy-failed', from, to, reason });
      if (this.closed) {
        this.finish(running, 'failed', `interrupted: ${reason}`);
        await this.deps.book.save().catch(() => {});
        return;
      }
      void this.rollbackAfter(service, running, `deploy failed: ${reason}`);
    }
  }

  /** Moves one instance to the new version and checks it before it may take traffic. */
  private async upgrade(service: ServiceController, running: Running, instance: string, cold: boolean): Promise<void> {
    const { to } = running.view;
    this.step(running, 'upgrade', instance, `moving ${instance} to version ${to}`);
    const served = await service.reinstall(instance, to, { start: true, signal: running.abort.signal });
    if (service.config.version && served !== to) throw new Error(`${instance} serves version ${served ?? 'unknown'} after the move to ${to}`);
    const smoke = service.config.deploy.smoke;
    if (smoke) {
      const url = service.config.instances.find((i) => i.name === instance)!.url;
      const problem = await smokeTest(smoke, url, running.abort.signal);
      if (problem !== undefined) throw new Error(`smoke request to ${instance} failed: ${problem}`);
      this.step(running, 'smoke', instance, `${instance} answered the smoke request`);
    }
    if (cold) {
      // Checked; back to its place as a stopped standby, ready to start at the new version.
      await service.reinstall(instance, to, { start: false, signal: running.abort.signal });
    }
  }

  /** Resolves with a reason to roll back, or undefined once the window has passed cleanly. */
  private async watch(service: ServiceController, running: Running): Promise<string | undefined> {
    const { to } = running.view;
    const name = service.config.name;
    const { watch, rollback } = service.config.deploy;
    const until = this.deps.clock.now() + watch;
    running.view.watchUntil = until;
    this.step(running, 'watch', null, `watching version ${to} for ${watch}ms`);
    const onNew = () => [...service.releases()].filter(([, v]) => v === to).map(([n]) => n);
    // Falls counted from here: an instance that went down while it was checked was already judged then.
    const downsBefore = new Map(onNew().map((instance) => [instance, service.outcomes(instance).downs]));
    for (;;) {
      running.abort.signal.throwIfAborted();
      let attempts = 0;
      let failed = 0;
      let downs = 0;
      for (const instance of onNew()) {
        const outcomes = service.outcomes(instance);
        attempts += outcomes.attempts;
        failed += outcomes.failed;
        const fell = outcomes.downs - (downsBefore.get(instance) ?? 0);
        if (fell > 0) {
          downs += fell;
          running.firstFailureAt ??= this.deps.clock.now();
        }
        if (outcomes.firstFailedAt !== undefined) {
          running.firstFailureAt = Math.min(running.firstFailureAt ?? Infinity, outcomes.firstFailedAt);
        }
      }
      running.view.attempts = attempts;
      running.view.failed = failed;
      running.view.downs = downs;
      const quarantined = onNew().filter((instance) => service.machineState().instances[instance]!.state === 'quarantined');
      if (quarantined.length > 0) {
        return `${quarantined.join(', ')} on version ${to} crash-looped and was quarantined during the watch window`;
      }
      if (running.view.downs >= rollback.downs) {
        return `instances on version ${to} went down ${running.view.downs} times during the watch window (limit ${rollback.downs})`;
      }
      if (attempts >= rollback.minRequests && failed / attempts >= rollback.errorRate) {
        return `${failed} of ${attempts} attempts on version ${to} failed (${Math.round((failed / attempts) * 100)}%, limit ${Math.round(rollback.errorRate * 100)}%)`;
      }
      if (this.deps.clock.now() >= until) return undefined;
      await new Promise<void>((resolve) => {
        const signal = running.abort.signal;
        const onAbort = () => {
          timer.cancel();
          resolve();
        };
        const timer = this.deps.clock.setTimeout(() => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        }, Math.min(WATCH_TICK_MS, until - this.deps.clock.now()));
        signal.addEventListener('abort', onAbort, { once: true });
      });
      if (!this.deps.services(name)) throw new Error(`service ${name} is gone`);
    }
  }

  // ---------------------------------------------------------------- rollback

  private async rollbackAfter(service: ServiceController, deploying: Running, reason: string): Promise<void> {
    const name = service.config.name;
    if (deploying.takenOver) return; // a person's rollback is on its way
    this.finish(deploying, 'rolled-back', reason);
    let running: Running;
    try {
      running = this.begin(service, 'rollback', deploying.view.to, deploying.view.from, reason);
    } catch (error) {
      this.deps.onError(`rollback of ${name} could not begin`, error);
      return;
    }
    running.firstFailureAt = deploying.firstFailureAt;
    running.done = this.runRollback(service, running);
    await running.done.catch((error: unknown) => this.deps.onError(`rollback of ${name} failed`, error));
  }

  private async runRollback(service: ServiceController, running: Running): Promise<void> {
    const { from, to } = running.view;
    const name = service.config.name;
    const startedAt = this.deps.clock.now();
    this.deps.publish(name, { type: 'rollback-started', from, to, reason: running.record.reason });
    // With an instance already serving the good version (the old active one during a watch), traffic leaves
    // the bad version at once. Without one, the running version serves until the good one is up, so a good
    // version that fails its checks (its files gone, its image unpullable) costs no outage.
    const serving = service.machineState();
    const goodServes = [...service.releases()].some(([i, v]) => v === to && isRoutable(serving.instances[i]!) && serving.instances[i]!.admitted);
    const moved: InstanceStatus[] = [];
    try {
      service.dispatch({ type: 'expect', versions: goodServes ? [to] : [to, from] });
      // A restore that fails does not stop the rollback: the version's files may still be in place.
      await this.deps.backups?.ensure(name, to).catch((error: unknown) => this.deps.onError(`rollback of ${name}: could not put back version ${to}`, error));
      const state = service.machineState();
      const moving = [...service.releases()]
        .filter(([, version]) => version !== to)
        .map(([instance]) => state.instances[instance]!)
        .sort((a, b) => Number(a.name === state.active) - Number(b.name === state.active) || byPreference(a, b));
      for (const instance of moving) {
        moved.push(instance);
        await service.reinstall(instance.name, to, { start: instance.tier !== 'cold' });
      }
      service.dispatch({ type: 'expect', versions: [to] });
      this.deps.book.setCurrent(name, to);
      const durationMs = this.deps.clock.now() - (running.firstFailureAt ?? startedAt);
      this.finish(running, 'done', `version ${to} runs everywhere`);
      this.deps.publish(name, { type: 'rollback-finished', from, to, durationMs, ok: true, reason: `version ${to} runs everywhere after ${durationMs}ms` });
    } catch (error) {
      let reason = `rollback to ${to} did not finish: ${(error as Error).message}`;
      if (!goodServes && !this.closed) {
        // Nothing ever served the good version: what was moved goes back, and the service stays as it ran.
        for (const instance of moved) {
          await service.reinstall(instance.name, from, { start: instance.tier !== 'cold' }).catch((undo: unknown) => this.deps.onError(`could not move ${instance.name} back to ${from}`, undo));
        }
        service.dispatch({ type: 'expect', versions: [from] });
        reason += `; the service stays on version ${from}`;
      }
      this.finish(running, 'failed', reason);
      const durationMs = this.deps.clock.now() - startedAt;
      this.deps.publish(name, { type: 'rollback-finished', from, to, durationMs, ok: false, reason });
    } finally {
      await this.deps.book.save().catch((error: unknown) => this.deps.onError('could not record the rollback', error));
    }
  }

  // ---------------------------------------------------------------- bookkeeping

  private begin(service: ServiceController, kind: 'deploy' | 'rollback', from: string, to: string, reason: string): Running {
    const name = service.config.name;
    if (this.closed) throw new ReleaseError('DEPLOY_REFUSED', 'Understudy is shutting down', 503);
    if (this.running.has(name)) {
      const other = this.running.get(name)!.view;
      throw new ReleaseError('DEPLOY_RUNNING', `a ${other.kind} of ${name} to ${other.to} is running (step ${other.step})`, 409);
    }
    const busy = this.deps.busy?.(name);
    if (busy !== undefined) throw new ReleaseError('DEPLOY_RUNNING', busy, 409);
    const now = this.deps.clock.now();
    const record = this.deps.book.begin(name, { kind, from, to, startedAt: now, reason, snapshot: null });
    const running: Running = {
      view: { service: name, kind, from, to, step: kind === 'deploy' ? 'backup' : 'rollback', startedAt: now, watchUntil: null, attempts: 0, failed: 0, downs: 0 },
      record,
      abort: new AbortController(),
      firstFailureAt: undefined,
      takenOver: false,
      done: Promise.resolve(),
    };
    this.running.set(name, running);
    if (kind === 'deploy') this.deps.publish(name, { type: 'deploy-started', from, to, reason });
    void this.deps.book.save().catch((error: unknown) => this.deps.onError(`could not record the ${kind}`, error));
    return running;
  }

  private step(running: Running, step: DeployStep, instance: string | null, reason: string): void {
    running.view.step = step;
    this.deps.publish(running.view.service, { type: 'deploy-step', to: running.view.to, instance, step, reason });
  }

  private finish(running: Running, outcome: ReleaseRecord['outcome'], reason: string): void {
    this.deps.book.end(running.record, outcome, reason, this.deps.clock.now());
    // A deploy a rollback is taking over keeps its entry until the rollback begins: nothing may start in between.
    if (this.running.get(running.view.service) === running && !running.takenOver) this.running.delete(running.view.service);
  }

  private serviceOrThrow(name: string): ServiceController {
    const service = this.deps.services(name);
    if (!service) throw new ReleaseError('NOT_FOUND', `no service named ${name}`, 404);
    return service;
  }
}

/** Sends the smoke request to one instance; returns what was wrong, or undefined. */
export async function smokeTest(smoke: SmokeConfig, base: string, signal?: AbortSignal): Promise<string | undefined> {
  const url = new URL(smoke.path, base);
  const body = smoke.body === undefined ? undefined : typeof smoke.body === 'string' ? smoke.body : JSON.stringify(smoke.body);
  const headers = { ...(body !== undefined && typeof smoke.body !== 'string' ? { 'content-type': 'application/json' } : {}), ...smoke.headers };
  const timeout = AbortSignal.timeout(smoke.timeout);
  try {
    const answer = await request(url, {
      method: smoke.method,
      headers,
      body,
      signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
    });
    const problem = judge(smoke, answer.statusCode, await answer.body.text());
    return problem === null ? undefined : `${smoke.method} ${smoke.path} ${problem}`;
  } catch (error) {
    if (timeout.aborted) return `${smoke.method} ${smoke.path} did not answer within ${smoke.timeout}ms`;
    return `${smoke.method} ${smoke.path}: ${(error as Error).message}`;
  }
}
