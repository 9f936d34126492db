import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type { DestinationStream } from 'pino';
import { diffConfigs, type Config } from '../config/index.js';
import { BackupError, SnapshotStore } from '../backup/index.js';
import { ClusterError, ClusterNode, DesiredStates, EtcdCoordination, fencedStore, PgJobStore, SharedConfig, type ClusterView, type LeaderView } from '../cluster/index.js';
import { systemClock, type Clock, type EventBody, type UnderstudyEvent } from '../core/index.js';
import { JobError, JobFiles, JobRunner, ThreadedJobStore, type JobStore } from '../jobs/index.js';
import { Alerter, EventLog, LogRing, Metrics, RecentTraffic, createLogger, type Logger } from '../observe/index.js';
import { Gateway, Idempotency, type ListenerSpec, type ProxyHooks, type RequestReport } from '../proxy/index.js';
import { Backups } from './backups.js';
import { Deployer } from './deploy.js';
import { Drills } from './drills.js';
import { ReleaseBook, ReleaseError } from './releases.js';
import { ServiceController, type ServiceView } from './service.js';
import { ColdStandbys } from './cold-standbys.js';
import { ConfigKeeper, type ApplyResult, type ConfigView } from './shared-config.js';

type Lifecycle = 'created' | 'starting' | 'running' | 'stopping' | 'stopped' | 'failed';

/**
 * One running Understudy: the services' controllers, the gateway in front of
 * them, and the event log, metrics and logs that watch them.
 */
export class Understudy {
  readonly events: EventLog;
  readonly metrics = new Metrics();
  readonly log: Logger;
  /** Alerts raised from events (a failed backup or rollback, a quarantine...), sent to the configured webhooks and command. */
  readonly alerts: Alerter;
  readonly drills: Drills;
  /** The gateway's recent figures per instance (the dashboard's charts and "who answered"). */
  readonly traffic: RecentTraffic;
  /** The newest log lines, kept for the dashboard (a request id leads to its lines). */
  readonly logLines = new LogRing();
  private readonly services = new Map<string, ServiceController>();
  private readonly gateway: Gateway;
  /** Which of the gateway's listeners serves each service. */
  private readonly listenerOf = new Map<string, number>();
  private readonly proxyHooks: ProxyHooks;
  private store: JobStore | undefined;
  private book: ReleaseBook | undefined;
  private backupKeeper: Backups | undefined;
  private deployer: Deployer | undefined;
  private runner: JobRunner | undefined;
  private cluster: ClusterNode | undefined;
  private configKeeper: ConfigKeeper | undefined;
  /** In a cluster: cold standbys started and stopped on the leader's word. */
  private readonly coldStandbys: ColdStandbys | undefined;
  private running: Config;
  private pruneTimer: NodeJS.Timeout | undefined;
  private lifecycle: Lifecycle = 'created';
  private readonly clock: Clock;
  private closing: Promise<void> | undefined;

