import type { Coordination, KeyHolder } from './coordination.js';
import { ClusterError } from './errors.js';

export interface LeadershipOptions {
  coordination: Coordination;
  /** The election key, e.g. /understudy/leader. */
  key: string;
  /** Where a leader stepping down names its successor: the others hold back while it claims the key. */
  handoffKey: string;
  node: string;
  /** This node's admin API, for the others. */
  url: string | null;
  ttlMs: number;
  /** Called after every change of who leads or of this node's standing, with why. */
  onChange: (view: LeaderView, reason: string) => void;
  onError: (message: string, error: unknown) => void;
  /** Called with each new lease granted (what lives on it must be put again). */
  onLease?: (lease: string) => void;
  /** A monotonic clock in ms (default performance.now): deadlines must not move with the wall clock. */
  now?: () => number;
}

export interface LeaderView {
  /** The node that holds the election key, as last seen; null when none does. */
  leader: string | null;
  /** The leader's epoch: the create revision of its key. */
  epoch: number | null;
  /** The leader's admin API. */
  url: string | null;
  /** This node holds the key and its lease is surely still alive: it may act. */
  acting: boolean;
  /** Whether the last call to etcd was answered. */
  etcd: 'ok' | 'unreachable';
  /** Why etcd is unreachable, when it is. */
  etcdError: string | null;
}

interface Term {
  epoch: number;
  /** Past this (monotonic ms) the lease may have run out in etcd: stop acting before it. */
  actUntil: number;
}

interface Value {
  node: string;
  url: string | null;
}

/**
 * Leader election on a lease and one key, the way Patroni does it on etcd: the leader
 * renews its lease every TTL/3 and stops acting on its own once it can no longer be
 * sure the lease is alive, at the time it sent the last renewal that was answered plus
 * the TTL less a margin. It does not wait for the client library to report the lease
 * lost (etcd3 does that only after about 2 × TTL). Every write a leader makes is fenced
 * on its epoch (`Coordination.fencedPut`, the job store's epoch), so one that was paused
 * and woke after its term changes nothing.
 */
export class Leadership {
  private lease: { id: string; validUntil: number } | null = null;
  private term: Term | null = null;
  private observed: { value: Value; revision: number } | null = null;
  private etcdError: string | null = null;
  /** Since when (monotonic ms) calls to etcd have failed without one answered; null while they are answered. */
  private failingSince: number | null = null;
  private timer: NodeJS.Timeout | undefined;
  private guard: NodeJS.Timeout | undefined;
  private unwatch: (() => Promise<void>) | undefined;
  private running: Promise<void> | undefined;
  private closed = false;
  private again = false;
  /** Until then (monotonic ms) this node does not claim the key: it stepped down for another. */
  private holdOffUntil = 0;
  private readonly now: () => number;
  private readonly margin: number;

  constructor(private readonly options: LeadershipOptions) {
    this.now = options.now ?? (() => performance.now());
    // Room for a pause between the check and the act (a GC, a busy event loop), and for the
    // renewal's own trip: a quarter of the TTL, at most 750 ms.
    this.margin = Math.min(750, options.ttlMs / 4);
  }

  view(): LeaderView {
    return {
      leader: this.observed?.value.node ?? null,
      epoch: this.observed?.revision ?? null,
      url: this.observed?.value.url ?? null,
      acting: this.acting(),
      etcd: this.etcdError === null ? 'ok' : 'unreachable',
      etcdError: this.etcdError,
    };
  }

  /** Whether this node leads and may act now. Check it right before every leader action. */
  acting(): boolean {
    return this.term !== null && this.now() < this.term.actUntil;
  }

  /** The lease this node holds now (its member entry lives on it), if any. */
  leaseId(): string | null {
    return this.lease?.id ?? null;
  }

  /** The epoch of this node's current term, if it may act. */
  epoch(): number | null {
    return this.acting() ? this.term!.epoch : null;
  }

