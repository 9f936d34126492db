#!/usr/bin/env node
import { Command, InvalidArgumentError } from 'commander';
import { AdminClient, AdminServer, ensureToken, tokenFile } from '../api/index.js';
import { ConfigError, loadConfigFile, parseDuration, type Config } from '../config/index.js';
import { Understudy, type ServiceView } from '../controller/index.js';
import { UnderstudyError, type UnderstudyEvent } from '../core/index.js';
import { formatEvent, formatStatus } from './format.js';
import { jobCommands } from './jobs.js';

const DEFAULT_CONFIG = process.env.UNDERSTUDY_CONFIG ?? 'understudy.yaml';

const program = new Command()
  .name('understudy')
  .description('Keeps self-hosted AI model services answering when a GPU box, a model process or an upgrade fails.')
  .showHelpAfterError('(run with --help for usage)')
  .configureHelp({ sortSubcommands: false });

const configOption = ['-c, --config <file>', 'the configuration file ($UNDERSTUDY_CONFIG)', DEFAULT_CONFIG] as const;

program
  .command('up')
  .description('start the gateway, the instances it runs, probes and the admin API; runs until SIGINT or SIGTERM')
  .option(...configOption)
  .addHelpText(
    'after',
    '\nOn SIGINT/SIGTERM it stops taking requests, lets in-flight ones finish (10s), and stops the instances it started.\nA second signal exits at once.',
  )
  .action(async (options: { config: string }) => {
    const config = load(options.config);
    const app = new Understudy(config);
    const token = ensureToken(config);
    const admin = new AdminServer(app, token);
    const shutdown = async (signal: string) => {
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
    app.log.info(
      { gateway, admin: adminAddress, services: config.services.map((s) => s.name), tokenFile: config.admin.token ? undefined : tokenFile(config) },
      'understudy is up',
    );
    process.send?.({ type: 'up', gateway, admin: adminAddress });
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

program.addCommand(jobCommands(configOption, client));

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