  constructor(
    config: Config,
    private readonly options: {
      clock?: Clock;
      log?: Logger;
      /** Where log lines go when `log` is not given: JSON on stdout by default. */
      logOutput?: DestinationStream;
      store?: () => Promise<JobStore>;
      /** In a cluster: the shared configuration's revision `config` is (see startingConfig); null or absent: the node's own file. */
      configRevision?: number | null;
    } = {},
  ) {
    this.running = config;
    const clock = options.clock ?? systemClock;
    this.clock = clock;
    this.log = options.log ?? createLogger(config.log.level, this.logLines, options.logOutput);
    this.traffic = new RecentTraffic(() => clock.now());
    this.events = new EventLog(
      path.join(config.stateDir, 'events.jsonl'),
      (error) => this.log.error({ err: error }, 'could not write the event log; events are kept in memory'),
      undefined,
      config.events,
    );
    this.events.subscribe((event) => this.metrics.observe(event));
    this.events.subscribe((event) => this.logEvent(event));
    this.alerts = new Alerter(config.alerts, {
      onError: (message, error) => this.log.error({ err: error }, message),
      quiet: (event) => this.quietReason(event),
    });
    this.alerts.attach(this.events);
    this.coldStandbys = config.cluster
      ? new ColdStandbys({
          node: config.cluster.node,
          publish: (service, event) => this.events.publish({ ...event, service, time: clock.now(), traceId: randomBytes(8).toString('hex') }),
          onError: (message, error) => this.log.warn({ err: error }, message),
        })
      : undefined;

    for (const service of config.services) {
      const labels = { service: service.name };
      this.services.set(
        service.name,
        new ServiceController(service, {
          clock,
          stateDir: config.stateDir,
          dockerSocket: config.docker.socket,
          publish: (event) => this.events.publish(event),
          onProbe: (instance, probe, ok, ms) =>
            this.metrics.probeDuration.observe({ ...labels, instance, probe, result: ok ? 'ok' : 'fail' }, ms / 1000),
          onQueue: (depth) => this.metrics.queued.set(labels, depth),
          onError: (message, error) => this.log.error({ err: error, service: service.name }, message),
          delegate: (instance, version, real) =>
            this.coldStandbys && ColdStandbys.delegated(instance) ? this.coldStandbys.runtime(service.name, instance, version, real) : undefined,
        }),
      );
      for (const instance of service.instances) this.metrics.instance(service.name, instance.name, 'stopped');
    }
    this.proxyHooks = this.hooks();
    this.gateway = new Gateway(this.listeners(), this.proxyHooks);
    this.drills = new Drills({
      services: (name) => this.services.get(name),
      serviceNames: () => [...this.services.keys()],
      events: this.events,
      jobs: () => this.runner,
      deploys: () => this.deployer,
      target: (name) => this.clientTarget(name),
      dir: path.join(config.stateDir, 'drills'),
      clock,
      publish: (service, event) => this.events.publish({ ...event, service, time: clock.now(), traceId: randomBytes(8).toString('hex') }),
      onError: (message, error) => this.log.error({ err: error }, message),
      notLeader: () => this.notLeader('run a drill'),
    });
  }

  /** The job store; there once Understudy has started. */
  jobStore(): JobStore {
    if (!this.store) throw new JobError('NOT_RUNNING', 'Understudy is not running', 503);
    return this.store;
  }

  /** The job runner; there once Understudy has started. */
  get jobs(): JobRunner {
    if (!this.runner) {
      if (this.cluster && this.lifecycle === 'running') this.cluster.leadership.mustAct('run jobs');
      throw new JobError('NOT_RUNNING', 'Understudy is not running', 503);
    }
    return this.runner;
  }

  /** The configuration this Understudy runs now: its file's, or a revision of the cluster's shared one taken up live. */
  get config(): Config {
    return this.running;
  }

  /** In a cluster: the shared configuration this node runs, the newest stored, one it could not take up. */
  async configView(): Promise<ConfigView> {
    return this.sharedConfig().view();
  }

  /** In a cluster: checks `text` as every node reads it and stores it as the next revision; each node takes it up. */
  async configApply(text: string, options: { ifRevision?: number } = {}): Promise<ApplyResult> {
    return this.sharedConfig().apply(text, options);
  }

  /** In a cluster: stores revision `to` again as the next revision. */
  async configRollback(to: number, options: { ifRevision?: number } = {}): Promise<ApplyResult> {
    return this.sharedConfig().rollback(to, options);
  }

  /** In a cluster: the text of a revision (the current one by default), and the kept revisions. */
  sharedConfig(): ConfigKeeper {
    if (!this.configKeeper) {
      throw new ClusterError('INVALID_INPUT', `${this.config.file} has no cluster: section; the configuration is this Understudy's own file (edit it and restart)`);
    }
    return this.configKeeper;
  }

  /** In a cluster: who leads, the members, the routing the leader published. */
  async clusterView(): Promise<ClusterView> {
    if (!this.cluster) throw new ClusterError('INVALID_INPUT', `${this.config.file} has no cluster: section; this Understudy runs alone`);
    return this.cluster.fullView();
  }

