import { randomBytes } from 'node:crypto';
import { atVersion, type InstanceConfig, type PrefillShape, type ServiceConfig } from '../config/index.js';
import {
  initialState,
  isRoutable,
  nextDeadline,
  routable,
  step,
  type Action,
  type Clock,
  type Input,
  type ServiceStatus,
  type Timer,
  type UnderstudyEvent,
} from '../core/index.js';
import { readOwner, readVersion, runProbe, type AttemptOutcome } from '../health/index.js';
import { InstanceDownError, ProxyError, shapeForOwner, type Attempt, type InjectedFault, type Upstreams, type Want } from '../proxy/index.js';
import { createRuntime, StartError, type Runtime } from '../runtime/index.js';
import { InstanceHandle, newOutcomes, type Outcomes } from './instance.js';

export interface ServiceDeps {
  clock: Clock;
  stateDir: string;
  /** The Docker Engine's socket, for docker instances. */
  dockerSocket?: string;
  publish(event: UnderstudyEvent): void;
  onProbe(instance: string, probe: string, ok: boolean, ms: number): void;
  onQueue(depth: number): void;
  onError(message: string, error: unknown): void;
  /**
   * A runtime to drive instead of the instance's own (in a cluster, a cold standby whose
   * start is the leader's word); `real` makes the instance's own at a version. Undefined: the own one.
   */
  delegate?(instance: InstanceConfig, version: string | undefined, real: (version: string | undefined) => Runtime): Runtime | undefined;
}

interface Waiter {
  tried: ReadonlySet<string>;
  want: Want | undefined;
  resolve(attempt: Attempt): void;
  reject(error: Error): void;
  timer: Timer;
  cleanup(): void;
}

/** States an instance falls into when it fails: each entry is one fall, for a deploy's watch. */
const FALLEN = new Set(['down', 'quarantined']);

/** Seconds a client is told to wait after a 503 from an empty queue. */
const RETRY_AFTER_SECONDS = 5;

/**
 * Longest wait, before a request is tried again on an instance it already failed on and
 * whose ready probe now fails too, for the machine to take that instance out (its exit or
 * a container's end seen): the request then waits in the queue for a standby.
 */
const SAME_INSTANCE_PAUSE_MS = 2000;

export interface InstanceView {
  name: string;
  tier: string;
  priority: number;
  url: string;
  runtime: string;
  state: string;
  since: number;
  reason: string;
  version: string | null;
  admitted: boolean;
  inflight: number;
  pid: number | null;
}

export interface ServiceView {
  name: string;
  active: string | null;
  mode: string;
  queued: number;
  expectedVersion: string | null;
  /** The pinned version first; two while a deploy keeps the previous one ready. */
  admittedVersions: string[];
  instances: InstanceView[];
}

/**
 * Runs one service: feeds what happens into the failover machine, carries out its
 * actions (start, stop, abort in-flight work, check versions), keeps the probe loops
 * and the deadline timer in step with the state, and hands instances to the proxy.
 */
export class ServiceController implements Upstreams {
  private state: ServiceStatus;
  private readonly handles = new Map<string, InstanceHandle>();
  private readonly waiters: Waiter[] = [];
  private tickTimer: Timer | undefined;
  private readonly stateWatchers = new Set<() => void>();
  private closed = false;
  private following = false;
  private followerConfig: ServiceConfig | undefined;

  constructor(
    private current: ServiceConfig,
    private readonly deps: ServiceDeps,
  ) {
    const config = current;
    this.state = initialState(config, deps.clock.now());
    const release = config.version?.expect;
    for (const instance of config.instances) {
      const handle = new InstanceHandle(instance, this.runtimeFor(instance, release), release, config.passive);
      this.watchExit(handle);
      this.handles.set(instance.name, handle);
    }
  }

  /** The service's configuration; `reconfigure` replaces it. */
  get config(): ServiceConfig {
    return this.current;
  }

