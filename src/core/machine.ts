import type { InstanceConfig, ServiceConfig } from '../config/index.js';
import type {
  Action,
  EventBody,
  Input,
  InstanceState,
  InstanceStatus,
  MoveKind,
  ServiceStatus,
  Step,
} from './types.js';

/*
 * The failover state machine: `(config, state, input, now) → (state, actions)`.
 * No I/O, no timers, no clock of its own. Deadlines live in the state as times;
 * the controller asks `nextDeadline` when to send the next `tick`.
 */

const TIER_RANK = { primary: 0, hot: 1, cold: 2 } as const;
const ROUTABLE: ReadonlySet<InstanceState> = new Set(['ready', 'suspect']);
const RUNNING: ReadonlySet<InstanceState> = new Set(['starting', 'ready', 'suspect', 'draining']);

export function initialState(config: ServiceConfig, now: number): ServiceStatus {
  const instances: Record<string, InstanceStatus> = {};
  for (const instance of config.instances) {
    instances[instance.name] = {
      name: instance.name,
      tier: instance.tier,
      priority: instance.priority,
      supervised: instance.runtime.type !== 'external',
      state: 'stopped',
      since: now,
      reason: 'not started yet',
      successes: 0,
      failures: 0,
      version: undefined,
      admitted: config.version === undefined,
      versionProblem: undefined,
      failureTimes: [],
      restarts: 0,
      startDeadline: undefined,
      restartAt: undefined,
      ejectedUntil: undefined,
      maintenance: false,
    };
  }
  const expected = config.version ? [config.version.expect] : [];
  return { name: config.name, active: null, mode: 'normal', everActive: false, expected, instances };
}

/** Instances ordered by preference: tier, then priority (lower first), then name. */
export function byPreference(a: InstanceStatus, b: InstanceStatus): number {
  return TIER_RANK[a.tier] - TIER_RANK[b.tier] || a.priority - b.priority || a.name.localeCompare(b.name);
}

export function isRoutable(instance: InstanceStatus): boolean {
  return ROUTABLE.has(instance.state) && instance.admitted;
}

/** Routable instances, best first. The router uses this order for retries. */
export function routable(state: ServiceStatus): InstanceStatus[] {
  return Object.values(state.instances).filter(isRoutable).sort(byPreference);
}

export function step(config: ServiceConfig, state: ServiceStatus, input: Input, now: number): Step {
  const run = new Run(config, structuredClone(state), now);
  const rejected = run.apply(input);
  if (rejected !== undefined) return { state, actions: [], rejected };
  run.reconcile();
  return { state: run.state, actions: run.actions };
}

/** The earliest time at which a `tick` can change something, or undefined. */
export function nextDeadline(config: ServiceConfig, state: ServiceStatus): number | undefined {
  let next: number | undefined;
  const consider = (time: number | undefined) => {
    if (time !== undefined && (next === undefined || time < next)) next = time;
  };
  for (const instance of Object.values(state.instances)) {
    if (instance.state === 'starting') consider(instance.startDeadline);
    if (instance.state === 'down') consider(instance.restartAt);
  }
  const failback = config.failback;
  if (failback.policy === 'after' && state.mode === 'failed-over') {
    const preferred = preferredInstance(state);
    if (preferred && preferred.name !== state.active && isRoutable(preferred) && preferred.state === 'ready') {
      consider(preferred.since + failback.stableMs);
    }
  }
  return next;
}

/**
 * The instance traffic belongs on when all is well: the best-ranked one, even while
 * it is down or quarantined, so that its return follows the failback policy.
 */
function preferredInstance(state: ServiceStatus): InstanceStatus | undefined {
  return Object.values(state.instances).sort(byPreference)[0];
}

class Run {
  readonly actions: Action[] = [];

  constructor(
    private readonly config: ServiceConfig,
    readonly state: ServiceStatus,
    private readonly now: number,
  ) {}

