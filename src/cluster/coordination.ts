/**
 * What the cluster needs of its coordination store: leases, one key held by a lease,
 * writes fenced on that key, and watches. etcd is the implementation (`etcd.ts`); the
 * election logic (`leadership.ts`) is written against this interface only.
 */
export interface Coordination {
  /** A new lease of `ttlMs` (whole seconds); nothing keeps it alive but `keepAlive`. */
  grant(ttlMs: number): Promise<LeaseGrant>;
  /** Renews the lease once; the TTL left in ms, 0 when the store no longer knows it. */
  keepAlive(lease: string): Promise<number>;
  revoke(lease: string): Promise<void>;
  /**
   * Puts `value` at `key` on `lease` if no one holds the key. Either way, says who holds
   * it now: `revision` is the key's create revision, the holder's epoch.
   */
  claim(key: string, value: string, lease: string): Promise<{ won: boolean; holder: KeyHolder | null }>;
  read(key: string): Promise<KeyHolder | null>;
  /** Every key under `prefix` and its value, and the store's revision when read. */
  list(prefix: string): Promise<{ entries: Map<string, string>; revision: number }>;
  /**
   * Puts (or, with `value` null, deletes) `key` only while `fenceKey` is still the one
   * created at `epoch`: a leader that was replaced writes nothing. False when refused.
   */
  fencedPut(fenceKey: string, epoch: number, key: string, value: string | null): Promise<boolean>;
  /**
   * Makes every write of `writes` (a null value deletes) in one transaction, only while
   * `key` was last changed at `modRevision` (0: `key` does not exist). The store's
   * revision after the writes, or null when `key` had changed.
   */
  putIfUnchanged(key: string, modRevision: number, writes: { key: string; value: string | null }[]): Promise<number | null>;
  /** Puts (or, with `value` null, deletes) `key`, on `lease` when given (gone with it). */
  put(key: string, value: string | null, lease?: string): Promise<void>;
  /** Calls `onChange` for each put (value) and delete (null) under `prefix` after `fromRevision`. */
  watch(prefix: string, fromRevision: number, onChange: (key: string, value: string | null, holder: KeyHolder | null) => void): Promise<() => Promise<void>>;
  /** Whether each endpoint answers, and the latency of one read, for status. */
  health(): Promise<{ endpoint: string; ok: boolean; ms: number; error?: string }[]>;
  close(): Promise<void>;
}

export interface LeaseGrant {
  id: string;
  ttlMs: number;
}

export interface KeyHolder {
  value: string;
  /** The key's create revision: the epoch of whoever holds it. */
  revision: number;
  /** The revision of the key's last change. */
  modRevision: number;
  lease: string;
}