  /** Throws NOT_LEADER, naming the leader, unless this node may act now. */
  mustAct(what: string): number {
    const epoch = this.epoch();
    if (epoch !== null) return epoch;
    const { leader, url } = this.view();
    const who = leader === null ? 'no node leads the cluster now' : `${leader} leads the cluster${url ? ` (${url})` : ''}`;
    throw new ClusterError('NOT_LEADER', `cannot ${what} on ${this.options.node}: ${who}`, { leader, url });
  }

  async start(): Promise<void> {
    const { coordination, key } = this.options;
    // Who leads now, then every change after that read.
    try {
      const { entries, revision } = await coordination.list(key);
      const current = entries.get(key);
      if (current !== undefined) {
        const holder = await coordination.read(key);
        if (holder) this.see(holder, 'the leader when this node started');
      }
      this.unwatch = await coordination.watch(key, revision + 1, (changed, _value, holder) => {
        if (changed !== key) return;
        if (holder) this.see(holder, `${parse(holder.value).node} was elected`);
        else this.vacated();
      });
      this.etcdError = null;
    } catch (error) {
      this.unreachable(error);
    }
    this.schedule(0);
  }

  /**
   * Steps down: stops acting at once, revokes the lease (the key goes with it) and
   * does not stand again for `holdOffMs`, so another node takes over.
   */
  async resign(reason: string, holdOffMs: number): Promise<void> {
    this.holdOffUntil = this.now() + holdOffMs;
    const lease = this.lease;
    this.lease = null;
    this.demote(reason);
    if (lease) await this.options.coordination.revoke(lease.id).catch((error: unknown) => this.options.onError('could not revoke the leader lease', error));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    clearTimeout(this.guard);
    await this.running;
    await this.unwatch?.().catch(() => undefined);
    // Leaving on purpose: hand the key over now rather than after the TTL.
    if (this.lease) await this.options.coordination.revoke(this.lease.id).catch(() => undefined);
    this.lease = null;
    if (this.term) this.demote('this node is shutting down');
  }

