#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { Command, InvalidArgumentError, Option } from 'commander';
import { AdminClient, AdminServer, ensureToken, tokenFile } from '../api/index.js';
import { formatBytes, SnapshotStore, type Manifest, type SnapshotListing, type VerifyReport } from '../backup/index.js';
import { ConfigError, loadConfigFile, parseDuration, type Config } from '../config/index.js';
import type { ClusterView } from '../cluster/index.js';
import { startingConfig, Understudy, type DrillSummary, type ServiceView } from '../controller/index.js';
import { FAULT_KINDS } from '../drill/index.js';
import type { Alert } from '../observe/index.js';
import { UnderstudyError, type UnderstudyEvent } from '../core/index.js';
import { formatAlerts, formatCluster, formatDrill, formatDrills, formatEvent, formatReleases, formatStatus, type ReleasesView } from './format.js';
import { configCommands } from './config.js';
import { jobCommands } from './jobs.js';
import { initCommand } from './init.js';
import { bannerText, chooseLogFormat, LOG_FORMATS, prettyLogOutput, UP_MESSAGE, wantsColour } from './terminal.js';

const DEFAULT_CONFIG = process.env.UNDERSTUDY_CONFIG ?? 'understudy.yaml';
const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

const program = new Command()
  .name('understudy')
  .description('Keeps self-hosted AI model services answering when a GPU box, a model process or an upgrade fails.')
  .showHelpAfterError('(run with --help for usage)')
  .configureHelp({ sortSubcommands: false })
  .version(VERSION, '-V, --version', 'print the version of Understudy')
  .option('--node <name>', 'in a cluster: which node of the config this is ($UNDERSTUDY_NODE); picks its listeners and stateDir')
  .hook('preAction', (command) => {
    const node = command.opts<{ node?: string }>().node;
    if (node !== undefined) process.env.UNDERSTUDY_NODE = node;
  });

const configOption = ['-c, --config <file>', 'the configuration file ($UNDERSTUDY_CONFIG)', DEFAULT_CONFIG] as const;

// First in --help: what a new user runs first.
program.addCommand(initCommand());

