import { ClusterError, EtcdCoordination, SharedConfig, type MemberConfig, type StoredConfig, type StoredConfigSummary } from '../cluster/index.js';
import { ConfigError, diffConfigs, parseConfig, type Config, type ConfigDiff } from '../config/index.js';
import type { EventBody } from '../core/index.js';

/** What `GET /v1/config` answers: the revision this node runs, the newest stored, and one it could not take up. */
export interface ConfigView {
  node: string;
  /** The shared revision this node runs; null while it runs its own file (none was ever applied, or etcd did not answer at start). */
  revision: number | null;
  file: string;
  /** The newest revision in etcd, or null when none was applied (or etcd does not answer: `error`). */
  stored: StoredConfigSummary | null;
  pending: { revision: number; reason: string; restart?: string[] } | null;
  error?: string;
}

export interface ApplyResult {
  stored: StoredConfigSummary;
  /** What changed for this node, live and needing a restart. */
  diff: ConfigDiff;
}

export interface ConfigKeeperDeps {
  shared: SharedConfig;
  node: string;
  /** The local file the node was started with: relative paths in a shared config resolve from its folder. */
  file: string;
  /** The revision the node started on (null: its own file). */
  revision: number | null;
  running: () => Config;
  /** Takes up `next`, whose changes are all live (`diff.restart` is empty). */
  apply: (next: Config, diff: ConfigDiff) => void;
  publish: (event: EventBody) => void;
  onError: (message: string, error: unknown) => void;
  /** This node's member entry changed (its revision, or a pending one). */
  onChange: () => void;
}

/**
 * A node's side of the shared configuration. `apply` checks a text as every node of its
 * cluster would read it, then stores it as the next revision; each node watches the
 * current revision and takes it up live when every change is a live field. A revision
 * that needs a restart, or that this node cannot read, is not taken up: the node keeps
 * what it runs and says why (`config-refused`, `GET /v1/config`, `cluster status`); a
 * restart of the node starts it on the newest revision.
 */
export class ConfigKeeper {
  private revision: number | null;
  private pending: ConfigView['pending'] = null;
  private unwatch: (() => Promise<void>) | undefined;
  private retry: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(private readonly deps: ConfigKeeperDeps) {
    this.revision = deps.revision;
  }

  async start(): Promise<void> {
    try {
      this.unwatch = await this.deps.shared.watch((stored) => this.onStored(stored));
    } catch (error) {
      // etcd away: the node runs what it has; the watch begins once etcd answers.
      this.deps.onError('could not watch the shared configuration; trying again in 1s', error);
      if (!this.closed) this.retry = setTimeout(() => void this.start(), 1000).unref();
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retry);
    await this.unwatch?.().catch(() => undefined);
  }

  member(): MemberConfig {
    return { revision: this.revision, ...(this.pending ? { pending: { revision: this.pending.revision, reason: this.pending.reason } } : {}) };
  }

  async view(): Promise<ConfigView> {
    const base = { node: this.deps.node, revision: this.revision, file: this.deps.file, pending: this.pending };
    try {
      const stored = await this.deps.shared.current();
      return { ...base, stored: stored && summary(stored) };
    } catch (error) {
      return { ...base, stored: null, error: (error as Error).message };
    }
  }

  async show(revision?: number): Promise<StoredConfig> {
    const stored = revision === undefined ? await this.deps.shared.current() : await this.deps.shared.get(revision);
    if (!stored) {
      throw new ClusterError(
        'INVALID_INPUT',
        revision === undefined ? 'no configuration was applied to the cluster yet (understudy config apply -c FILE)' : `revision ${revision} is not kept (see understudy config history)`,
      );
    }
    return stored;
  }

  history(): Promise<StoredConfigSummary[]> {
    return this.deps.shared.history();
  }

  /**
   * Checks `text` as each node of its cluster reads it (every mistake named, with its
   * line), then stores it as the next revision. Nothing is stored when any node could
   * not read it. With `ifRevision`, only while the current revision is that one.
   */
  async apply(text: string, options: { ifRevision?: number; rolledBackTo?: number } = {}): Promise<ApplyResult> {
    const next = this.check(text);
    // Before the store: this node's watch may take the revision up before the store returns.
    const diff = diffConfigs(this.deps.running(), next);
    const stored = await this.deps.shared.store(text, this.deps.node, options);
    return { stored: summary(stored), diff };
  }

