import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import type { AdminClient } from '../api/index.js';
import type { ClusterView, StoredConfig, StoredConfigSummary } from '../cluster/index.js';
import type { ApplyResult, ConfigView } from '../controller/index.js';

type ClientFor = (configFile: string) => AdminClient;

/** How long `apply` and `rollback` wait for every live member to say what it did with the new revision. */
const SETTLE_MS = 10_000;

/** `understudy config ...`: the cluster's shared configuration in etcd. */
export function configCommands(configOption: readonly [string, string, string], client: ClientFor): Command {
  const config = new Command('config').description("in a cluster: the configuration shared through etcd, its revisions and rollbacks (docs/cluster.md)").addHelpText(
    'after',
    `
Every node takes a new revision up live when each change is one it can make without a
restart (a service's timeouts, retry, failback, queue, passive and quarantine thresholds,
streams, limits, drill and deploy settings; an instance's probes and capabilities).
A revision that changes anything else (listeners, processes, images, services or
instances added or removed, the cluster: section) is stored, and each node keeps what
it runs and says why until it is restarted; a restarted node starts on the newest
revision. A node that cannot read a revision keeps what it runs, too.

Examples:
  understudy config apply -c understudy.yaml            # check, store as the next revision, see each node take it up
  understudy config apply -c understudy.yaml --if-revision 4
  understudy config status                              # which revision each node runs
  understudy config history
  understudy config show --revision 3 > understudy.yaml
  understudy config rollback --to 3                     # stores revision 3's text again, as the next revision`,
  );

  config
    .command('apply')
    .description('check a configuration as every node of its cluster reads it, store it in etcd as the next revision, and wait for each node to take it up or say why not')
    .option(...configOption)
    .option('--if-revision <n>', 'only if the cluster is at this revision now (0: none applied yet); nothing is stored otherwise', revisionArg)
    .option('--no-wait', 'do not wait for the nodes')
    .action(async (options: { config: string; ifRevision?: number; wait: boolean }) => {
      const file = path.resolve(options.config);
      const text = readFileSync(file, 'utf8');
      const admin = client(options.config);
      const result = await admin.call<ApplyResult>('POST', '/v1/config', { text, ifRevision: options.ifRevision });
      report(result, `${file}`);
      if (options.wait) await settle(admin, result.stored.revision);
    });

  config
    .command('rollback')
    .description("store an earlier revision's text again as the next revision; each node takes it up as it would an apply")
    .requiredOption('--to <n>', 'the revision to go back to (see `understudy config history`)', revisionArg)
    .option(...configOption)
    .option('--if-revision <n>', 'only if the cluster is at this revision now', revisionArg)
    .option('--no-wait', 'do not wait for the nodes')
    .action(async (options: { config: string; to: number; ifRevision?: number; wait: boolean }) => {
      const admin = client(options.config);
      const result = await admin.call<ApplyResult>('POST', '/v1/config/rollback', { to: options.to, ifRevision: options.ifRevision });
      report(result, `revision ${options.to}`);
      if (options.wait) await settle(admin, result.stored.revision);
    });

  config
    .command('show')
    .description('print a revision\'s YAML exactly as it was applied (the current one by default)')
    .option(...configOption)
    .option('--revision <n>', 'which revision', revisionArg)
    .action(async (options: { config: string; revision?: number }) => {
      const query = options.revision === undefined ? '' : `?revision=${options.revision}`;
      const { config: stored } = await client(options.config).call<{ config: StoredConfig }>('GET', `/v1/config/text${query}`);
      process.stdout.write(stored.text.endsWith('\n') ? stored.text : `${stored.text}\n`);
    });

  config
    .command('history')
    .description('the revisions kept in etcd (the last 100), newest first')
    .option(...configOption)
    .option('--json', 'print the raw JSON')
    .action(async (options: { config: string; json?: boolean }) => {
      const { revisions } = await client(options.config).call<{ revisions: StoredConfigSummary[] }>('GET', '/v1/config/history');
      if (options.json) return console.log(JSON.stringify(revisions, null, 2));
      if (revisions.length === 0) return console.log('no configuration was applied to the cluster yet (understudy config apply -c FILE)');
      for (const r of revisions) {
        const note = r.rolledBackTo === undefined ? '' : `  (rollback to ${r.rolledBackTo})`;
        console.log(`${String(r.revision).padStart(5)}  ${new Date(r.at).toISOString()}  by ${r.by.padEnd(10)} sha256 ${r.sha256.slice(0, 12)}${note}`);
      }
    });

  config
    .command('status')
    .description('the newest revision, and which one each live node runs (or why it kept another)')
    .option(...configOption)
    .option('--json', 'print the raw JSON')
    .action(async (options: { config: string; json?: boolean }) => {
      const admin = client(options.config);
      const { config: view } = await admin.call<{ config: ConfigView }>('GET', '/v1/config');
      const { cluster } = await admin.call<{ cluster: ClusterView }>('GET', '/v1/cluster');
      if (options.json) return console.log(JSON.stringify({ config: view, members: cluster.members.map((m) => ({ node: m.node, config: m.config })) }, null, 2));
      console.log(formatConfigStatus(view, cluster));
    });

  return config;
}