  /** In a cluster: hands leadership to `to` (this node must lead). */
  async clusterFailover(to: string): Promise<void> {
    if (!this.cluster) throw new ClusterError('INVALID_INPUT', `${this.config.file} has no cluster: section; this Understudy runs alone`);
    await this.cluster.failover(to);
  }

  /** Throws ClusterError NOT_LEADER, naming the leader, when this node is in a cluster and may not act now. */
  mustLead(what: string): void {
    if (this.cluster) this.cluster.leadership.mustAct(what);
  }

  /**
   * In a cluster, why a deploy of `name` cannot begin here: it moves the instances this
   * node runs, and another node runs some of them (undefined when it runs them all).
   */
  private runElsewhere(name: string): string | undefined {
    const node = this.config.cluster?.node;
    const service = this.services.get(name);
    if (node === undefined || !service) return undefined;
    const elsewhere = service.config.instances.filter((i) => i.node !== undefined && i.node !== node).map((i) => `${i.name} (${i.node})`);
    if (elsewhere.length === 0) return undefined;
    return `a deploy moves the instances the leader runs, and ${elsewhere.join(', ')} run on other nodes: deploys across nodes are not built yet (docs/cluster.md)`;
  }

  /** Why this node may not take a leader's action now, or undefined (always undefined outside a cluster). */
  private notLeader(what: string): string | undefined {
    if (!this.cluster) return undefined;
    try {
      this.cluster.leadership.mustAct(what);
      return undefined;
    } catch (error) {
      return (error as Error).message;
    }
  }

  /** Deploys and rollbacks; there once Understudy has started. */
  get deploys(): Deployer {
    if (!this.deployer) throw new ReleaseError('DEPLOY_REFUSED', 'Understudy is not running', 503);
    return this.deployer;
  }

  /** What each service runs and has run; there once Understudy has started. */
  get releases(): ReleaseBook {
    if (!this.book) throw new ReleaseError('DEPLOY_REFUSED', 'Understudy is not running', 503);
    return this.book;
  }

  /** Snapshots; there once Understudy has started. */
  get backups(): Backups {
    if (!this.backupKeeper) throw new BackupError('NOT_OPEN', 'Understudy is not running');
    return this.backupKeeper;
  }

  service(name: string): ServiceController | undefined {
    return this.services.get(name);
  }

  status(): ServiceView[] {
    return [...this.services.values()].map((service) => service.view());
  }

  /**
   * Whether this node should hold a virtual IP in front of the gateway (keepalived's
   * vrrp_script asks through GET /healthz/vip): it runs, and every service has an
   * instance taking its traffic. A node that can serve nothing gives the address up.
   */
  canServe(): { ok: boolean; reason: string } {
    if (this.lifecycle !== 'running') return { ok: false, reason: `Understudy is ${this.lifecycle}` };
    const idle = this.status().filter((service) => service.active === null).map((service) => service.name);
    if (idle.length > 0) return { ok: false, reason: `no instance serves ${idle.join(', ')}` };
    return { ok: true, reason: `serving ${this.services.size} service${this.services.size === 1 ? '' : 's'}` };
  }

  gatewayAddresses(): { host: string; port: number }[] {
    return this.gateway.addresses();
  }

  /** Each service's address on the gateway, for people: see Gateway.serviceUrls. */
  serviceUrls(): { service: string; url: string }[] {
    return this.gateway.serviceUrls();
  }

