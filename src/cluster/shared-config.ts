import { createHash } from 'node:crypto';
import type { Coordination } from './coordination.js';
import { ClusterError } from './errors.js';

/** One revision of the cluster's configuration, as stored in etcd. */
export interface StoredConfig {
  /** 1, 2, 3…: one more at each apply or rollback. */
  revision: number;
  /** The YAML exactly as applied. */
  text: string;
  sha256: string;
  /** The node that stored it, and when (ms since the epoch). */
  by: string;
  at: number;
  /** A rollback stores an earlier revision's text again: which one. */
  rolledBackTo?: number;
}

export type StoredConfigSummary = Omit<StoredConfig, 'text'>;

/** Revisions kept in etcd; an older one is deleted when a new one is stored. */
export const KEPT_REVISIONS = 100;

/**
 * The cluster's shared configuration in etcd: `PREFIX/config/current` is the revision
 * every node should run, and `PREFIX/config/revisions/N` keeps the last
 * KEPT_REVISIONS for `config show --revision` and rollbacks. A store is one
 * transaction that compares `current`'s last change, so two applies at once never
 * both become revision N: the second is refused and can be applied again.
 */
export class SharedConfig {
  private readonly currentKey: string;
  private readonly revisionsPrefix: string;

  constructor(
    private readonly coordination: Coordination,
    prefix: string,
  ) {
    this.currentKey = `${prefix}config/current`;
    this.revisionsPrefix = `${prefix}config/revisions/`;
  }

  /** The revision every node should run, or null when none was ever applied. */
  async current(): Promise<StoredConfig | null> {
    return (await this.readCurrent())?.stored ?? null;
  }

  async get(revision: number): Promise<StoredConfig | null> {
    const held = await this.coordination.read(this.revisionKey(revision));
    return held ? (JSON.parse(held.value) as StoredConfig) : null;
  }

  /** The revisions kept, newest first, without their text. */
  async history(): Promise<StoredConfigSummary[]> {
    const { entries } = await this.coordination.list(this.revisionsPrefix);
    return [...entries.values()]
      .map((text) => {
        const { text: _text, ...summary } = JSON.parse(text) as StoredConfig;
        return summary;
      })
      .sort((a, b) => b.revision - a.revision);
  }

  /**
   * Stores `text` as the next revision. With `ifRevision`, only while the current one
   * is that revision (0: none yet): ClusterError CONFLICT otherwise, and nothing is stored.
   */
  async store(text: string, by: string, options: { ifRevision?: number; rolledBackTo?: number } = {}): Promise<StoredConfig> {
    const held = await this.readCurrent();
    const now = held?.stored.revision ?? 0;
    if (options.ifRevision !== undefined && options.ifRevision !== now) {
      throw new ClusterError('CONFLICT', `the cluster's configuration is at revision ${now}, not ${options.ifRevision}: nothing was stored`);
    }
    const stored: StoredConfig = {
      revision: now + 1,
      text,
      sha256: createHash('sha256').update(text).digest('hex'),
      by,
      at: Date.now(),
      ...(options.rolledBackTo === undefined ? {} : { rolledBackTo: options.rolledBackTo }),
    };
    const value = JSON.stringify(stored);
    const writes: { key: string; value: string | null }[] = [
      { key: this.currentKey, value },
      { key: this.revisionKey(stored.revision), value },
    ];
    if (stored.revision > KEPT_REVISIONS) writes.push({ key: this.revisionKey(stored.revision - KEPT_REVISIONS), value: null });
    const done = await this.coordination.putIfUnchanged(this.currentKey, held?.modRevision ?? 0, writes);
    if (done === null) throw new ClusterError('CONFLICT', `another apply stored revision ${now + 1} at the same moment: nothing was stored; look at it and apply again`);
    return stored;
  }

  /**
   * Calls `onStored` with the current revision now (when there is one) and with each one
   * stored from then on. A node that was cut off from etcd gets the newest when the watch
   * resumes. Returns the unsubscribe.
   */
  async watch(onStored: (stored: StoredConfig) => void): Promise<() => Promise<void>> {
    const held = await this.readCurrentAt();
    if (held.stored) onStored(held.stored);
    return this.coordination.watch(this.currentKey, held.revision + 1, (_key, value) => {
      if (value !== null) onStored(JSON.parse(value) as StoredConfig);
    });
  }

  private revisionKey(revision: number): string {
    return `${this.revisionsPrefix}${String(revision).padStart(10, '0')}`;
  }

  private async readCurrent(): Promise<{ stored: StoredConfig; modRevision: number } | null> {
    const held = await this.coordination.read(this.currentKey);
    return held ? { stored: JSON.parse(held.value) as StoredConfig, modRevision: held.modRevision } : null;
  }

  /** The current revision and the store's revision when it was read, for a watch that misses nothing. */
  private async readCurrentAt(): Promise<{ stored: StoredConfig | null; revision: number }> {
    const { entries, revision } = await this.coordination.list(this.currentKey);
    const text = entries.get(this.currentKey);
    return { stored: text === undefined ? null : (JSON.parse(text) as StoredConfig), revision };
  }
}