  /** Stores revision `to`'s text again, as the next revision (history only grows). */
  async rollback(to: number, options: { ifRevision?: number } = {}): Promise<ApplyResult> {
    const earlier = await this.show(to);
    return this.apply(earlier.text, { ...options, rolledBackTo: to });
  }

  /** The config as this node reads `text`; ConfigError when any node of its cluster could not. */
  private check(text: string): Config {
    const mine = parseConfig(text, this.deps.file, { node: this.deps.node });
    if (!mine.cluster) {
      throw new ClusterError('INVALID_INPUT', 'a configuration shared through etcd needs its cluster: section (the nodes would leave the cluster at their next start)');
    }
    for (const node of Object.keys(mine.cluster.nodes)) {
      if (node !== this.deps.node) parseConfig(text, this.deps.file, { node });
    }
    return mine;
  }

  private onStored(stored: StoredConfig): void {
    if (this.closed || stored.revision === this.revision) return;
    let next: Config;
    try {
      next = parseConfig(stored.text, this.deps.file, { node: this.deps.node });
    } catch (error) {
      const reason = error instanceof ConfigError ? error.message : (error as Error).message;
      this.refuse(stored, `this node cannot read it: ${reason}`);
      return;
    }
    const diff = diffConfigs(this.deps.running(), next);
    if (diff.restart.length > 0) {
      this.refuse(stored, `it changes what only a restart of this node takes up: ${diff.restart.join(', ')}`, diff.restart);
      return;
    }
    try {
      this.deps.apply(next, diff);
    } catch (error) {
      this.refuse(stored, `it could not be taken up: ${(error as Error).message}`);
      return;
    }
    const from = this.revision;
    this.revision = stored.revision;
    this.pending = null;
    this.deps.publish({
      type: 'config-applied',
      node: this.deps.node,
      revision: stored.revision,
      previous: from,
      changed: diff.live,
      reason: diff.live.length === 0 ? `revision ${stored.revision} changes nothing this node runs` : `changed live: ${diff.live.join(', ')}`,
    });
    this.deps.onChange();
  }

  private refuse(stored: StoredConfig, reason: string, restart?: string[]): void {
    this.pending = { revision: stored.revision, reason, ...(restart ? { restart } : {}) };
    this.deps.publish({
      type: 'config-refused',
      node: this.deps.node,
      revision: stored.revision,
      running: this.revision,
      reason: `keeps ${this.revision === null ? 'its own file' : `revision ${this.revision}`}: ${reason}`,
    });
    this.deps.onChange();
  }
}

function summary(stored: StoredConfig): StoredConfigSummary {
  const { text: _text, ...rest } = stored;
  return rest;
}

/**
 * The configuration a node of a cluster starts on: the shared one in etcd when there is
 * one this node can read, else its own file (with why, for the log). The file's
 * `cluster:` section says where etcd is.
 */
export async function startingConfig(local: Config): Promise<{ config: Config; revision: number | null; note: string }> {
  const cluster = local.cluster;
  if (!cluster) return { config: local, revision: null, note: 'no cluster' };
  const coordination = new EtcdCoordination({ endpoints: cluster.etcd.endpoints, timeout: cluster.etcd.timeout });
  try {
    const stored = await new SharedConfig(coordination, cluster.etcd.prefix).current();
    if (!stored) return { config: local, revision: null, note: `no shared configuration in etcd; running ${local.file}` };
    try {
      return { config: parseConfig(stored.text, local.file, { node: cluster.node }), revision: stored.revision, note: `running the shared configuration, revision ${stored.revision}` };
    } catch (error) {
      return { config: local, revision: null, note: `the shared configuration (revision ${stored.revision}) cannot be read on this node; running ${local.file}: ${(error as Error).message}` };
    }
  } catch (error) {
    return { config: local, revision: null, note: `etcd did not answer; running ${local.file} until it does: ${(error as Error).message}` };
  } finally {
    await coordination.close();
  }
}