  /** Applies one input; returns a reason when a command is refused. */
  apply(input: Input): string | undefined {
    switch (input.type) {
      case 'boot':
        for (const instance of this.instances()) {
          if (instance.tier !== 'cold' && instance.state === 'stopped') this.start(instance, 'service started');
        }
        return undefined;
      case 'tick':
        this.tick();
        return undefined;
      case 'probe':
        return this.withInstance(input.instance, (instance) => this.probe(instance, input.probe, input.ok, input.detail));
      case 'version':
        return this.withInstance(input.instance, (instance) => this.version(instance, input.version, input.detail));
      case 'passive':
        return this.withInstance(input.instance, (instance) => this.passive(instance, input.hard, input.reason));
      case 'exited':
        return this.withInstance(input.instance, (instance) => this.exited(instance, input.code, input.signal));
      case 'start-failed':
        return this.withInstance(input.instance, (instance) => {
          this.emit({ type: 'start-failed', instance: instance.name, reason: input.reason });
          if (instance.state === 'starting') this.fail(instance, input.reason);
        });
      case 'switchover':
        return this.switchover(input.to, input.reason);
      case 'drain':
        return this.withInstance(input.instance, (instance) => this.drain(instance));
      case 'drained':
        return this.withInstance(input.instance, (instance) => {
          if (instance.state !== 'draining') return;
          if (instance.supervised) this.actions.push({ type: 'stop', instance: instance.name, reason: 'drained' });
          this.enter(instance, 'stopped', instance.maintenance ? 'drained for maintenance' : 'drained; back in its place, stopped');
        });
      case 'resume':
        return this.withInstance(input.instance, (instance) => this.resume(instance, input.start ?? true));
      case 'expect':
        return this.expect(input.versions);
      case 'forgive':
        return this.withInstance(input.instance, (instance) => {
          instance.failureTimes = [];
          instance.restarts = 0;
        });
    }
  }

  /** Moves traffic where the rules say it belongs, after any input. */
  reconcile(): void {
    const { state } = this;
    const candidates = routable(state);
    const best = candidates[0];
    const current = state.active === null ? undefined : state.instances[state.active];

    if (current && !isRoutable(current)) {
      if (best) this.move(best, 'failover', `${current.name} is ${current.state}: ${current.reason}`);
      else this.lose(`${current.name} is ${current.state}: ${current.reason}`);
      return;
    }
    if (!current) {
      if (best) this.move(best, state.everActive ? 'recovered' : 'initial', `${best.name} is ready`);
      else this.startColdStandbys();
      return;
    }
    if (!best || best.name === current.name || byPreference(best, current) >= 0) return;
    if (state.mode === 'normal') {
      this.move(best, 'initial', `${best.name} is preferred and ready`);
    } else if (state.mode === 'failed-over' && this.config.failback.policy === 'after') {
      const stableMs = this.config.failback.stableMs;
      const preferred = preferredInstance(state);
      if (preferred === best && best.state === 'ready' && this.now - best.since >= stableMs) {
        this.move(best, 'failback', `${best.name} has been ready for ${stableMs}ms`);
      }
    }
  }

  private instances(): InstanceStatus[] {
    return Object.values(this.state.instances);
  }

  private spec(instance: InstanceStatus): InstanceConfig {
    return this.config.instances.find((i) => i.name === instance.name)!;
  }

  private withInstance(name: string, fn: (instance: InstanceStatus) => string | void): string | undefined {
    const instance = this.state.instances[name];
    if (!instance) return `service ${this.state.name} has no instance ${name}`;
    return fn(instance) ?? undefined;
  }

  private emit(event: EventBody): void {
    this.actions.push({ type: 'emit', event });
  }

  private enter(instance: InstanceStatus, to: InstanceState, reason: string): void {
    const from = instance.state;
    instance.reason = reason;
    if (from === to) return;
    instance.state = to;
    instance.since = this.now;
    this.emit({ type: 'instance-state', instance: instance.name, from, to, reason });
  }

  private start(instance: InstanceStatus, reason: string): void {
    instance.restartAt = undefined;
    instance.successes = 0;
    instance.failures = 0;
    instance.startDeadline = this.now + this.spec(instance).probes.startup.budget;
    this.enter(instance, 'starting', reason);
    this.actions.push({ type: 'start', instance: instance.name });
  }

  /** The instance becomes able to serve: its version is checked before it is admitted. */
  private becomeReady(instance: InstanceStatus, reason: string): void {
    instance.failures = 0;
    instance.successes = 0;
    instance.restarts = 0;
    instance.startDeadline = undefined;
    instance.ejectedUntil = undefined;
    if (this.config.version) {
      instance.version = undefined;
      instance.admitted = false;
      instance.versionProblem = undefined;
      this.actions.push({ type: 'check-version', instance: instance.name });
    }
    this.enter(instance, 'ready', reason);
  }

  private tick(): void {
    for (const instance of this.instances()) {
      if (instance.state === 'starting' && instance.startDeadline !== undefined && this.now >= instance.startDeadline) {
        const budget = this.spec(instance).probes.startup.budget;
        this.fail(instance, `start-up budget of ${budget}ms ran out before the startup probe passed`);
      } else if (instance.state === 'down' && instance.restartAt !== undefined && this.now >= instance.restartAt) {
        this.start(instance, `restart ${instance.restarts}`);
      }
    }
  }