program
  .command('up')
  .description('start the gateway, the instances it runs, probes and the admin API; runs until SIGINT or SIGTERM')
  .option(...configOption)
  .addOption(
    new Option('--log-format <format>', 'auto: readable lines on a terminal, JSON lines when piped or redirected; or json, pretty ($UNDERSTUDY_LOG_FORMAT)')
      .choices(LOG_FORMATS)
      .default(process.env.UNDERSTUDY_LOG_FORMAT ?? 'auto'),
  )
  .addHelpText(
    'after',
    `
On a terminal it prints where each service answers, the dashboard's address and every
instance's state, then one line per change (a failover, an instance down or back). Piped
or redirected, every line is JSON (pino), as log shippers and journald expect;
\`--log-format json\` forces it. NO_COLOR=1 turns colour off.

On SIGINT/SIGTERM it stops taking requests, lets in-flight ones finish (10s), and stops the instances it started.
A second signal exits at once.

On SIGHUP (systemctl reload) it reads the config file again. When every change is one it
takes up live (a service's failback, timeouts, retry, streams, limits, queue, passive,
quarantine, drill, deploy; an instance's probes and capabilities), it applies them without
dropping a connection; otherwise (a mistake, a listener, a new instance...) it changes
nothing and says why, as a config-reloaded event.`,
  )
  .action(async (options: { config: string; logFormat: (typeof LOG_FORMATS)[number] }) => {
    if (!(LOG_FORMATS as readonly string[]).includes(options.logFormat)) {
      throw new InvalidArgumentError(`--log-format (or $UNDERSTUDY_LOG_FORMAT) must be one of ${LOG_FORMATS.join(', ')}, not "${options.logFormat}"`);
    }
    // SIGHUP (systemctl reload) first of all: its default action would end the process.
    // One that arrives while Understudy starts is carried out once it serves; during a
    // shutdown it is ignored. See Understudy.reload.
    let phase: 'starting' | 'up' | 'stopping' = 'starting';
    let reloadWaiting = false;
    let reload = () => {
      reloadWaiting = true;
    };
    process.on('SIGHUP', () => reload());
    const tty = process.stdout.isTTY === true;
    const pretty = chooseLogFormat(options.logFormat, tty) === 'pretty';
    // In a cluster: the shared configuration in etcd, when there is one this node can read.
    const starting = await startingConfig(load(options.config));
    const config = starting.config;
    const app = new Understudy(config, { configRevision: starting.revision, logOutput: pretty ? prettyLogOutput(wantsColour(tty)) : undefined });
    if (config.cluster) app.log.info({ revision: starting.revision }, starting.note);
    const token = ensureToken(config);
    const admin = new AdminServer(app, token);
    reload = () => {
      if (phase === 'starting') {
        reloadWaiting = true;
        app.log.info('SIGHUP while Understudy starts: the config file is read again once it serves');
        return;
      }
      if (phase === 'stopping') {
        app.log.warn('SIGHUP while Understudy stops: ignored');
        return;
      }
      let next: Config | undefined;
      let mistake: string | undefined;
      try {
        next = loadConfigFile(options.config);
      } catch (error) {
        mistake = error instanceof ConfigError ? error.message : (error as Error).message;
      }
      const event = app.reload(next, mistake);
      process.send?.({ type: 'reloaded', outcome: event.outcome });
    };
    const shutdown = async (signal: string) => {
      phase = 'stopping';
      app.log.info({ signal }, 'shutting down');
      await admin.close();
      await app.close();
      process.exit(0);
    };
    let signals = 0;
    for (const signal of ['SIGINT', 'SIGTERM'] as const) {
      process.on(signal, () => {
        if (++signals > 1) process.exit(130);
        void shutdown(signal);
      });
    }
    // The admin API first: if its port is taken, nothing has been started yet.
    const adminAddress = await admin.start();
    try {
      await app.start();
    } catch (error) {
      await admin.close();
      throw error;
    }
    const gateway = app.gatewayAddresses();
    const adminHost = adminAddress.host.includes(':') ? `[${adminAddress.host}]` : adminAddress.host;
    app.log.info(
      {
        gateway,
        admin: adminAddress,
        dashboard: `http://${adminHost}:${adminAddress.port}/ui/`,
        services: config.services.map((s) => s.name),
        tokenFile: config.admin.token ? undefined : tokenFile(config),
      },
      UP_MESSAGE,
    );
    if (pretty) {
      const dashboard = `http://${adminHost}:${adminAddress.port}/ui/`;
      process.stdout.write(
        bannerText({
          version: VERSION,
          gateways: app.serviceUrls(),
          admin: `http://${adminHost}:${adminAddress.port}`,
          dashboard,
          tokenFile: config.admin.token || process.env.UNDERSTUDY_ADMIN_TOKEN ? undefined : tokenFile(config),
          services: app.status(),
        }),
      );
    }
    process.send?.({ type: 'up', gateway, admin: adminAddress });
    if (phase === 'starting') phase = 'up';
    if (reloadWaiting) {
      reloadWaiting = false;
      reload();
    }
  });

const cluster = program.command('cluster').description('several Understudy nodes coordinated through etcd (docs/cluster.md)');

cluster
  .command('status')
  .description('the leader and its epoch, each live member and which instance it sends each service to, and etcd\'s health as this node sees it')
  .option(...configOption)
  .option('--json', 'print the raw JSON')
  .action(async (options: { config: string; json?: boolean }) => {
    const { cluster: view } = await client(options.config).call<{ cluster: ClusterView }>('GET', '/v1/cluster');
    console.log(options.json ? JSON.stringify(view, null, 2) : formatCluster(view));
  });