  async start(): Promise<void> {
    if (this.lifecycle !== 'created') throw new Error(`cannot start Understudy: it is ${this.lifecycle}`);
    this.lifecycle = 'starting';
    try {
      await this.events.loadHistory();
      // Before any listener: a store that is locked or corrupt stops Understudy here, having changed nothing.
      const store = await (this.options.store ?? (() => this.openStore()))();
      this.store = store;
      const { ttl, maxResponse } = this.config.idempotency;
      this.proxyHooks.idempotency = new Idempotency(
        { get: (scope, key, now) => store.getReply(scope, key, now), put: (scope, key, reply, now) => store.putReply(scope, key, reply, now) },
        ttl,
        maxResponse,
      );
      this.pruneTimer = setInterval(() => {
        store.pruneReplies(Date.now()).catch((error: unknown) => this.log.warn({ err: error }, 'could not forget expired idempotent replies'));
      }, Math.min(ttl, 3_600_000));
      this.pruneTimer.unref();
      if (!this.config.cluster) this.runner = this.createRunner(store);
      const book = await ReleaseBook.open(path.join(this.config.stateDir, 'releases.json'));
      this.book = book;
      const snapshots = new SnapshotStore(this.config.backup.dir, { clock: this.clock });
      await snapshots.open();
      const publish = (service: string, event: EventBody) =>
        this.events.publish({ ...event, service, time: this.clock.now(), traceId: randomBytes(8).toString('hex') });
      this.backupKeeper = new Backups(this.config, snapshots, {
        services: (name) => this.services.get(name),
        publish,
        onError: (message, error) => this.log.error({ err: error }, message),
        notLeader: () => this.notLeader('take a scheduled snapshot'),
      });
      this.deployer = new Deployer({
        services: (name) => this.services.get(name),
        book,
        backups: this.backupKeeper,
        clock: this.clock,
        publish: (service, event) => this.events.publish({ ...event, service, time: this.clock.now(), traceId: randomBytes(8).toString('hex') }),
        onError: (message, error) => this.log.error({ err: error }, message),
        busy: (service) => this.drills.busy(service) ?? this.notLeader(`deploy or roll back ${service}`) ?? this.runElsewhere(service),
      });
      const changed: { service: string; version: string }[] = [];
      const releases = new Map<string, string>();
      for (const service of this.config.services) {
        if (!service.version) continue;
        const adopted = book.adopt(service.name, service.version.expect);
        releases.set(service.name, adopted.current);
        if (adopted.configChanged) changed.push({ service: service.name, version: service.version.expect });
      }
      await book.save();
      await this.gateway.start();
      for (const [name, service] of this.services) service.boot(releases.get(name));
      for (const { service, version } of changed) void this.deployChangedConfig(service, version);
      await this.backupKeeper.start();
      await this.runner?.start();
      this.drills.start();
      if (this.config.cluster) await this.joinCluster(store);
      this.lifecycle = 'running';
    } catch (error) {
      this.lifecycle = 'failed';
      await this.close();
      throw error;
    }
  }

  /** Stops taking requests, finishes in-flight ones (up to `deadlineMs`), stops instances. Safe to call twice. */
  close(deadlineMs = 10_000): Promise<void> {
    this.closing ??= (async () => {
      if (this.lifecycle !== 'failed') this.lifecycle = 'stopping';
      const step = async (what: string, fn: () => Promise<void>) => {
        try {
          await fn();
        } catch (error) {
          this.log.error({ err: error }, `shutdown: ${what} failed`);
        }
      };
      clearInterval(this.pruneTimer);
      // Drills first: each lifts its fault and puts its service back while everything still runs.
      await step('ending drills', () => this.drills.close());
      // Then leadership, handed over at once (the lease revoked) rather than after the TTL.
      await step('leaving the cluster', async () => {
        await this.configKeeper?.close();
        await this.cluster?.close();
      });
      // Jobs first: their items in flight are abandoned, to run again at the next start.
      await step('stopping jobs', async () => this.runner?.close());
      // A deploy cut short is not resumed: the next start runs the version last recorded as current.
      await step('stopping deploys', async () => this.deployer?.close());
      this.backupKeeper?.close();
      await step('closing the gateway', () => this.gateway.close(deadlineMs));
      await step('stopping services', async () => {
        await Promise.all([...this.services.values()].map((service) => service.close()));
        await this.coldStandbys?.close();
      });
      await step('closing the job store', async () => this.store?.close());
      await step('sending alerts', () => this.alerts.close());
      await step('flushing events', () => this.events.close());
      this.lifecycle = 'stopped';
    })();
    return this.closing;
  }