  /**
   * Takes up a new configuration of this service whose changes are all live fields
   * (config/live.ts: policies read per request or per decision, instances' probes and
   * capabilities). The next request, probe and decision follow it; nothing restarts.
   */
  reconfigure(next: ServiceConfig): void {
    if (next.name !== this.current.name) throw new Error(`cannot reconfigure ${this.current.name} as ${next.name}`);
    const names = new Set(next.instances.map((i) => i.name));
    if (names.size !== this.handles.size || [...this.handles.keys()].some((name) => !names.has(name))) {
      throw new Error(`cannot reconfigure ${next.name}: its instances changed, which needs a restart`);
    }
    this.current = next;
    this.followerConfig = undefined;
    for (const instance of next.instances) {
      const handle = this.handles.get(instance.name)!;
      const probesChanged = JSON.stringify(handle.config.probes) !== JSON.stringify(instance.probes);
      if (JSON.stringify(handle.config.capabilities) !== JSON.stringify(instance.capabilities)) handle.prefill = undefined;
      handle.config = instance;
      handle.passive.configure(next.passive);
      handle.models.configure({ failures: next.passive.failures, ejectFor: next.passive.ejectFor });
      if (probesChanged) {
        // A loop keeps the probe it began with: start it again on the new one.
        handle.probeMode = 'reconfigured';
        this.scheduleProbes(handle);
      }
    }
    this.scheduleTick();
  }

  /** The version the service is pinned to now (a deploy or rollback changes it), or undefined. */
  get release(): string | undefined {
    return this.state.expected[0];
  }

  /**
   * Starts the service's instances. `release` is the version to run when a deploy or
   * rollback left another than the config's (see ReleaseBook).
   */
  boot(release?: string): void {
    if (release !== undefined && release !== this.release) {
      for (const handle of this.handles.values()) {
        handle.runtime = this.runtimeFor(handle.config, release);
        handle.release = release;
        this.watchExit(handle);
      }
      this.dispatch({ type: 'expect', versions: [release] });
    }
    // Cold standbys too: one left running by a killed Understudy holds its port and GPU until stopped.
    for (const handle of this.handles.values()) {
      const name = handle.config.name;
      const recovered = handle.runtime.recover();
      recovered.catch((error: unknown) => this.deps.onError(`could not check ${name} for a process left running`, error));
      if (handle.config.tier === 'cold') {
        // A cold standby made ready to start (a created, stopped container) starts in a fraction of the time.
        void recovered
          .then(() => handle.runtime.prepare())
          .catch((error: unknown) => this.deps.onError(`could not prepare the cold standby ${name}`, error));
      }
    }
    this.dispatch({ type: 'boot' });
  }

  /** The runtime the machine drives for `instance` at `version`: its own, or the one `deps.delegate` gives. */
  private runtimeFor(instance: InstanceConfig, version: string | undefined): Runtime {
    const real = (at: string | undefined) => this.realRuntimeFor(instance, at);
    return this.deps.delegate?.(instance, version, real) ?? real(version);
  }

  /** The runtime that runs `instance` at `version` on this machine. */
  private realRuntimeFor(instance: InstanceConfig, version: string | undefined): Runtime {
    const onOrphan = (pid: number, reason: string) =>
      this.deps.publish({
        type: 'orphan-stopped',
        instance: instance.name,
        pid,
        reason,
        time: this.deps.clock.now(),
        service: this.config.name,
        traceId: randomBytes(8).toString('hex'),
      });
    const resolved = version === undefined ? instance : atVersion(instance, version);
    return createRuntime(resolved, this.deps.stateDir, onOrphan, { dockerSocket: this.deps.dockerSocket });
  }

  private watchExit(handle: InstanceHandle): void {
    const runtime = handle.runtime;
    runtime.onExit((code, signal) => {
      // An exit of a runtime already replaced by a deploy is the old version going: expected.
      if (handle.runtime === runtime) this.dispatch({ type: 'exited', instance: handle.config.name, code, signal });
    });
  }

  /** Instance names, and the version each one's runtime runs. */
  releases(): Map<string, string | undefined> {
    return new Map([...this.handles].map(([name, handle]) => [name, handle.release]));
  }