  private probe(instance: InstanceStatus, probe: 'startup' | 'ready', ok: boolean, detail: string): void {
    const { rise, fall } = this.spec(instance).probes.ready;
    if (probe === 'startup') {
      if (instance.state === 'starting' && ok) this.becomeReady(instance, `startup probe passed: ${detail}`);
      return;
    }
    switch (instance.state) {
      case 'ready':
      case 'suspect':
        if (ok) {
          instance.failures = 0;
          if (instance.state === 'suspect') this.enter(instance, 'ready', `ready probe passed: ${detail}`);
          return;
        }
        instance.failures += 1;
        if (instance.failures >= fall) this.fail(instance, `${instance.failures} ready probes failed: ${detail}`);
        else this.enter(instance, 'suspect', `ready probe failed (${instance.failures}/${fall}): ${detail}`);
        return;
      case 'down':
        // Probes bring back instances that Understudy does not restart itself.
        if (instance.supervised) return;
        instance.successes = ok ? instance.successes + 1 : 0;
        if (instance.successes >= rise && (instance.ejectedUntil === undefined || this.now >= instance.ejectedUntil)) {
          this.becomeReady(instance, `${instance.successes} ready probes passed: ${detail}`);
        }
        return;
      default:
        return;
    }
  }

  private version(instance: InstanceStatus, version: string | undefined, detail: string): void {
    const { expected } = this.state;
    if (this.config.version === undefined) return;
    // A failed read of an instance already known to serve the right version says nothing
    // about the model: the ready probe judges its health. It is read again soon.
    if (version === undefined && instance.admitted && instance.version !== undefined && expected.includes(instance.version)) return;
    instance.version = version;
    this.admit(instance, version === undefined ? `version unreadable: ${detail}` : undefined);
  }

  /** Admits the instance when its known version is expected; otherwise says why not, once. */
  private admit(instance: InstanceStatus, unreadable?: string): void {
    const { expected } = this.state;
    const version = instance.version;
    instance.admitted = version !== undefined && expected.includes(version);
    if (instance.admitted) {
      instance.versionProblem = undefined;
      return;
    }
    const wanted = expected.join(' or ');
    const why = unreadable ?? `serves version ${version ?? 'unknown'}, expected ${wanted}`;
    if (why === instance.versionProblem) return;
    instance.versionProblem = why;
    this.emit({ type: 'version-mismatch', instance: instance.name, expected: wanted, actual: version ?? null, reason: `${why}; not admitted` });
  }

  private expect(versions: string[]): string | undefined {
    if (this.config.version === undefined) return `service ${this.state.name} pins no version (set version.expect)`;
    if (versions.length === 0 || versions.some((v) => v.length === 0)) return 'name at least one version';
    this.state.expected = [...new Set(versions)];
    for (const instance of this.instances()) {
      // Instances whose version was never read are admitted by their first read, as at start.
      if (instance.version !== undefined) this.admit(instance);
    }
    return undefined;
  }

  private passive(instance: InstanceStatus, hard: boolean, reason: string): void {
    if (!ROUTABLE.has(instance.state)) return;
    const others = routable(this.state).filter((i) => i.name !== instance.name);
    if (!hard && others.length === 0) {
      // Ejecting the last instance would turn its errors into queueing and 503s (Envoy's max_ejection_percent).
      this.emit({ type: 'ejection-skipped', instance: instance.name, reason: `${reason}; no other instance is ready` });
      this.enter(instance, 'suspect', reason);
      return;
    }
    instance.ejectedUntil = this.now + this.config.passive.ejectFor;
    this.fail(instance, reason);
  }

  private exited(instance: InstanceStatus, code: number | null, signal: string | null): void {
    const how = signal ? `killed by ${signal}` : `exited with code ${code}`;
    if (instance.state === 'draining') {
      this.enter(instance, 'stopped', `${how} while draining`);
    } else if (RUNNING.has(instance.state)) {
      this.fail(instance, `process ${how}`);
    }
  }

  /** The instance failed: take it down, count the failure, and restart or quarantine it. */
  private fail(instance: InstanceStatus, reason: string): void {
    const { quarantine } = this.config;
    if (this.config.retry.inflightOnDown) {
      this.actions.push({ type: 'abort-inflight', instance: instance.name, reason });
    }
    instance.failureTimes = [...instance.failureTimes.filter((t) => this.now - t < quarantine.within), this.now];
    instance.startDeadline = undefined;
    if (instance.failureTimes.length >= quarantine.failures) {
      if (instance.supervised) this.actions.push({ type: 'stop', instance: instance.name, reason: 'quarantined' });
      instance.restartAt = undefined;
      this.enter(instance, 'quarantined', reason);
      this.emit({
        type: 'quarantined',
        instance: instance.name,
        failures: instance.failureTimes.length,
        withinMs: quarantine.within,
        reason: `${instance.failureTimes.length} failures within ${quarantine.within}ms; kept stopped with its logs until resumed. Last: ${reason}`,
      });
      return;
    }
    this.enter(instance, 'down', reason);
    if (!instance.supervised) return;
    const runtime = this.spec(instance).runtime;
    if (runtime.type === 'external') return;
    this.actions.push({ type: 'stop', instance: instance.name, reason });
    const delayMs = Math.min(runtime.restartDelay * 2 ** instance.restarts, runtime.restartDelayMax);
    instance.restarts += 1;
    instance.restartAt = this.now + delayMs;
    this.emit({ type: 'restart-scheduled', instance: instance.name, delayMs, reason });
  }