  private async openStore(): Promise<JobStore> {
    const postgres = this.config.cluster?.postgres;
    if (!postgres) return ThreadedJobStore.open(path.join(this.config.stateDir, 'jobs.db'));
    // The epoch of the newest term this node held: PostgreSQL refuses it once a newer leader raised the fence.
    return PgJobStore.open({
      url: postgres.url,
      schema: postgres.schema,
      epoch: () => this.lastEpoch,
      onOperation: (operation, ms, ok) => this.metrics.storeDuration.observe({ operation, result: ok ? 'ok' : 'error' }, ms / 1000),
    });
  }

  private lastEpoch: number | null = null;

  /**
   * Stands in the election and follows the leader's routing. The leader's duties (the
   * job runner on the fenced store) begin when this node is elected and end when it
   * stops leading; deploys, drills and scheduled snapshots ask `notLeader` first.
   */
  private async joinCluster(store: JobStore): Promise<void> {
    const cluster = this.config.cluster!;
    const coordination = new EtcdCoordination({ endpoints: cluster.etcd.endpoints, timeout: cluster.etcd.timeout });
    const node = new ClusterNode({
      coordination,
      prefix: cluster.etcd.prefix,
      node: cluster.node,
      url: cluster.nodes[cluster.node]?.url ?? null,
      ttlMs: cluster.ttl,
      services: [...this.services.values()].map((service) => ({
        name: service.config.name,
        active: () => service.machineState().active,
        follow: (instance, leader) => service.follow(instance, leader),
        setFollowing: (following) => service.setFollowing(following),
        held: () => service.held(),
        hold: (instance, held) => service.hold(instance, held),
        expected: () => service.expected(),
        expect: (versions) => service.expect(versions),
        onChange: (listener) => service.onChange(listener),
      })),
      duties: {
        begin: async (epoch) => {
          this.lastEpoch = epoch;
          this.coldStandbys?.onLead();
          await store.raiseFence?.(epoch);
          const runner = this.createRunner(fencedStore(store, () => node.leadership.epoch() === epoch, cluster.node));
          try {
            await runner.start();
          } catch (error) {
            await runner.close();
            throw error;
          }
          this.runner = runner;
        },
        end: async () => {
          const runner = this.runner;
          this.runner = undefined;
          await runner?.close();
        },
      },
      onLeaderChange: (view, previous, reason) => this.onLeaderChange(view, previous, reason),
      onError: (message, error) => this.log.warn({ err: error }, message),
      onCall: (operation, ms, ok) => this.metrics.etcdDuration.observe({ operation, result: ok ? 'ok' : 'error' }, ms / 1000),
      config: () => keeper.member(),
    });
    const keeper = new ConfigKeeper({
      shared: new SharedConfig(coordination, cluster.etcd.prefix),
      node: cluster.node,
      file: this.config.file,
      revision: this.options.configRevision ?? null,
      running: () => this.running,
      apply: (next) => this.reconfigure(next),
      publish: (body) => this.events.publish({ ...body, service: '*', time: this.clock.now(), traceId: randomBytes(8).toString('hex') }),
      onError: (message, error) => this.log.warn({ err: error }, message),
      onChange: () => node.refreshMember(),
    });
    this.configKeeper = keeper;
    this.cluster = node;
    // Before the election: a leader elected at once writes what its machines want running.
    await this.coldStandbys?.attach(new DesiredStates(coordination, cluster.etcd.prefix, node.leadership, cluster.node), () => node.leadership.acting());
    await node.start();
    await keeper.start();
  }