  private schedule(delayMs: number): void {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      if (this.running) {
        this.again = true; // once the round in progress ends
        return;
      }
      this.running = this.round().finally(() => {
        this.running = undefined;
        const again = this.again;
        this.again = false;
        // A round that failed is tried again soon, not a third of the TTL later: an etcd that
        // is electing a new leader of its own answers again within a second, and the lease
        // must be renewed before this node's deadline.
        this.schedule(again ? 0 : this.failingSince !== null ? Math.min(200, this.options.ttlMs / 10) : this.options.ttlMs / 3);
      });
    }, delayMs);
  }

  /** One round: keep a lease, renew it, and stand for election when no one leads. */
  private async round(): Promise<void> {
    const { coordination } = this.options;
    try {
      if (!this.lease) {
        const sent = this.now();
        const grant = await coordination.grant(this.options.ttlMs);
        this.lease = { id: grant.id, validUntil: sent + grant.ttlMs };
        this.options.onLease?.(grant.id);
      } else {
        const sent = this.now();
        const left = await coordination.keepAlive(this.lease.id);
        if (left <= 0) {
          this.lease = null;
          if (this.term) this.demote('the leader lease expired in etcd');
          this.reachable();
          return;
        }
        this.lease.validUntil = sent + left;
        if (this.term) this.extend();
      }
      this.reachable();
      if (this.term) return;
      // Read the key rather than trust the watch alone: a delete missed while etcd was away must not keep this node from standing.
      const holder = await coordination.read(this.options.key);
      if (holder) {
        this.see(holder, `${parse(holder.value).node} leads`);
        if (holder.lease === this.lease?.id) await this.stand(); // still ours from before a short outage
      } else {
        if (this.observed) {
          const before = this.observed;
          this.observed = null;
          this.options.onChange(this.view(), `${before.value.node} no longer leads`);
        }
        if (this.now() >= this.holdOffUntil) await this.stand();
      }
    } catch (error) {
      this.unreachable(error);
    }
  }

  /** Claims the key; wins when no one holds it, or when it is still ours from before (same lease). */
  private async stand(): Promise<void> {
    const lease = this.lease;
    if (!lease || this.closed) return;
    const value: Value = { node: this.options.node, url: this.options.url };
    const { won, holder } = await this.options.coordination.claim(this.options.key, JSON.stringify(value), lease.id);
    if (!holder) return;
    const ours = won || holder.lease === lease.id;
    this.see(holder, won ? `${this.options.node} was elected` : `${parse(holder.value).node} leads`);
    if (!ours || this.lease !== lease) return;
    this.term = { epoch: holder.revision, actUntil: 0 };
    this.extend();
    if (this.acting()) this.options.onChange(this.view(), won ? `${this.options.node} was elected (epoch ${holder.revision})` : `${this.options.node} leads again (epoch ${holder.revision})`);
    else this.term = null;
  }

  private extend(): void {
    if (!this.term || !this.lease) return;
    this.term.actUntil = this.lease.validUntil - this.margin;
    this.watchDeadline();
  }

  /** Stops acting at the deadline itself, not at the next round (a timer may fire a little early: then again). */
  private watchDeadline(): void {
    clearTimeout(this.guard);
    if (!this.term) return;
    const left = this.term.actUntil - this.now();
    if (left <= 0) {
      // No renewal answered for the whole TTL: etcd is away as far as this node can tell.
      this.failingSince ??= this.now();
      this.etcdError ??= 'etcd answered no lease renewal in time';
      return this.demote(`the leader lease was not renewed in time (etcd: ${this.etcdError})`);
    }
    this.guard = setTimeout(() => this.watchDeadline(), Math.ceil(left));
  }

  private demote(reason: string): void {
    if (!this.term) return;
    this.term = null;
    clearTimeout(this.guard);
    this.options.onChange(this.view(), `${this.options.node} stopped leading: ${reason}`);
  }

  private see(holder: KeyHolder, reason: string): void {
    const before = this.observed;
    this.observed = { value: parse(holder.value), revision: holder.revision };
    if (this.term && holder.revision !== this.term.epoch) this.demote(`${this.observed.value.node} holds the key now`);
    if (before?.revision !== holder.revision) this.options.onChange(this.view(), reason);
  }

  /** The key was deleted: its holder's lease ran out, or it stepped down. */
  private vacated(): void {
    const before = this.observed;
    this.observed = null;
    if (this.term) this.demote('the leader key was deleted');
    if (before) this.options.onChange(this.view(), `${before.value.node} no longer leads (its lease ended or it stepped down)`);
    if (this.closed) return;
    // Stand at once rather than at the next round, unless the leader that stepped down chose another.
    void this.options.coordination
      .read(this.options.handoffKey)
      .then((handoff) => {
        const { to, at } = handoff ? (JSON.parse(handoff.value) as { to?: string; at?: number }) : {};
        const fresh = at !== undefined && Math.abs(Date.now() - at) < 2 * this.options.ttlMs;
        if (fresh && to !== undefined && to !== this.options.node) this.holdOffUntil = Math.max(this.holdOffUntil, this.now() + 2 * this.options.ttlMs);
      })
      .catch(() => undefined)
      .finally(() => this.schedule(Math.max(0, this.holdOffUntil - this.now())));
  }

  private reachable(): void {
    this.failingSince = null;
    if (this.etcdError === null) return;
    this.etcdError = null;
    this.options.onChange(this.view(), 'etcd answers again');
  }

  /**
   * A failed call. etcd is said to be unreachable only once calls have failed for half
   * the TTL (at most a second): one member dying, or etcd electing its own leader, fails
   * a call or two and is not worth an event.
   */
  private unreachable(error: unknown): void {
    const message = (error as Error).message;
    this.failingSince ??= this.now();
    if (this.etcdError !== null) {
      this.etcdError = message;
      return;
    }
    if (this.now() - this.failingSince < Math.min(1000, this.options.ttlMs / 2) && this.running !== undefined) return;
    this.etcdError = message;
    this.options.onChange(this.view(), `etcd does not answer: ${message}`);
  }
}

function parse(value: string): Value {
  try {
    const parsed = JSON.parse(value) as Partial<Value>;
    return { node: String(parsed.node ?? '?'), url: typeof parsed.url === 'string' ? parsed.url : null };
  } catch {
    return { node: '?', url: null };
  }
}