  private move(to: InstanceStatus, kind: MoveKind, reason: string): void {
    const { state } = this;
    const from = state.active;
    state.active = to.name;
    state.everActive = true;
    if (preferredInstance(state) === to) state.mode = 'normal';
    else if (kind === 'switchover') state.mode = 'pinned';
    else if (kind === 'failover' || kind === 'recovered') state.mode = 'failed-over';
    this.emit({ type: 'active-changed', from, to: to.name, kind, reason });
  }

  /** No instance can take the traffic: requests wait while cold standbys start. */
  private lose(reason: string): void {
    this.state.active = null;
    this.emit({ type: 'no-ready-instance', reason });
    this.startColdStandbys();
  }

  /**
   * Cold standbys start when nothing can serve and no primary or hot instance is
   * already on its way up (at boot the primary is loading: that is not a failure).
   */
  private startColdStandbys(): void {
    // Ready but its version not read yet is still on its way up: the read takes a moment, not a failure.
    const reading = (i: InstanceStatus) => ROUTABLE.has(i.state) && this.config.version !== undefined && i.version === undefined && i.versionProblem === undefined;
    const warming = this.instances().some((i) => i.tier !== 'cold' && (i.state === 'starting' || reading(i)));
    if (warming) return;
    for (const instance of this.instances()) {
      if (instance.tier === 'cold' && instance.state === 'stopped' && !instance.maintenance) {
        this.start(instance, 'no instance is ready: cold standby started on demand');
      }
    }
  }

  private switchover(to: string | undefined, reason = 'switchover requested'): string | undefined {
    const { state } = this;
    const candidates = routable(state).filter((i) => i.name !== state.active);
    const target = to === undefined ? candidates[0] : state.instances[to];
    if (to !== undefined && !target) return `service ${state.name} has no instance ${to}`;
    if (!target) return `no other instance of ${state.name} is ready to take the traffic`;
    if (target.name === state.active) return `${target.name} is already active`;
    if (!isRoutable(target)) {
      const why = target.admitted ? target.state : `serving version ${target.version ?? 'unknown'}`;
      return `${target.name} cannot take the traffic: it is ${why}`;
    }
    this.move(target, 'switchover', reason);
    return undefined;
  }

  private drain(instance: InstanceStatus): string | undefined {
    if (instance.maintenance) return `${instance.name} is already ${instance.state} for maintenance`;
    if (instance.state === 'stopped') {
      // A stopped cold standby is held where it is: not started on demand until resumed.
      instance.maintenance = true;
      instance.reason = 'held for maintenance';
      return undefined;
    }
    if (instance.state === 'quarantined') {
      // Already stopped (with its logs): held for maintenance, so a rollback can replace it.
      instance.maintenance = true;
      this.enter(instance, 'stopped', 'held for maintenance after quarantine');
      return undefined;
    }
    if (!RUNNING.has(instance.state) && instance.state !== 'down') return `${instance.name} is ${instance.state}`;
    if (this.state.active === instance.name) {
      const rejected = this.switchover(undefined);
      if (rejected !== undefined) return `cannot drain the active instance ${instance.name}: ${rejected}`;
    }
    instance.maintenance = true;
    instance.restartAt = undefined;
    this.enter(instance, 'draining', 'drain requested');
    return undefined;
  }

  private resume(instance: InstanceStatus, start: boolean): string | undefined {
    if (!instance.maintenance && instance.state !== 'quarantined') {
      return `${instance.name} is ${instance.state}; only a drained, stopped or quarantined instance can be resumed`;
    }
    if (instance.state === 'draining') {
      instance.maintenance = false;
      if (!start) {
        // Back to its place stopped: the drain goes on, and ends in `stopped` without the hold.
        instance.reason = 'draining; back in its place, stopped, once idle';
        return undefined;
      }
      // The drain is called off (it took too long): the process still runs, and its ready probe decides.
      this.enter(instance, 'suspect', 'drain called off; back in service once its ready probe passes');
      return undefined;
    }
    if (!start && instance.state !== 'stopped') return `${instance.name} is ${instance.state}; only a stopped instance can stay stopped`;
    instance.maintenance = false;
    instance.failureTimes = [];
    instance.restarts = 0;
    if (start) this.start(instance, 'resumed');
    else instance.reason = 'back in its place, stopped';
    return undefined;
  }
}
