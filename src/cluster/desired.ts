import type { Coordination } from './coordination.js';
import type { Leadership } from './leadership.js';

/** The leader's word on an instance another node runs: whether it should run, and at which version. */
export interface DesiredState {
  state: 'running' | 'stopped';
  /** The version to run (a deploy's), or null for the config's own. */
  version: string | null;
  leader: string;
  epoch: number;
  at: number;
}

/**
 * Desired-state keys, `PREFIX/desired/SERVICE/INSTANCE`: the leader says which of the
 * cold standbys should run (every write fenced on its epoch), and the node that runs
 * each one carries it out. A node never starts a cold standby on its own word in a
 * cluster, so two nodes' machines that disagree cannot both start GPUs.
 */
export class DesiredStates {
  private readonly root: string;

  constructor(
    private readonly coordination: Coordination,
    private readonly prefix: string,
    private readonly leadership: Leadership,
    private readonly node: string,
  ) {
    this.root = `${prefix}desired/`;
  }

  /** Writes the leader's word; false when this node does not lead now or a newer leader's fence refused it. */
  async want(service: string, instance: string, state: DesiredState['state'], version: string | null): Promise<boolean> {
    const epoch = this.leadership.epoch();
    if (epoch === null || !this.leadership.acting()) return false;
    const desired: DesiredState = { state, version, leader: this.node, epoch, at: Date.now() };
    return this.coordination.fencedPut(`${this.prefix}leader`, epoch, `${this.root}${service}/${instance}`, JSON.stringify(desired));
  }

  /**
   * Calls `onChange` with every desired state now and at each change (null: deleted).
   * Until etcd answers it tries again every second; the watch resumes by itself after.
   */
  async watch(onChange: (service: string, instance: string, desired: DesiredState | null) => void, onError: (message: string, error: unknown) => void): Promise<() => Promise<void>> {
    let unwatch: (() => Promise<void>) | undefined;
    let closed = false;
    let retry: NodeJS.Timeout | undefined;
    const deliver = (key: string, value: string | null) => {
      const [service, instance] = key.slice(this.root.length).split('/');
      if (!service || !instance) return;
      try {
        onChange(service, instance, value === null ? null : (JSON.parse(value) as DesiredState));
      } catch (error) {
        onError(`could not read the desired state at ${key}`, error);
      }
    };
    const begin = async () => {
      try {
        const { entries, revision } = await this.coordination.list(this.root);
        for (const [key, value] of entries) deliver(key, value);
        unwatch = await this.coordination.watch(this.root, revision + 1, deliver);
        if (closed) await unwatch();
      } catch (error) {
        onError("could not read the leader's desired states; trying again in 1s", error);
        if (!closed) retry = setTimeout(() => void begin(), 1000).unref();
      }
    };
    await begin();
    return async () => {
      closed = true;
      clearTimeout(retry);
      await unwatch?.();
    };
  }
}
