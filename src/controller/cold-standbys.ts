import type { DesiredState, DesiredStates } from '../cluster/index.js';
import type { InstanceConfig } from '../config/index.js';
import type { EventBody } from '../core/index.js';
import type { Runtime } from '../runtime/index.js';

/** Makes the runtime that really runs an instance on this node, at a version (undefined: the config's). */
type RealRuntime = (version: string | undefined) => Runtime;

interface Wanted {
  service: string;
  instance: string;
  state: DesiredState['state'];
  version: string | null;
}

/** A cold standby this node runs, carried out from the leader's desired state. */
interface Owned {
  service: string;
  config: InstanceConfig;
  make: RealRuntime;
  real: Runtime | undefined;
  version: string | null;
  desired: DesiredState | null;
  restarts: number;
  restartTimer: NodeJS.Timeout | undefined;
  /** Changes are carried out one after another. */
  queue: Promise<void>;
}

export interface ColdStandbysDeps {
  node: string;
  publish: (service: string, event: EventBody) => void;
  onError: (message: string, error: unknown) => void;
}

/**
 * Cold standbys in a cluster. Every node's failover machine decides when a cold standby
 * is needed, but only the leader's decision counts: a start or stop on any node goes to
 * `ask`, and the leader writes it as the instance's desired state in etcd (fenced on its
 * epoch); the node that runs the instance watches its desired states and starts or stops
 * the real process or container. Every node's machine then sees the instance by its
 * probes, as it sees any instance on another node. With etcd away nothing is started or
 * stopped on another node's word.
 */
export class ColdStandbys {
  private desired: DesiredStates | undefined;
  private acting: () => boolean = () => false;
  private unwatch: (() => Promise<void>) | undefined;
  /** The latest word of this node's machines on every delegated instance, for a new leader to write. */
  private readonly wanted = new Map<string, Wanted>();
  private readonly owned = new Map<string, Owned>();
  private closed = false;

  constructor(private readonly deps: ColdStandbysDeps) {}

  /** Whether the leader decides when `instance` runs: a cold standby that names its node. */
  static delegated(instance: InstanceConfig): boolean {
    return instance.tier === 'cold' && instance.node !== undefined;
  }

  /**
   * The runtime a service's machine drives for a delegated instance: its start and stop
   * are a word to the leader. On the node that runs it, pid and signal reach the real one.
   */
  runtime(service: string, instance: InstanceConfig, version: string | undefined, make: RealRuntime): Runtime {
    const key = `${service}/${instance.name}`;
    if (instance.node === this.deps.node && !this.owned.has(key)) {
      this.owned.set(key, { service, config: instance, make, real: undefined, version: null, desired: null, restarts: 0, restartTimer: undefined, queue: Promise.resolve() });
    }
    const owned = () => this.owned.get(key)?.real;
    const ask = (state: DesiredState['state']) => this.ask({ service, instance: instance.name, state, version: version ?? null });
    return {
      kind: 'external',
      get pid() {
        return owned()?.pid;
      },
      start: async () => ask('running'),
      stop: async () => ask('stopped'),
      prepare: async () => undefined,
      recover: async () => undefined,
      onExit: () => undefined,
      signal: (name) => {
        const real = owned();
        if (!real) throw new Error(`${instance.name} is run on ${instance.node} when the leader says so; it has no process here now`);
        real.signal(name);
      },
    };
  }

  /** Begins carrying out the leader's word for this node's cold standbys (after what an earlier run left is dealt with). */
  async attach(desired: DesiredStates, acting: () => boolean): Promise<void> {
    this.desired = desired;
    this.acting = acting;
    await Promise.all(
      [...this.owned.values()].map(async (owned) => {
        // A process or container an earlier, killed Understudy left running is stopped first, as at any start.
        const real = owned.make(undefined);
        owned.real = real;
        this.watchExit(owned, real);
        await real.recover().catch((error: unknown) => this.deps.onError(`could not check ${owned.config.id} for a process left running`, error));
        await real.prepare().catch((error: unknown) => this.deps.onError(`could not prepare the cold standby ${owned.config.id}`, error));
      }),
    );
    if (this.owned.size === 0) return;
    this.unwatch = await desired.watch(
      (service, instance, state) => {
        const owned = this.owned.get(`${service}/${instance}`);
        if (owned) this.carryOut(owned, state);
      },
      this.deps.onError,
    );
  }