  /**
   * SIGHUP (`systemctl reload`) on a node of its own: takes up `next`, the config file
   * read again, when every change is a live field (config/live.ts); otherwise keeps
   * what runs and says which fields need a restart. Listeners and connections are
   * untouched either way. `next` is undefined, with `mistake`, when the file did not
   * validate. In a cluster the shared configuration is changed with `config apply`.
   */
  reload(next: Config | undefined, mistake?: string): UnderstudyEvent & { type: 'config-reloaded' } {
    const file = this.config.file;
    const refused = (reason: string, restart: string[] = []) => ({ type: 'config-reloaded' as const, file, outcome: 'refused' as const, changed: [], restart, reason });
    let body: Omit<UnderstudyEvent & { type: 'config-reloaded' }, 'time' | 'service' | 'traceId'>;
    if (this.lifecycle !== 'running') {
      body = refused(`Understudy is ${this.lifecycle}: send SIGHUP again once it serves`);
    } else if (this.config.cluster) {
      body = refused('in a cluster the configuration is shared through etcd: change it with `understudy config apply -c FILE`');
    } else if (!next) {
      body = refused(`the file has mistakes, nothing changed: ${mistake ?? 'it could not be read'}`);
    } else {
      const diff = diffConfigs(this.running, next);
      if (diff.restart.length > 0) {
        body = refused(`only a restart takes up ${diff.restart.join(', ')}; nothing changed`, diff.restart);
      } else {
        this.reconfigure(next);
        body = {
          type: 'config-reloaded',
          file,
          outcome: 'applied',
          changed: diff.live,
          restart: [],
          reason: diff.live.length === 0 ? 'the file changes nothing' : `changed live: ${diff.live.join(', ')}`,
        };
      }
    }
    const event = { ...body, service: '*', time: this.clock.now(), traceId: randomBytes(8).toString('hex') };
    this.events.publish(event);
    return event;
  }

  /** Takes up a configuration whose changes are all live fields (config/live.ts). */
  private reconfigure(next: Config): void {
    for (const service of next.services) this.services.get(service.name)!.reconfigure(service);
    this.running = next;
  }

  private onLeaderChange(view: LeaderView, previous: LeaderView, reason: string): void {
    const node = this.config.cluster!.node;
    const publish = (body: EventBody) => this.events.publish({ ...body, service: '*', time: this.clock.now(), traceId: randomBytes(8).toString('hex') });
    if (view.etcd !== previous.etcd) {
      publish(view.etcd === 'ok' ? { type: 'coordination-restored', node, reason } : { type: 'coordination-lost', node, reason: `${reason}; serving on the routing this node has, no leader actions until etcd answers` });
    }
    if (view.leader !== previous.leader || view.epoch !== previous.epoch || view.acting !== previous.acting) {
      publish({ type: 'leader-changed', node, leader: view.leader, previous: previous.leader, epoch: view.epoch, self: view.acting, reason });
    }
  }

  /** version.expect changed in the config since the last start: that is a deploy, once the service serves. */
  private async deployChangedConfig(name: string, version: string): Promise<void> {
    const service = this.services.get(name)!;
    try {
      await service.waitFor((s) => s.active !== null, Math.max(...service.config.instances.map((i) => i.probes.startup.budget)), undefined, `${name} serving`);
      if (service.release === version) return;
      this.releases.setCurrent(name, service.release!, version);
      await this.deploys.deploy(name, version, `version.expect changed to ${version} in ${this.config.file}`);
    } catch (error) {
      this.log.error({ err: error, service: name }, `could not deploy version ${version} from the config`);
    }
  }

  /**
   * Why an alert for `event` is not sent: a drill running on its service caused it (the
   * drill's own verdict alerts instead), or a version mismatch while a deploy moves versions.
   */
  private quietReason(event: UnderstudyEvent): string | undefined {
    const drill = this.drills?.current(event.service);
    if (drill !== undefined && event.type !== 'drill-finished') return `caused by drill ${drill}`;
    if (event.type === 'version-mismatch' && this.deployer?.view(event.service)) return 'expected while a deploy or rollback moves versions';
    return undefined;
  }