  /** Attempts, failed attempts and falls out of service of an instance since it last changed version. */
  outcomes(instance: string): Outcomes {
    return { ...this.handles.get(instance)!.outcomes };
  }

  /** Puts a drill's fault in front of an instance (undefined lifts it); attempts that begin from now on meet it. */
  injectFault(instance: string, fault: InjectedFault | undefined): void {
    const handle = this.handles.get(instance);
    if (!handle) throw new Error(`service ${this.config.name} has no instance ${instance}`);
    handle.fault = fault;
  }

  /** The process id of an instance Understudy runs (for a docker instance, its model server's), if running. */
  pidOf(instance: string): number | undefined {
    return this.handles.get(instance)?.runtime.pid;
  }

  /** Signals what serves an instance (a drill's fault): see Runtime.signal. */
  signal(instance: string, name: NodeJS.Signals): void {
    const handle = this.handles.get(instance);
    if (!handle) throw new Error(`service ${this.config.name} has no instance ${instance}`);
    handle.runtime.signal(name);
  }

  /** What the machine knows now (a copy is not made: do not change it). */
  machineState(): ServiceStatus {
    return this.state;
  }

  /**
   * Resolves with the state once `ready` says so, checked after every change; rejects
   * after `timeoutMs`, on abort, or when Understudy shuts down.
   */
  waitFor(ready: (state: ServiceStatus) => boolean, timeoutMs: number, signal?: AbortSignal, what = 'the service'): Promise<ServiceStatus> {
    if (ready(this.state)) return Promise.resolve(this.state);
    if (this.closed) return Promise.reject(new Error('Understudy is shutting down'));
    // An abort that came before this wait began must end it too (a listener added now would never fire).
    if (signal?.aborted) return Promise.reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
    return new Promise((resolve, reject) => {
      const done = (error?: Error) => {
        this.stateWatchers.delete(check);
        timer.cancel();
        signal?.removeEventListener('abort', onAbort);
        if (error) reject(error);
        else resolve(this.state);
      };
      const check = () => {
        if (this.closed) done(new Error('Understudy is shutting down'));
        else if (ready(this.state)) done();
      };
      const onAbort = () => done(signal!.reason instanceof Error ? signal!.reason : new Error('aborted'));
      const timer = this.deps.clock.setTimeout(() => done(new Error(`${what} did not happen within ${timeoutMs}ms`)), timeoutMs);
      signal?.addEventListener('abort', onAbort, { once: true });
      this.stateWatchers.add(check);
    });
  }

  /**
   * Moves one instance to `version`: holds it out of traffic (the active one hands its
   * traffic over first; in-flight requests finish), stops it, replaces its runtime, and,
   * when `start` is true, starts it and waits until it is ready and its version is read.
   * Resolves with the version it reports; rejects when it fails to start or is refused.
   */
  async reinstall(name: string, version: string, options: { start: boolean; signal?: AbortSignal }): Promise<string | undefined> {
    const handle = this.handles.get(name);
    if (!handle) throw new Error(`service ${this.config.name} has no instance ${name}`);
    // Held already (a drain or move that was cut short): no second drain is needed.
    if (!this.state.instances[name]!.maintenance) {
      const refused = this.dispatch({ type: 'drain', instance: name });
      if (refused !== undefined) throw new Error(refused);
    }
    try {
      await this.waitFor((s) => s.instances[name]!.state === 'stopped', this.config.timeouts.total, options.signal, `${name} draining`);
      await handle.runtime.stop();
    } catch (error) {
      // Not moved: the instance goes back to work on its version (a cold standby to its place) rather than stay held.
      this.dispatch({ type: 'resume', instance: name, start: handle.config.tier !== 'cold' });
      throw error;
    }
    handle.runtime = this.runtimeFor(handle.config, version);
    handle.release = version;
    handle.outcomes = newOutcomes();
    this.watchExit(handle);
    if (!options.start) {
      const refused = this.dispatch({ type: 'resume', instance: name, start: false });
      if (refused !== undefined) throw new Error(refused);
      await handle.runtime.prepare();
      return undefined;
    }
    const refused = this.dispatch({ type: 'resume', instance: name });
    if (refused !== undefined) throw new Error(refused);
    const budget = handle.config.probes.startup.budget;
    const settled = await this.waitFor(
      (s) => {
        const i = s.instances[name]!;
        const failed = i.state === 'down' || i.state === 'quarantined' || i.state === 'stopped';
        const up = (i.state === 'ready' || i.state === 'suspect') && (this.config.version === undefined || i.version !== undefined);
        return failed || up;
      },
      budget + (this.config.version?.probe.timeout ?? 0) + 5000,
      options.signal,
      `${name} starting at version ${version}`,
    );
    const after = settled.instances[name]!;
    if (after.state !== 'ready' && after.state !== 'suspect') throw new Error(`${name} did not start at version ${version}: ${after.reason}`);
    return after.version;
  }