cluster
  .command('failover')
  .description('hand leadership to another node (run it against the leader); the others hold back while that node takes over')
  .requiredOption('--to <node>', 'the node to lead next')
  .option(...configOption)
  .action(async (options: { config: string; to: string }) => {
    await client(options.config).call('POST', '/v1/cluster/failover', { to: options.to });
    const deadline = Date.now() + 30_000;
    for (;;) {
      const { cluster: view } = await client(options.config).call<{ cluster: ClusterView }>('GET', '/v1/cluster');
      if (view.leader === options.to) return console.log(`${options.to} leads the cluster (epoch ${view.epoch})`);
      if (Date.now() > deadline) throw new Error(`${options.to} did not take over within 30s; see \`understudy cluster status\``);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  });

program
  .command('validate')
  .description('check a configuration file and print every mistake with its file, line and field')
  .option(...configOption)
  .action((options: { config: string }) => {
    const config = load(options.config);
    const instances = config.services.reduce((n, s) => n + s.instances.length, 0);
    const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;
    console.log(`${config.file}: valid (${plural(config.services.length, 'service')}, ${plural(instances, 'instance')})`);
  });

program
  .command('status')
  .description('show each service, its active instance and the state of every instance')
  .option(...configOption)
  .option('--json', 'print the raw JSON')
  .action(async (options: { config: string; json?: boolean }) => {
    const { services } = await client(options.config).call<{ services: Record<string, ServiceView> }>('GET', '/v1/status');
    console.log(options.json ? JSON.stringify(services, null, 2) : formatStatus(Object.values(services)));
  });

program
  .command('switchover')
  .description('move a service\'s traffic on purpose; in-flight requests finish where they are')
  .argument('<service>', 'the service')
  .option('--to <instance>', 'the instance to move to (default: the best other ready instance)')
  .option(...configOption)
  .action(async (service: string, options: { to?: string; config: string }) => {
    const body = options.to === undefined ? {} : { to: options.to };
    const result = await client(options.config).call<{ service: ServiceView }>('POST', `/v1/services/${enc(service)}/switchover`, body);
    console.log(`${service}: active is now ${result.service.active}`);
  });

program
  .command('drain')
  .description('take an instance out of rotation (moving traffic first if it is active), wait for its in-flight work, then stop it')
  .argument('<service>', 'the service')
  .argument('<instance>', 'the instance')
  .option(...configOption)
  .action(async (service: string, instance: string, options: { config: string }) => {
    await client(options.config).call('POST', `/v1/services/${enc(service)}/instances/${enc(instance)}/drain`, {});
    console.log(`${service}/${instance}: draining; \`understudy resume ${service} ${instance}\` brings it back`);
  });

program
  .command('resume')
  .description('start a drained or quarantined instance again')
  .argument('<service>', 'the service')
  .argument('<instance>', 'the instance')
  .option(...configOption)
  .action(async (service: string, instance: string, options: { config: string }) => {
    await client(options.config).call('POST', `/v1/services/${enc(service)}/instances/${enc(instance)}/resume`, {});
    console.log(`${service}/${instance}: starting`);
  });

program
  .command('events')
  .description('show the event timeline: state changes, failovers, quarantines, version mismatches')
  .option('-s, --service <name>', 'only this service')
  .option('-t, --type <type>', 'only this event type (instance-state, active-changed, no-ready-instance, quarantined, ...)')
  .option('--since <duration>', 'only events newer than this, e.g. 10m', durationArg)
  .option('-n, --limit <count>', 'at most this many, newest last', countArg, 50)
  .option('--json', 'one JSON object per line')
  .option(...configOption)
  .action(async (options: { service?: string; type?: string; since?: number; limit: number; json?: boolean; config: string }) => {
    const query = new URLSearchParams({ limit: String(options.limit) });
    if (options.service) query.set('service', options.service);
    if (options.type) query.set('type', options.type);
    if (options.since !== undefined) query.set('since', String(Date.now() - options.since));
    const { events } = await client(options.config).call<{ events: UnderstudyEvent[] }>('GET', `/v1/events?${query}`);
    for (const event of events) console.log(options.json ? JSON.stringify(event) : formatEvent(event));
    if (events.length === 0 && !options.json) console.log('(no events)');
  });

program
  .command('deploy')
  .description('roll a new version across a service: standbys first, each checked before traffic, the old version kept ready while it is watched')
  .argument('<service>', 'the service')
  .argument('<version>', 'the version to deploy; `${version}` in the instances\' runtime (image, command, paths) becomes it')
  .option('--no-wait', 'return once the deploy has begun')
  .option(...configOption)
  .addHelpText(
    'after',
    `
Steps: a snapshot of the running version (when the service has backups), then each standby
moves to the new version and must start, report that version and answer the smoke request;
traffic moves to it while the active instance keeps the old version ready. During the watch
window (deploy.watch, default 5m) a crash, failing probes or an error rate over
deploy.rollback.errorRate roll the service back without a person. A version that survives
the window moves onto the rest and becomes known-good.

Example:
  understudy deploy tts 1.5          # waits, printing each step, until known-good or rolled back

Exit status: 0 known-good, 3 rolled back, 1 the rollback itself failed.
  understudy releases tts            # what runs now, known-good versions, history`,
  )
  .action(async (service: string, version: string, options: { wait: boolean; config: string }) => {
    const admin = client(options.config);
    await admin.call('POST', `/v1/services/${enc(service)}/deploy`, { version });
    console.log(`${service}: deploying version ${version}`);
    if (options.wait) process.exitCode = await followRelease(admin, service, 'deploy');
  });

program
  .command('rollback')
  .description('move a service back to its newest known-good version (or --to), ending a deploy that is running')
  .argument('<service>', 'the service')
  .option('--to <version>', 'the version to go back to')
  .option('--no-wait', 'return once the rollback has begun')
  .option(...configOption)
  .action(async (service: string, options: { to?: string; wait: boolean; config: string }) => {
    const admin = client(options.config);
    const { rollback } = await admin.call<{ rollback: { to: string } }>('POST', `/v1/services/${enc(service)}/rollback`, options.to ? { to: options.to } : {});
    console.log(`${service}: rolling back to version ${rollback.to}`);
    if (options.wait) process.exitCode = await followRelease(admin, service, 'rollback');
  });

program
  .command('releases')
  .description('show the version a service runs, its known-good versions, the deploy running and the history')
  .argument('<service>', 'the service')
  .option('--json', 'print the raw JSON')
  .option(...configOption)
  .action(async (service: string, options: { json?: boolean; config: string }) => {
    const view = await client(options.config).call<ReleasesView>('GET', `/v1/services/${enc(service)}/releases`);
    console.log(options.json ? JSON.stringify(view, null, 2) : formatReleases(view));
  });

const snapshot = program
  .command('snapshot')
  .description('verified, content-addressed backups of what a service needs to serve (backup.paths, backup.images)');

snapshot
  .command('create')
  .description('take a snapshot of a service now (its version is the one it runs)')
  .argument('<service>', 'the service')
  .option(...configOption)
  .action(async (service: string, options: { config: string }) => {
    const { snapshot: made } = await client(options.config).call<{ snapshot: Manifest }>('POST', '/v1/snapshots', { service });
    const t = made.totals;
    console.log(`${made.id}: ${t.files} files, ${formatBytes(t.bytes)}; ${formatBytes(t.newBytes)} new, ${formatBytes(t.reusedBytes)} already kept${made.images.length ? `; image ${made.images[0]!.ref}` : ''}`);
  });

snapshot
  .command('list')
  .description('list snapshots, newest first')
  .option('-s, --service <name>', 'only this service')
  .option('--json', 'print the raw JSON')
  .option(...configOption)
  .action(async (options: { service?: string; json?: boolean; config: string }) => {
    const query = options.service ? `?service=${enc(options.service)}` : '';
    const { snapshots } = await client(options.config).call<{ snapshots: SnapshotListing[] }>('GET', `/v1/snapshots${query}`);
    if (options.json) return console.log(JSON.stringify(snapshots, null, 2));
    for (const s of snapshots) {
      const when = new Date(s.createdAt).toISOString();
      if (s.broken) console.log(`${s.id}  ${when}  BROKEN: ${s.problem}`);
      else console.log(`${s.id}  ${when}  version ${s.version ?? '-'}  ${s.trigger}${s.knownGood ? '  known-good' : ''}  ${formatBytes(s.totals.bytes)}${s.images ? '  +image' : ''}`);
    }
    if (snapshots.length === 0) console.log('(no snapshots)');
  });

snapshot
  .command('verify')
  .description('re-read every blob of one snapshot (or all) and name each file that is missing or changed')
  .argument('[id]', 'the snapshot (default: all)')
  .option('--dir <path>', 'verify this snapshot store directly, read-only, without a running Understudy')
  .option(...configOption)
  .addHelpText('after', '\nExit status: 0 when every snapshot checked is whole, 1 when any is not.')
  .action(async (id: string | undefined, options: { dir?: string; config: string }) => {
    const report = options.dir
      ? await new SnapshotStore(options.dir).verify(id)
      : await client(options.config).call<VerifyReport>('POST', '/v1/snapshots/verify', id ? { id } : {});
    for (const s of report.snapshots) console.log(`${s.ok ? 'ok     ' : 'DAMAGED'}  ${s.id}`);
    for (const p of report.problems) console.log(`  ${p.snapshot}: ${p.kind}: ${p.path}: ${p.detail}`);
    console.log(`${report.blobs} blobs, ${formatBytes(report.bytes)} read: ${report.ok ? 'every snapshot is whole' : `${report.problems.length} problem(s)`}`);
    process.exitCode = report.ok ? 0 : 1;
  });

snapshot
  .command('prune')
  .description('delete the snapshots retention does not keep (backup.retention), then the blobs no snapshot uses')
  .option('--dry-run', 'say what would be deleted, delete nothing')
  .option(...configOption)
  .action(async (options: { dryRun?: boolean; config: string }) => {
    const result = await client(options.config).call<{ deleted: string[]; kept: string[]; freedBytes: number; broken: string[] }>('POST', '/v1/snapshots/prune', { dryRun: options.dryRun === true });
    for (const id of result.deleted) console.log(`${options.dryRun ? 'would delete' : 'deleted'}  ${id}`);
    for (const id of result.broken) console.log(`kept (damaged, see verify)  ${id}`);
    console.log(`${result.kept.length} kept, ${result.deleted.length} ${options.dryRun ? 'to delete' : 'deleted'}, ${formatBytes(result.freedBytes)} ${options.dryRun ? 'to free' : 'freed'}`);
  });

snapshot
  .command('restore')
  .description('put a snapshot\'s files back (copied to a staging path and checked, then swapped in) and its image')
  .argument('<id>', 'the snapshot')
  .option(...configOption)
  .addHelpText('after', '\nA damaged snapshot is refused before anything changes. Instances keep running; to run a restored\nversion, use `understudy rollback SERVICE --to VERSION`.')
  .action(async (id: string, options: { config: string }) => {
    const result = await client(options.config).call<{ files: number; bytes: number; images: string[] }>('POST', `/v1/snapshots/${enc(id)}/restore`, {});
    console.log(`${id}: restored ${result.files} files, ${formatBytes(result.bytes)}${result.images.length ? `; pulled ${result.images.join(', ')}` : ''}`);
  });

program
  .command('drill')
  .description('fail an instance of a running service on purpose, measure the recovery, and put the service back as it was')
  .argument('<service>', 'the service')
  .requiredOption('--fault <kind>', `what to do: ${FAULT_KINDS.join(', ')}`, faultArg)
  .option('--instance <name>', 'the instance to fail (default: the active one; cold-start fails every warm one)')
  .option('--no-wait', 'return once the drill has begun')
  .option(...configOption)
  .addHelpText(
    'after',
    `
Faults:
  kill        SIGKILL the instance's process (a crash, an OOM kill)
  hang        SIGSTOP it for drill.hold (a wedged GPU driver, a deadlock), then SIGCONT
  error       the gateway answers the instance's attempts with 500 for drill.hold
  slow        the gateway holds each attempt drill.delay before sending it, for drill.hold
  cold-start  the warm standbys are held and the active instance killed, so the cold
              standby must start and serve; then everything is put back

While it runs, probe requests (drill.request, else deploy.smoke) go through the gateway at
drill.rate per second (at most drill.requests), and a job of drill.jobItems items is
submitted just before the fault. Only a healthy service is drilled, never during a deploy.

The report (report.md, report.json and a timeline picture, timeline.svg) is kept in
STATEDIR/drills/<id>/ and summed up in a drill-finished event.

Example:
  understudy drill tts --fault kill
  understudy drills                   # every report kept

Exit status: 0 passed (no failed request, no lost item, back as before), 3 failed.`,
  )
  .action(async (service: string, options: { fault: string; instance?: string; wait: boolean; config: string }) => {
    const config = load(options.config);
    const admin = new AdminClient(config);
    const { events } = await admin.call<{ events: UnderstudyEvent[] }>('GET', `/v1/events?service=${enc(service)}&limit=1`);
    const since = events.at(-1)?.time ?? 0;
    const { drill } = await admin.call<{ drill: { id: string; instances: string[] } }>('POST', `/v1/services/${enc(service)}/drill`, {
      fault: options.fault,
      ...(options.instance ? { instance: options.instance } : {}),
    });
    console.log(`${service}: drill ${drill.id}: ${options.fault} on ${drill.instances.join(', ')}`);
    if (!options.wait) return;
    const bound = config.services.find((s) => s.name === service)?.drill.timeout ?? 120_000;
    const report = await followDrill(admin, service, drill.id, since, bound + 60_000);
    console.log(formatDrill(report));
    process.exitCode = report.passed ? 0 : 3;
  });

program
  .command('drills')
  .description('list the drill reports kept (see `understudy drill`)')
  .option('--service <name>', 'only this service')
  .option('--json', 'print the raw JSON')
  .option(...configOption)
  .action(async (options: { service?: string; json?: boolean; config: string }) => {
    const query = options.service ? `?service=${enc(options.service)}` : '';
    const view = await client(options.config).call<{ drills: DrillSummary[]; schedules: Record<string, string | null> }>('GET', `/v1/drills${query}`);
    if (options.json) return console.log(JSON.stringify(view, null, 2));
    console.log(formatDrills(view.drills));
    for (const [name, next] of Object.entries(view.schedules)) if (next) console.log(`next scheduled drill of ${name}: ${next}`);
  });

program
  .command('alerts')
  .description('alerts raised (a failed backup or rollback, a quarantine, a standby on the wrong version, a failed drill...) and whether each was sent')
  .option('--service <name>', 'only this service')
  .option('--limit <n>', 'the newest n', countArg, 50)
  .option('--json', 'print the raw JSON')
  .option(...configOption)
  .action(async (options: { service?: string; limit: number; json?: boolean; config: string }) => {
    const query = new URLSearchParams({ limit: String(options.limit), ...(options.service ? { service: options.service } : {}) });
    const { alerts } = await client(options.config).call<{ alerts: Omit<Alert, 'event'>[] }>('GET', `/v1/alerts?${query}`);
    console.log(options.json ? JSON.stringify(alerts, null, 2) : formatAlerts(alerts));
  });

program.addCommand(jobCommands(configOption, client));
program.addCommand(configCommands(configOption, client));

/**
 * Prints what happens to the service while a drill runs (events newer than `since`, by the
 * server's clock); resolves with its report once the report exists, or gives up after `boundMs`.
 */
async function followDrill(admin: AdminClient, service: string, id: string, since: number, boundMs: number): Promise<DrillSummary> {
  const printed = new Set<string>();
  const giveUp = Date.now() + boundMs;
  while (Date.now() < giveUp) {
    const query = new URLSearchParams({ service, since: String(since), limit: '1000' });
    const { events } = await admin.call<{ events: UnderstudyEvent[] }>('GET', `/v1/events?${query}`);
    for (const event of events) {
      const key = JSON.stringify(event);
      if (event.time <= since || printed.has(key) || event.type.startsWith('job-') || event.type === 'item-failed') continue;
      printed.add(key);
      console.log(formatEvent(event));
    }
    try {
      return (await admin.call<{ drill: DrillSummary }>('GET', `/v1/drills/${enc(id)}`)).drill;
    } catch (error) {
      // Not written yet: the drill still runs.
      if (!(error instanceof UnderstudyError && error.code === 'NOT_FOUND')) throw error;
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  throw new UnderstudyError('DRILL_TIMEOUT', `drill ${id} had not ended after ${Math.round(boundMs / 1000)}s; see \`understudy drills\` and \`understudy events\``);
}

/** Prints the steps of a deploy or rollback until it ends; the exit code says how it ended. */
async function followRelease(admin: AdminClient, service: string, kind: 'deploy' | 'rollback'): Promise<number> {
  const since = Date.now() - 1000;
  const printed = new Set<string>();
  for (;;) {
    const query = new URLSearchParams({ service, since: String(since), limit: '1000' });
    const { events } = await admin.call<{ events: UnderstudyEvent[] }>('GET', `/v1/events?${query}`);
    for (const event of events) {
      if (!event.type.startsWith('deploy-') && !event.type.startsWith('rollback-')) continue;
      const key = `${event.time} ${event.type} ${event.reason}`;
      if (printed.has(key)) continue;
      printed.add(key);
      console.log(formatEvent(event));
      if (event.type === 'deploy-finished') return 0;
      // A deploy that ended in a rollback did not do what was asked: exit 3.
      if (event.type === 'rollback-finished') return !event.ok ? 1 : kind === 'deploy' ? 3 : 0;
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

function load(file: string): Config {
  return loadConfigFile(file);
}

function client(file: string): AdminClient {
  return new AdminClient(load(file));
}

function enc(part: string): string {
  return encodeURIComponent(part);
}

function durationArg(value: string): number {
  const ms = parseDuration(value);
  if (ms === undefined) throw new InvalidArgumentError('expected a duration such as 30s, 10m or 2h');
  return ms;
}

function faultArg(value: string): string {
  if (!(FAULT_KINDS as readonly string[]).includes(value)) throw new InvalidArgumentError(`expected one of ${FAULT_KINDS.join(', ')}`);
  return value;
}

function countArg(value: string): number {
  if (!/^\d+$/.test(value)) throw new InvalidArgumentError('expected a whole number');
  return Number(value);
}

program.parseAsync().catch((error: unknown) => {
  if (error instanceof ConfigError || error instanceof UnderstudyError) {
    console.error(`understudy: ${error.message}`);
    process.exit(error instanceof ConfigError ? 2 : 1);
  }
  const err = error as NodeJS.ErrnoException;
  if (err.code === 'EADDRINUSE') {
    console.error(`understudy: cannot listen on ${(err as { address?: string }).address}:${(err as { port?: number }).port}: the address is in use`);
    process.exit(1);
  }
  console.error(error);
  process.exit(1);
});