  private createRunner(store: JobStore): JobRunner {
    return new JobRunner({
      store,
      files: new JobFiles(path.join(this.config.stateDir, 'jobs')),
      defaults: this.config.jobs,
      upstreams: (service) => this.services.get(service),
      hooks: this.proxyHooks,
      publish: (service, event) => this.events.publish({ ...event, service, time: Date.now(), traceId: randomBytes(8).toString('hex') }),
      onItem: (service, outcome, ms) => {
        this.metrics.jobItems.inc({ service, outcome });
        if (outcome === 'succeeded' || outcome === 'failed') this.metrics.jobItemDuration.observe({ service, outcome }, ms / 1000);
      },
      onError: (message, error) => this.log.error({ err: error }, message),
      onPruned: (jobs) =>
        this.log.info({ jobs: jobs.map((job) => job.id), retention: this.config.jobs.retention }, `removed ${jobs.length} finished jobs and their files (jobs.retention)`),
    });
  }

  private listeners(): ListenerSpec[] {
    const shared: ListenerSpec = { ...this.config.gateway.listen, routes: [] };
    const listeners: ListenerSpec[] = [];
    const own = new Map<string, number>();
    for (const service of this.config.services) {
      const upstreams = this.services.get(service.name)!;
      const { route } = service;
      if (route.listen) {
        own.set(service.name, listeners.length);
        listeners.push({ ...route.listen, routes: [{ upstreams, stripPrefix: false }] });
      }
      if (route.pathPrefix !== undefined || route.host !== undefined) {
        shared.routes.push({ upstreams, pathPrefix: route.pathPrefix, host: route.host, stripPrefix: route.stripPrefix });
      }
    }
    const withShared = shared.routes.length > 0;
    for (const service of this.config.services) {
      const index = own.get(service.name);
      this.listenerOf.set(service.name, index === undefined ? 0 : index + Number(withShared));
    }
    return withShared ? [shared, ...listeners] : listeners;
  }

  /** How a client reaches `name` through the gateway: the listener, the path prefix to add, the Host to send. */
  private clientTarget(name: string): { origin: string; path: string; headers: Record<string, string> } {
    const service = this.services.get(name)!.config;
    const address = this.gateway.addresses()[this.listenerOf.get(name)!]!;
    const host = address.host === '0.0.0.0' ? '127.0.0.1' : address.host === '::' ? '::1' : address.host;
    const port = address.port;
    const origin = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
    const request = service.drill.request ?? service.deploy.smoke;
    const { route } = service;
    // The probe request's path is the instance's: a route that strips its prefix gets it added back.
    const ownListener = route.listen !== undefined;
    const prefix = !ownListener && route.stripPrefix && route.pathPrefix ? route.pathPrefix.replace(/\/$/, '') : '';
    const headers: Record<string, string> = !ownListener && route.host !== undefined ? { host: route.host } : {};
    return { origin, path: `${prefix}${request?.path ?? '/'}`, headers };
  }

  private hooks(): ProxyHooks {
    const access = this.config.log.access;
    return {
      onRequest: (report: RequestReport) => {
        const outcome = report.outcome === 'ok' ? String(report.status) : report.outcome;
        this.metrics.requests.inc({ service: report.service, instance: report.instance ?? 'none', outcome });
        this.metrics.duration.observe({ service: report.service, outcome: report.outcome }, report.ms / 1000);
        this.traffic.record(report);
        if (access || report.outcome !== 'ok') {
          const level = report.outcome === 'ok' || report.outcome === 'client-abort' ? 'info' : 'warn';
          this.log[level]({ ...report, ms: Math.round(report.ms * 100) / 100 }, 'request');
        }
      },
      onAttempt: (service, instance, outcome) => this.metrics.attempts.inc({ service, instance, outcome }),
      onRetry: (service, reason) => this.metrics.retries.inc({ service, reason }),
      onError: (message, error) => this.log.error({ err: error }, message),
      onEvent: (service, event, traceId) => this.events.publish({ ...event, time: this.clock.now(), service, traceId }),
    };
  }

  private logEvent(event: UnderstudyEvent): void {
    const quiet = event.type === 'instance-state' && (event.to === 'ready' || event.to === 'starting');
    const calm = quiet || (event.type === 'active-changed' && event.kind === 'initial') || (event.type === 'config-reloaded' && event.outcome === 'applied');
    this.log[calm ? 'info' : 'warn']({ event }, `${event.service}: ${event.type}: ${event.reason}`);
  }
}