  /**
   * In a cluster, a node that does not lead follows the leader's choice of active
   * instance: it still fails over at once on its own, but moves traffic back only when
   * the leader does (failback is the leader's decision, so two nodes do not pick
   * different instances on purpose).
   */
  setFollowing(following: boolean): void {
    if (this.following === following) return;
    this.following = following;
    this.scheduleTick();
  }

  /** Moves traffic to `instance`, the leader's choice; says why not when it cannot serve here. */
  follow(instance: string, leader: string): string | undefined {
    if (this.state.active === instance) return undefined;
    return this.dispatch({ type: 'switchover', to: instance, reason: `following the leader ${leader}` });
  }

  /** Instances held out of rotation for maintenance (drained, draining, or a cold standby held stopped). */
  held(): string[] {
    return Object.values(this.state.instances)
      .filter((i) => i.maintenance)
      .map((i) => i.name);
  }

  /** Drains or resumes `instance` as the leader did (a cold standby resumes to its place, stopped). */
  hold(instance: string, held: boolean): string | undefined {
    const handle = this.handles.get(instance);
    if (!handle) return `no instance ${instance} here`;
    if (held) return this.dispatch({ type: 'drain', instance });
    return this.dispatch({ type: 'resume', instance, start: handle.config.tier !== 'cold' });
  }

  /** The versions admitted now, the pinned one first. */
  expected(): string[] {
    return [...this.state.expected];
  }

  /** Admits `versions` (a follower takes the leader's; a deploy moves them on the leader). */
  expect(versions: string[]): void {
    this.dispatch({ type: 'expect', versions });
  }

  /** Calls `listener` after every change of state; returns the unsubscribe. */
  onChange(listener: () => void): () => void {
    this.stateWatchers.add(listener);
    return () => this.stateWatchers.delete(listener);
  }

  private machineConfig(): ServiceConfig {
    if (!this.following) return this.config;
    this.followerConfig ??= { ...this.config, failback: { policy: 'never' } };
    return this.followerConfig;
  }

  /** Feeds one input to the machine; returns why a command was refused, if it was. */
  dispatch(input: Input, traceId = randomBytes(8).toString('hex')): string | undefined {
    if (this.closed) return 'Understudy is shutting down';
    const now = this.deps.clock.now();
    const result = step(this.machineConfig(), this.state, input, now);
    if (result.rejected !== undefined) return result.rejected;
    const before = this.state;
    this.state = result.state;
    for (const [name, handle] of this.handles) {
      const was = before.instances[name]!;
      const now = this.state.instances[name]!;
      // Passive counts belong to one stretch of service: leaving it (down, draining, ...) starts them afresh.
      if (isRoutable(was) && !isRoutable(now)) {
        handle.generation += 1;
        handle.passive.reset();
        handle.models.reset();
      }
      if (FALLEN.has(now.state) && !FALLEN.has(was.state)) handle.outcomes.downs += 1;
    }
    for (const action of result.actions) this.perform(action, now, traceId);
    this.scheduleTick();
    for (const handle of this.handles.values()) this.scheduleProbes(handle);
    this.serveWaiters();
    this.checkDrained();
    for (const watcher of [...this.stateWatchers]) watcher();
    return undefined;
  }