  /** This node now leads: it writes what its machines want running (a stop is left to their next decision). */
  onLead(): void {
    for (const wanted of this.wanted.values()) if (wanted.state === 'running') this.write(wanted);
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.unwatch?.().catch(() => undefined);
    await Promise.all(
      [...this.owned.values()].map(async (owned) => {
        clearTimeout(owned.restartTimer);
        await owned.queue;
        await owned.real?.stop().catch((error: unknown) => this.deps.onError(`stopping ${owned.config.id} failed`, error));
      }),
    );
  }

  private ask(wanted: Wanted): void {
    const key = `${wanted.service}/${wanted.instance}`;
    const before = this.wanted.get(key);
    this.wanted.set(key, wanted);
    if (before && before.state === wanted.state && before.version === wanted.version) return;
    if (this.acting()) this.write(wanted);
  }

  private write(wanted: Wanted): void {
    this.desired
      ?.want(wanted.service, wanted.instance, wanted.state, wanted.version)
      .then((written) => {
        if (!written && this.acting()) this.deps.onError(`the desired state of ${wanted.service}/${wanted.instance} was refused`, new Error('fenced: another leader'));
      })
      .catch((error: unknown) => this.deps.onError(`could not write the desired state of ${wanted.service}/${wanted.instance}`, error));
  }

  private carryOut(owned: Owned, desired: DesiredState | null): void {
    owned.desired = desired;
    owned.restarts = 0;
    clearTimeout(owned.restartTimer);
    owned.queue = owned.queue.then(() => this.apply(owned)).catch((error: unknown) => this.deps.onError(`could not carry out the desired state of ${owned.config.id}`, error));
  }

  private async apply(owned: Owned): Promise<void> {
    const desired = owned.desired;
    if (this.closed || !desired) return;
    const reason = `${desired.leader} (epoch ${desired.epoch}) wants it ${desired.state}`;
    if (desired.state === 'stopped') {
      if (owned.real?.pid !== undefined) {
        await owned.real.stop();
        this.deps.publish(owned.service, { type: 'desired-state', node: this.deps.node, instance: owned.config.name, state: 'stopped', leader: desired.leader, reason });
      }
      return;
    }
    if (owned.real && owned.version !== desired.version) {
      await owned.real.stop();
      owned.real = undefined;
    }
    if (!owned.real) {
      const real = owned.make(desired.version ?? undefined);
      owned.real = real;
      owned.version = desired.version;
      this.watchExit(owned, real);
    }
    if (owned.real.pid !== undefined) return;
    await owned.real.start();
    this.deps.publish(owned.service, { type: 'desired-state', node: this.deps.node, instance: owned.config.name, state: 'running', leader: desired.leader, reason });
  }

  /** An exit the leader did not ask for: started again while it is wanted, after the runtime's restart delay (doubling). */
  private watchExit(owned: Owned, real: Runtime): void {
    real.onExit(() => {
      if (this.closed || owned.real !== real || owned.desired?.state !== 'running') return;
      const runtime = owned.config.runtime;
      const base = runtime.type === 'external' ? 1000 : runtime.restartDelay;
      const max = runtime.type === 'external' ? 30_000 : runtime.restartDelayMax;
      const delay = Math.min(base * 2 ** owned.restarts, max);
      owned.restarts += 1;
      owned.restartTimer = setTimeout(() => {
        owned.queue = owned.queue.then(() => this.apply(owned)).catch((error: unknown) => this.deps.onError(`could not start ${owned.config.id} again`, error));
      }, delay);
      owned.restartTimer.unref();
    });
  }
}
