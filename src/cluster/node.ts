import type { Coordination } from './coordination.js';
import { ClusterError } from './errors.js';
import { Leadership, type LeaderView } from './leadership.js';

/** A service as the cluster sees it on this node: who serves it here, and a way to follow the leader. */
export interface RoutedService {
  readonly name: string;
  active(): string | null;
  /** Moves traffic to the leader's choice; says why not when that instance cannot serve here. */
  follow(instance: string, leader: string): string | undefined;
  /** Whether failback is left to the leader (true on every node that does not lead). */
  setFollowing(following: boolean): void;
  /** Instances held out of rotation (drained, or held stopped) on this node. */
  held(): string[];
  /** Drains (`held` true) or resumes an instance as the leader did; says why not when it cannot. */
  hold(instance: string, held: boolean): string | undefined;
  /** The versions admitted now (a deploy admits two for a while); empty without `version:`. */
  expected(): string[];
  /** Admits the versions the leader admits. */
  expect(versions: string[]): void;
  onChange(listener: () => void): () => void;
}

/** What only the leader does (jobs, deploys, drills, schedules): begun with its epoch, ended when it stops leading. */
export interface LeaderDuties {
  begin(epoch: number): Promise<void>;
  end(reason: string): Promise<void>;
}

export interface ClusterNodeOptions {
  coordination: Coordination;
  /** Ends with '/'. */
  prefix: string;
  node: string;
  url: string | null;
  ttlMs: number;
  services: RoutedService[];
  duties: LeaderDuties;
  /** A change of leadership or of etcd's reachability, with why (an event). */
  onLeaderChange: (view: LeaderView, previous: LeaderView, reason: string) => void;
  onError: (message: string, error: unknown) => void;
  /** Each etcd call's latency, for metrics. */
  onCall?: (operation: string, ms: number, ok: boolean) => void;
  /** What this node says of its shared configuration in its member entry (see SharedConfig). */
  config?: () => MemberConfig;
}

/** The shared configuration's revision a node runs (null: its own file), and the newer one it could not take up, with why. */
export interface MemberConfig {
  revision: number | null;
  pending?: { revision: number; reason: string } | undefined;
}

/** What the leader publishes for a service: where its traffic goes. */
export interface Routing {
  active: string | null;
  /** Instances the leader holds out of rotation (drained); absent from a leader before drains were shared. */
  held?: string[];
  /** The versions the leader admits (a deploy's); absent from a leader before they were shared. */
  expected?: string[];
  leader: string;
  epoch: number;
  at: number;
}

export interface ClusterView extends LeaderView {
  node: string;
  members: { node: string; url: string | null; at: number; services: Record<string, string | null>; config?: MemberConfig }[];
  routing: Record<string, Routing>;
  /** Services whose traffic here goes elsewhere than the leader's choice, and why. */
  diverging: Record<string, string>;
  /** Why the members could not be read (etcd unreachable). */
  membersError?: string;
}

/**
 * One Understudy in a cluster: stands in the election, carries the leader's routing
 * to its own services (or publishes it when it leads), keeps its member entry, and
 * begins and ends the leader's duties. The data plane never waits on any of it: a
 * node serves with the routing it last had, and fails over on its own at once.
 */
export class ClusterNode {
  readonly leadership: Leadership;
  private readonly routing = new Map<string, Routing>();
  private readonly diverging = new Map<string, string>();
  /** Per service, the instances this node holds because the leader does: resumed when the leader resumes them. */
  private readonly heldForLeader = new Map<string, Set<string>>();
  private readonly unsubscribe: (() => void)[] = [];
  private unwatch: (() => Promise<void>) | undefined;
  private last: LeaderView;
  /** Duties begin and end one after another, never overlapping. */
  private duty: Promise<void> = Promise.resolve();
  private dutyEpoch: number | null = null;
  private memberTimer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(private readonly options: ClusterNodeOptions) {
    this.leadership = new Leadership({
      coordination: this.timed(options.coordination),
      key: `${options.prefix}leader`,
      handoffKey: `${options.prefix}handoff`,
      node: options.node,
      url: options.url,
      ttlMs: options.ttlMs,
      onChange: (view, reason) => this.onLeadership(view, reason),
      onError: options.onError,
      onLease: () => void this.putMember(),
    });
    this.last = this.leadership.view();
  }

  async start(): Promise<void> {
    for (const service of this.options.services) {
      service.setFollowing(true);
      this.unsubscribe.push(service.onChange(() => this.onServiceChange(service)));
    }
    await this.watchRouting();
    await this.leadership.start();
    this.memberTimer = setInterval(() => void this.putMember(), Math.max(1000, this.options.ttlMs));
    this.memberTimer.unref();
    void this.putMember();
  }

  view(): ClusterView {
    return { ...this.leadership.view(), node: this.options.node, members: [], routing: Object.fromEntries(this.routing), diverging: Object.fromEntries(this.diverging) };
  }