  acquire(tried: ReadonlySet<string>, signal: AbortSignal, want?: Want): Promise<Attempt> {
    const name = this.choose(tried, want);
    // Asked for again on purpose (a 429 waited out, a 500 tried once more): it answered, it lives.
    if (name !== undefined && tried.has(name) && name !== want?.same) return this.afterCheck(this.handles.get(name)!, tried, signal, want);
    const attempt = this.pick(tried, want);
    if (attempt) return Promise.resolve(attempt);
    return this.enqueue(tried, signal, want);
  }

  others(besides: string, want?: Want): string[] {
    const now = this.deps.clock.now();
    return routable(this.state)
      .filter((i) => i.name !== besides && this.fits(i.name, want) && this.healthyFor(i.name, want, now))
      .map((i) => i.name);
  }

  /** Whether an instance meets what the request needs of it (not excluded, a large enough context window). */
  private fits(name: string, want: Want | undefined): boolean {
    if (want === undefined) return true;
    if (want.exclude?.has(name)) return false;
    if (want.contextAbove !== undefined && !((this.handles.get(name)!.config.capabilities.contextWindow ?? 0) > want.contextAbove)) return false;
    return true;
  }

  /** Whether the instance's breaker for the request's model is closed. */
  private healthyFor(name: string, want: Want | undefined, now: number): boolean {
    return want?.model === undefined || !this.handles.get(name)!.models.isOpen(want.model, now);
  }

  /**
   * The only choice already failed this request. Its ready probe says whether it still
   * lives (a lost keep-alive connection: try again at once) or is dead (a killed process
   * behind docker-proxy, which accepts and closes connections): then the failed probe goes
   * to the machine and the request waits, up to SAME_INSTANCE_PAUSE_MS, for the instance
   * to be taken out, so it queues for a standby instead of failing on the same dead instance.
   */
  private async afterCheck(handle: InstanceHandle, tried: ReadonlySet<string>, signal: AbortSignal, want: Want | undefined): Promise<Attempt> {
    const name = handle.config.name;
    const result = await runProbe(handle.config.probes.ready, handle.url);
    if (signal.aborted) throw signal.reason as Error;
    if (!result.ok) {
      if (isRoutable(this.state.instances[name]!)) this.dispatch({ type: 'probe', instance: name, probe: 'ready', ok: false, detail: result.detail });
      await this.waitFor((s) => !isRoutable(s.instances[name]!), SAME_INSTANCE_PAUSE_MS, signal).catch((error: unknown) => {
        if (signal.aborted || this.closed) throw error;
      });
    }
    const attempt = this.pick(tried, want);
    return attempt ?? this.enqueue(tried, signal, want);
  }