function report(result: ApplyResult, what: string): void {
  const { stored, diff } = result;
  console.log(`stored ${what} as revision ${stored.revision} (sha256 ${stored.sha256.slice(0, 12)})`);
  if (diff.live.length === 0 && diff.restart.length === 0) console.log('  on this node: nothing changes');
  if (diff.live.length > 0) console.log(`  taken up live: ${diff.live.join(', ')}`);
  if (diff.restart.length > 0) console.log(`  needs a restart of each node to take up: ${diff.restart.join(', ')}`);
}

/** Waits until every live member runs `revision` or has said why it keeps another; prints each. */
async function settle(admin: AdminClient, revision: number): Promise<void> {
  const deadline = Date.now() + SETTLE_MS;
  for (;;) {
    const { cluster } = await admin.call<{ cluster: ClusterView }>('GET', '/v1/cluster');
    const members = cluster.members;
    const answered = (m: ClusterView['members'][number]) => m.config !== undefined && (m.config.revision === revision || m.config.pending?.revision === revision);
    if ((members.length > 0 && members.every(answered)) || Date.now() > deadline) {
      for (const m of members) console.log(`  ${m.node.padEnd(12)} ${memberLine(m, revision)}`);
      if (members.length === 0) console.log('  (no member entries in etcd)');
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

function memberLine(member: ClusterView['members'][number], revision: number): string {
  const c = member.config;
  if (!c) return 'says nothing of its configuration (an older Understudy?)';
  if (c.revision === revision) return `runs revision ${revision}`;
  const runs = c.revision === null ? 'its own file' : `revision ${c.revision}`;
  if (c.pending?.revision === revision) return `keeps ${runs}: ${c.pending.reason}`;
  return `runs ${runs} (has not answered for revision ${revision} yet)`;
}

export function formatConfigStatus(view: ConfigView, cluster: ClusterView): string {
  const lines = [
    view.stored ? `newest: revision ${view.stored.revision}  by ${view.stored.by}  ${new Date(view.stored.at).toISOString()}` : `newest: none applied${view.error ? ` (etcd: ${view.error})` : ''}`,
    '',
    'nodes:',
  ];
  for (const m of cluster.members) {
    const c = m.config;
    const runs = !c ? '?' : c.revision === null ? 'own file' : `revision ${c.revision}`;
    lines.push(`  ${m.node.padEnd(12)} ${runs}${c?.pending ? `  (kept; revision ${c.pending.revision}: ${c.pending.reason})` : ''}`);
  }
  if (cluster.members.length === 0) lines.push(`  (none seen${cluster.membersError ? `: ${cluster.membersError}` : ''})`);
  return lines.join('\n');
}

function revisionArg(value: string): number {
  if (!/^\d+$/.test(value)) throw new InvalidArgumentError('expected a revision number');
  return Number(value);
}