  /** The view with every member's entry read from etcd. */
  async fullView(): Promise<ClusterView> {
    const view = this.view();
    try {
      const { entries } = await this.options.coordination.list(`${this.options.prefix}members/`);
      view.members = [...entries.values()].map((text) => JSON.parse(text) as ClusterView['members'][number]).sort((a, b) => a.node.localeCompare(b.node));
    } catch (error) {
      // etcd away: this node's own view is still worth showing.
      view.membersError = (error as Error).message;
    }
    return view;
  }

  /**
   * Hands leadership to `to`: only the leader may, and `to` must be a live member. The
   * handoff key names the chosen node, the leader steps down, and the others hold back
   * for two TTLs while the chosen one claims the key.
   */
  async failover(to: string): Promise<void> {
    const epoch = this.leadership.mustAct(`hand leadership to ${to}`);
    if (to === this.options.node) throw new ClusterError('INVALID_INPUT', `${to} already leads the cluster`);
    const { members } = await this.fullView();
    if (!members.some((m) => m.node === to)) {
      throw new ClusterError('INVALID_INPUT', `${to} is not a live member of the cluster (members: ${members.map((m) => m.node).join(', ') || 'none'})`);
    }
    const handoff = JSON.stringify({ to, from: this.options.node, epoch, at: Date.now() });
    if (!(await this.options.coordination.fencedPut(`${this.options.prefix}leader`, epoch, `${this.options.prefix}handoff`, handoff))) {
      throw new ClusterError('FENCED', `${this.options.node} no longer leads: the handoff was not written`);
    }
    await this.leadership.resign(`handing over to ${to}`, 2 * this.options.ttlMs);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.memberTimer);
    for (const off of this.unsubscribe) off();
    await this.unwatch?.().catch(() => undefined);
    await this.leadership.close();
    await this.duty;
    await this.options.coordination.put(`${this.options.prefix}members/${this.options.node}`, null).catch(() => undefined);
  }

  private onLeadership(view: LeaderView, reason: string): void {
    const previous = this.last;
    this.last = view;
    this.options.onLeaderChange(view, previous, reason);
    if (view.acting && this.dutyEpoch !== view.epoch) this.beginDuties(view.epoch!);
    else if (!view.acting && this.dutyEpoch !== null) this.endDuties(reason);
  }

  private beginDuties(epoch: number): void {
    this.dutyEpoch = epoch;
    this.duty = this.duty.then(async () => {
      if (this.leadership.epoch() !== epoch) return;
      // The routing first: it is what every node needs from a new leader.
      for (const service of this.options.services) service.setFollowing(false);
      for (const service of this.options.services) await this.publish(service);
      // The new leader takes any handoff addressed to it as done.
      await this.options.coordination.fencedPut(`${this.options.prefix}leader`, epoch, `${this.options.prefix}handoff`, null).catch(() => undefined);
      // The duties (the job store's fence first) are tried again every second while this term lasts.
      for (;;) {
        try {
          await this.options.duties.begin(epoch);
          return;
        } catch (error) {
          this.options.onError('could not take up the leader\'s duties; trying again in 1s', error);
        }
        await new Promise((resolve) => setTimeout(resolve, 1000));
        if (this.closed || this.leadership.epoch() !== epoch) return;
      }
    });
  }

  private endDuties(reason: string): void {
    this.dutyEpoch = null;
    for (const service of this.options.services) service.setFollowing(true);
    this.duty = this.duty.then(() => this.options.duties.end(reason)).catch((error: unknown) => this.options.onError('could not end the leader\'s duties', error));
  }

  private onServiceChange(service: RoutedService): void {
    if (this.closed) return;
    if (this.leadership.acting()) {
      const published = this.routing.get(service.name);
      if (published?.active !== service.active() || !sameSet(published.held ?? [], service.held()) || !sameList(published.expected ?? [], service.expected())) {
        void this.publish(service);
      }
      return;
    }
    this.followRouting(service);
  }

  /** The leader writes where a service's traffic goes, fenced on its epoch. */
  private async publish(service: RoutedService): Promise<void> {
    const epoch = this.leadership.epoch();
    if (epoch === null) return;
    const routing: Routing = { active: service.active(), held: service.held(), expected: service.expected(), leader: this.options.node, epoch, at: Date.now() };
    this.routing.set(service.name, routing);
    try {
      await this.options.coordination.fencedPut(`${this.options.prefix}leader`, epoch, `${this.options.prefix}routing/${service.name}`, JSON.stringify(routing));
    } catch (error) {
      this.options.onError(`could not publish the routing of ${service.name}`, error);
    }
    void this.putMember();
  }

  private async watchRouting(): Promise<void> {
    const prefix = `${this.options.prefix}routing/`;
    try {
      const { entries, revision } = await this.options.coordination.list(prefix);
      for (const [key, value] of entries) this.onRouting(key.slice(prefix.length), value);
      this.unwatch = await this.options.coordination.watch(prefix, revision + 1, (key, value) => {
        if (value !== null) this.onRouting(key.slice(prefix.length), value);
      });
    } catch (error) {
      // etcd down at start: serve on local decisions; the leader's routing comes once it answers.
      this.options.onError('could not read the leader\'s routing; serving on this node\'s own view until etcd answers', error);
      setTimeout(() => void (this.closed || this.unwatch ? undefined : this.watchRouting()), 1000).unref();
    }
  }

  private onRouting(name: string, text: string): void {
    let routing: Routing;
    try {
      routing = JSON.parse(text) as Routing;
    } catch {
      return;
    }
    const known = this.routing.get(name);
    if (known && known.epoch > routing.epoch) return; // an older leader's word, delivered late
    this.routing.set(name, routing);
    const service = this.options.services.find((s) => s.name === name);
    if (service && !this.leadership.acting()) this.followRouting(service);
  }

  private followRouting(service: RoutedService): void {
    const routing = this.routing.get(service.name);
    if (!routing || routing.leader === this.options.node) return;
    // The versions first: the instance the leader sends traffic to may serve the one a deploy brings.
    if (routing.expected !== undefined && routing.expected.length > 0 && !sameList(routing.expected, service.expected())) service.expect(routing.expected);
    this.followHolds(service, routing);
    if (routing.active === null) return;
    if (service.active() === routing.active) {
      this.diverging.delete(service.name);
      return;
    }
    const refused = service.follow(routing.active, routing.leader);
    if (refused === undefined) this.diverging.delete(service.name);
    else this.diverging.set(service.name, `the leader sends traffic to ${routing.active}, which cannot serve here: ${refused}`);
  }

  /** Drains here what the leader drained, and resumes what it resumed of those (a drain made on this node alone stays). */
  private followHolds(service: RoutedService, routing: Routing): void {
    if (routing.held === undefined) return;
    const mine = this.heldForLeader.get(service.name) ?? new Set<string>();
    this.heldForLeader.set(service.name, mine);
    const here = new Set(service.held());
    for (const instance of routing.held) {
      if (here.has(instance)) continue;
      const refused = service.hold(instance, true);
      if (refused === undefined) mine.add(instance);
      else this.options.onError(`could not drain ${service.name}/${instance} as the leader ${routing.leader} did`, new Error(refused));
    }
    for (const instance of [...mine]) {
      if (routing.held.includes(instance)) continue;
      mine.delete(instance);
      if (!here.has(instance)) continue;
      const refused = service.hold(instance, false);
      if (refused !== undefined) this.options.onError(`could not resume ${service.name}/${instance} as the leader ${routing.leader} did`, new Error(refused));
    }
  }

  /** Writes this node's member entry again now (its services, its configuration). */
  refreshMember(): void {
    void this.putMember();
  }

  private async putMember(): Promise<void> {
    if (this.closed) return;
    const entry = {
      node: this.options.node,
      url: this.options.url,
      at: Date.now(),
      leader: this.leadership.acting(),
      services: Object.fromEntries(this.options.services.map((s) => [s.name, s.active()])),
      ...(this.options.config ? { config: this.options.config() } : {}),
    };
    try {
      // On this node's lease: a dead member's entry goes with it. Refreshed every TTL and at each change.
      const lease = this.leadership.leaseId();
      if (lease !== null) await this.options.coordination.put(`${this.options.prefix}members/${this.options.node}`, JSON.stringify(entry), lease);
    } catch {
      // etcd down: the entry is refreshed when it answers again
    }
  }

  /** The coordination with each call's latency reported. */
  private timed(coordination: Coordination): Coordination {
    const onCall = this.options.onCall;
    if (!onCall) return coordination;
    const wrap = <A extends unknown[], R>(name: string, fn: (...args: A) => Promise<R>) =>
      async (...args: A): Promise<R> => {
        const started = performance.now();
        try {
          const result = await fn.apply(coordination, args);
          onCall(name, performance.now() - started, true);
          return result;
        } catch (error) {
          onCall(name, performance.now() - started, false);
          throw error;
        }
      };
    return {
      grant: wrap('grant', coordination.grant),
      keepAlive: wrap('keepalive', coordination.keepAlive),
      revoke: wrap('revoke', coordination.revoke),
      claim: wrap('claim', coordination.claim),
      read: wrap('read', coordination.read),
      list: wrap('list', coordination.list),
      fencedPut: wrap('fenced-put', coordination.fencedPut),
      putIfUnchanged: wrap('put-if-unchanged', coordination.putIfUnchanged),
      put: wrap('put', coordination.put),
      watch: coordination.watch.bind(coordination),
      health: coordination.health.bind(coordination),
      close: coordination.close.bind(coordination),
    };
  }
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x) => b.includes(x));
}

function sameList(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