  /** Waits in the service's bounded queue for an instance to become ready. */
  private enqueue(tried: ReadonlySet<string>, signal: AbortSignal, want: Want | undefined): Promise<Attempt> {
    if (signal.aborted) return Promise.reject(signal.reason as Error);
    if (this.closed) return Promise.reject(this.unavailable('Understudy is shutting down'));
    if (this.waiters.length >= this.config.queue.max) {
      return Promise.reject(
        new ProxyError('QUEUE_FULL', 503, `no instance of ${this.config.name} is ready and its queue of ${this.config.queue.max} is full`, {
          service: this.config.name,
          reason: this.whyUnavailable(),
          retryAfterSeconds: RETRY_AFTER_SECONDS,
        }),
      );
    }
    const timeout = Math.min(this.config.queue.timeout, want?.queueFor ?? Infinity);
    return new Promise<Attempt>((resolve, reject) => {
      const onAbort = () => {
        waiter.cleanup();
        reject(signal.reason as Error);
      };
      const waiter: Waiter = {
        tried,
        want,
        resolve,
        reject,
        timer: this.deps.clock.setTimeout(() => {
          waiter.cleanup();
          reject(this.unavailable(`no instance of ${this.config.name} became ready within ${timeout}ms`));
        }, timeout),
        cleanup: () => {
          waiter.timer.cancel();
          signal.removeEventListener('abort', onAbort);
          const index = this.waiters.indexOf(waiter);
          if (index >= 0) this.waiters.splice(index, 1);
          this.deps.onQueue(this.waiters.length);
        },
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(waiter);
      this.deps.onQueue(this.waiters.length);
    });
  }

  view(): ServiceView {
    return {
      name: this.config.name,
      active: this.state.active,
      mode: this.state.mode,
      queued: this.waiters.length,
      expectedVersion: this.state.expected[0] ?? null,
      admittedVersions: this.state.expected,
      instances: this.config.instances.map((instance) => {
        const status = this.state.instances[instance.name]!;
        const handle = this.handles.get(instance.name)!;
        return {
          name: instance.name,
          tier: instance.tier,
          priority: instance.priority,
          url: instance.url,
          runtime: instance.runtime.type,
          state: status.state,
          since: status.since,
          reason: status.reason,
          version: status.version ?? null,
          admitted: status.admitted,
          inflight: handle.inflight.size,
          pid: handle.runtime.pid ?? null,
        };
      }),
    };
  }

  /** Stops probes and timers, fails queued requests, and stops the instances Understudy runs. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.tickTimer?.cancel();
    for (const watcher of [...this.stateWatchers]) watcher();
    for (const waiter of [...this.waiters]) {
      waiter.cleanup();
      waiter.reject(this.unavailable('Understudy is shutting down'));
    }
    await Promise.all(
      [...this.handles.values()].map(async (handle) => {
        handle.stopTimers();
        try {
          await handle.runtime.stop();
        } catch (error) {
          this.deps.onError(`stopping ${handle.config.id} failed`, error);
        }
        await handle.pool.close().catch(() => handle.pool.destroy());
      }),
    );
  }

  private perform(action: Action, now: number, traceId: string): void {
    const handle = 'instance' in action ? this.handles.get(action.instance) : undefined;
    switch (action.type) {
      case 'emit':
        this.deps.publish({ ...action.event, time: now, service: this.config.name, traceId });
        return;
      case 'start': {
        const started = handle!;
        const generation = ++started.generation;
        started.passive.reset();
        started.models.reset();
        started.runtime.start().then(
          () => {
            started.launched = generation;
            this.scheduleProbes(started);
          },
          (error: unknown) => {
            if (error instanceof StartError && error.cancelled) return;
            const reason = error instanceof StartError ? error.message : `start failed: ${(error as Error).message}`;
            this.dispatch({ type: 'start-failed', instance: started.config.name, reason }, traceId);
          },
        );
        return;
      }
      case 'stop':
        handle!.runtime.stop().catch((error: unknown) => this.deps.onError(`stopping ${handle!.config.id} failed`, error));
        return;
      case 'abort-inflight': {
        const reason = new InstanceDownError(action.instance, action.reason);
        for (const abort of [...handle!.inflight]) abort(reason);
        return;
      }
      case 'check-version':
        this.checkVersion(handle!);
        return;
    }
  }

  /** The attempt for the next try: the active instance first, then the others best first. */
  private pick(tried: ReadonlySet<string>, want: Want | undefined): Attempt | undefined {
    const name = this.choose(tried, want);
    return name === undefined ? undefined : this.attempt(this.handles.get(name)!, want?.model);
  }

  /**
   * The instance for the next try: `want.same` when it is still routable; else the active
   * one unless tried, else the best untried, else the best tried; among those that fit the
   * request, preferring ones whose breaker for its model is closed.
   */
  private choose(tried: ReadonlySet<string>, want: Want | undefined): string | undefined {
    const { active } = this.state;
    const simple = want === undefined || (want.exclude === undefined || want.exclude.size === 0) && want.contextAbove === undefined && want.same === undefined;
    const now = this.deps.clock.now();
    if (simple && active !== null && !tried.has(active) && this.healthyFor(active, want, now)) return active;
    if (want?.same !== undefined && isRoutable(this.state.instances[want.same]!) && this.fits(want.same, want)) return want.same;
    const fitting = routable(this.state).filter((i) => this.fits(i.name, want));
    const healthy = fitting.filter((i) => this.healthyFor(i.name, want, now));
    const candidates = healthy.length > 0 ? healthy : fitting;
    if (active !== null && !tried.has(active) && candidates.some((i) => i.name === active)) return active;
    return (candidates.find((i) => !tried.has(i.name)) ?? candidates[0])?.name;
  }

  private attempt(handle: InstanceHandle, model: string | undefined): Attempt {
    const controller = new AbortController();
    const abort = (reason: Error) => controller.abort(reason);
    const generation = handle.generation;
    // Counted against the version the attempt began on, even when it ends after a fall (aborted in flight).
    const outcomes = handle.outcomes;
    const name = handle.config.name;
    handle.inflight.add(abort);
    const slowAfter = handle.passive.slowAfter();
    let slowTimer: Timer | undefined =
      slowAfter === undefined
        ? undefined
        : this.deps.clock.setTimeout(() => {
            slowTimer = undefined;
            const verdict = handle.generation === generation ? handle.passive.onSlow() : undefined;
            if (verdict) this.dispatch({ type: 'passive', instance: name, hard: verdict.hard, reason: verdict.reason });
          }, slowAfter);
    let finished = false;
    return {
      instance: name,
      url: handle.url,
      dispatcher: handle.pool,
      fault: handle.fault,
      contextWindow: handle.config.capabilities.contextWindow,
      prefill: () => this.prefillOf(handle),
      signal: controller.signal,
      abort,
      firstByte: (ms: number) => {
        slowTimer?.cancel();
        slowTimer = undefined;
        if (handle.generation === generation) handle.passive.onFirstByte(ms);
      },
      finish: (outcome: AttemptOutcome, detail: string) => {
        if (finished) return;
        finished = true;
        slowTimer?.cancel();
        handle.inflight.delete(abort);
        if (outcome !== 'client-abort' && outcome !== 'bad-request') {
          outcomes.attempts += 1;
          if (outcome !== 'ok') {
            outcomes.failed += 1;
            outcomes.firstFailedAt ??= this.deps.clock.now();
          }
        }
        if (handle.generation === generation) {
          // An answer about a model (the instance answered) judges that model here, not the whole instance.
          const aboutModel = model !== undefined && (outcome === 'status' || outcome === 'ok');
          if (aboutModel) this.onModelOutcome(handle, model, outcome === 'status', detail);
          const verdict = aboutModel && outcome === 'status' ? undefined : handle.passive.onOutcome(outcome, detail);
          if (verdict) this.dispatch({ type: 'passive', instance: name, hard: verdict.hard, reason: verdict.reason });
        }
        this.checkDrained();
      },
    };
  }

  private onModelOutcome(handle: InstanceHandle, model: string, failed: boolean, detail: string): void {
    const change = handle.models.onOutcome(model, failed, this.deps.clock.now(), detail);
    if (!change) return;
    const base = { instance: handle.config.name, model, reason: change.reason, time: this.deps.clock.now(), service: this.config.name, traceId: randomBytes(8).toString('hex') };
    this.deps.publish(change.kind === 'ejected' ? { ...base, type: 'model-ejected', forMs: this.config.passive.ejectFor } : { ...base, type: 'model-restored' });
  }

  /** How an instance takes a continuation: its capabilities.prefill, or for auto what its /v1/models says, read once per start. */
  private prefillOf(handle: InstanceHandle): Promise<Exclude<PrefillShape, 'auto'>> {
    const configured = handle.config.capabilities.prefill;
    if (configured !== 'auto') return Promise.resolve(configured);
    if (handle.prefill?.generation !== handle.generation) {
      const shape = readOwner(handle.url).then(shapeForOwner);
      const read = { generation: handle.generation, shape };
      handle.prefill = read;
      // An instance that did not say is asked again next time: it may have been busy.
      void shape.then((found) => {
        if (found === 'none' && handle.prefill === read) handle.prefill = undefined;
      });
    }
    return handle.prefill.shape;
  }

  private serveWaiters(): void {
    for (const waiter of [...this.waiters]) {
      const attempt = this.pick(waiter.tried, waiter.want);
      if (!attempt) continue;
      waiter.cleanup();
      waiter.resolve(attempt);
    }
  }

  private checkDrained(): void {
    for (const [name, handle] of this.handles) {
      if (handle.inflight.size === 0 && this.state.instances[name]!.state === 'draining') {
        queueMicrotask(() => this.dispatch({ type: 'drained', instance: name }));
      }
    }
  }

  private scheduleTick(): void {
    this.tickTimer?.cancel();
    this.tickTimer = undefined;
    const deadline = nextDeadline(this.machineConfig(), this.state);
    if (deadline === undefined) return;
    this.tickTimer = this.deps.clock.setTimeout(() => this.dispatch({ type: 'tick' }), deadline - this.deps.clock.now());
  }

  /** Keeps each instance's probe loop matching its state. */
  private scheduleProbes(handle: InstanceHandle): void {
    const status = this.state.instances[handle.config.name]!;
    const { startup, ready } = handle.config.probes;
    let mode: string;
    let interval = 0;
    switch (status.state) {
      case 'starting':
        // Only once this start has launched the process: before, a dying predecessor could still answer.
        mode = handle.launched === handle.generation ? `startup:${handle.generation}` : 'none';
        interval = startup.interval;
        break;
      case 'ready':
        mode = 'ready';
        interval = ready.interval;
        break;
      case 'suspect':
        mode = 'suspect';
        interval = ready.suspectInterval;
        break;
      case 'down':
        mode = status.supervised ? 'none' : 'down';
        interval = ready.suspectInterval;
        break;
      default:
        mode = 'none';
    }
    if (mode === handle.probeMode) return;
    handle.probeTimer?.cancel();
    handle.probeMode = mode;
    const token = {};
    handle.probeLoop = mode === 'none' ? undefined : token;
    if (mode === 'none') {
      handle.versionTimer?.cancel();
      return;
    }
    const probe = mode.startsWith('startup') ? 'startup' : 'ready';
    const check = probe === 'startup' ? startup : ready;
    const current = () => handle.probeLoop === token && !this.closed;
    const loop = async () => {
      const result = await runProbe(check, handle.url);
      // A result from a loop that was replaced while it ran says nothing about the instance now.
      if (!current()) return;
      this.deps.onProbe(handle.config.name, probe, result.ok, result.ms);
      this.dispatch({ type: 'probe', instance: handle.config.name, probe, ok: result.ok, detail: result.detail });
      if (current()) handle.probeTimer = this.deps.clock.setTimeout(() => void loop(), interval);
    };
    // Starting instances are probed at once: a fast model load should not wait an interval.
    handle.probeTimer = this.deps.clock.setTimeout(() => void loop(), probe === 'startup' ? 0 : interval);
  }

  private checkVersion(handle: InstanceHandle): void {
    const version = this.config.version;
    if (!version) return;
    handle.versionTimer?.cancel();
    const name = handle.config.name;
    void readVersion(version.probe, handle.url).then((result) => {
      if (this.closed) return;
      this.dispatch({ type: 'version', instance: name, version: result.version, detail: result.detail });
      const state = this.state.instances[name]!.state;
      if (state === 'ready' || state === 'suspect') {
        // An unreadable version is tried again soon, not a whole interval later.
        const delay = result.version === undefined ? handle.config.probes.ready.suspectInterval : version.probe.interval;
        handle.versionTimer = this.deps.clock.setTimeout(() => this.checkVersion(handle), delay);
      }
    });
  }

  private unavailable(message: string): ProxyError {
    return new ProxyError('NO_READY_INSTANCE', 503, message, {
      service: this.config.name,
      reason: this.whyUnavailable(),
      retryAfterSeconds: RETRY_AFTER_SECONDS,
    });
  }

  private whyUnavailable(): string {
    return Object.values(this.state.instances)
      .map((i) => `${i.name} is ${i.state}${i.admitted ? '' : ' (version not admitted)'}: ${i.reason}`)
      .join('; ');
  }
}
