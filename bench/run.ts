import { rmSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { stopAll } from '../test/support/fixture.js';
import { stopAllLlmServers } from '../test/support/llm.js';
import { haproxy } from './proxies/haproxy.js';
import { nginx } from './proxies/nginx.js';
import { nodeFloor } from './proxies/node-floor.js';
import type { ProxyLauncher, ProxyName } from './proxies/types.js';
import { understudy } from './proxies/understudy.js';
import { renderMarkdown, saveReport, type BenchReport } from './report.js';
import { clusterSection, runCluster, type ClusterResult } from './scenarios/cluster.js';
import { runCold } from './scenarios/cold.js';
import { dashboardSection, runDashboard, type DashboardResult } from './scenarios/dashboard.js';
import { runFaults } from './scenarios/faults.js';
import { runJobs } from './scenarios/jobs.js';
import { runOverhead } from './scenarios/overhead.js';
import { closeRollbackGateways, killRollbackInstancesNow, runRollback } from './scenarios/rollback.js';
import { runSnapshot } from './scenarios/snapshot.js';
import { runStreams } from './scenarios/streams.js';
import { runVip, vipSection, type VipResult } from './scenarios/vip.js';
import { killAllServicesNow, stopAllServices } from './services.js';
import { progress } from './workload.js';

const RESULTS_DIR = fileURLToPath(new URL('results/', import.meta.url));
const LAUNCHERS: ProxyLauncher[] = [nginx, haproxy, understudy, nodeFloor];
const SCENARIOS = ['faults', 'cold', 'overhead', 'jobs', 'snapshot', 'rollback', 'streams', 'cluster', 'dashboard'] as const;
type Scenario = (typeof SCENARIOS)[number];

const USAGE = `usage: tsx bench/run.ts [--only nginx,haproxy,understudy,node-floor] [--scenario faults,cold,overhead,jobs,snapshot,rollback,streams,cluster,dashboard]`;

function pickList<T extends string>(value: string | undefined, allowed: readonly T[], flag: string): T[] {
  if (value === undefined) return [...allowed];
  const picked = value.split(',').map((item) => item.trim());
  const unknown = picked.filter((item) => !allowed.includes(item as T));
  if (unknown.length > 0) throw new Error(`unknown ${flag}: ${unknown.join(', ')}\n${USAGE}`);
  return picked as T[];
}

interface Options {
  proxies: ProxyName[];
  scenarios: Scenario[];
}

function parseOptions(): Options {
  const { values } = parseArgs({ options: { only: { type: 'string' }, scenario: { type: 'string' } } });
  return {
    proxies: pickList(values.only, LAUNCHERS.map((l) => l.name), '--only'),
    scenarios: pickList(values.scenario, SCENARIOS, '--scenario'),
  };
}

async function stopEverything(): Promise<void> {
  await Promise.all([stopAllServices(), stopAll(), stopAllLlmServers(), closeRollbackGateways()]);
}

async function bench(options: Options, root: string): Promise<void> {
  const skipped: string[] = [];
  const launchers = LAUNCHERS.filter((launcher) => {
    if (!options.proxies.includes(launcher.name)) return false;
    const reason = launcher.unavailable();
    if (reason) {
      skipped.push(`${launcher.name}: ${reason}`);
      progress(`skipping ${launcher.name}: ${reason}`);
    }
    return reason === null;
  });
  const runs = (scenario: Scenario) => options.scenarios.includes(scenario);
  const hasUnderstudy = launchers.includes(understudy);
  if (runs('cold') && !hasUnderstudy) skipped.push('cold standby take-over: needs Understudy');
  if (runs('jobs') && !hasUnderstudy) skipped.push('durable jobs: needs Understudy');
  if (runs('streams') && !hasUnderstudy) skipped.push('streams continued: needs Understudy');
  if (runs('cluster') && !hasUnderstudy) skipped.push('cluster: needs Understudy');
  if (runs('dashboard') && !hasUnderstudy) skipped.push('dashboard: needs Understudy');

  const report: BenchReport & { cluster?: ClusterResult | null; vip?: VipResult | null; dashboard?: DashboardResult | null } = {
    date: new Date().toISOString(),
    environment: {
      cpu: os.cpus()[0]?.model ?? 'unknown CPU',
      cores: os.cpus().length,
      node: process.version,
      software: launchers.map((l) => l.version()),
    },
    skipped,
    faults: runs('faults') && launchers.length > 0 ? await runFaults(launchers.filter((l) => !l.overheadOnly), root) : null,
    cold: runs('cold') && hasUnderstudy ? await runCold(root) : null,
    overhead: runs('overhead') ? await runOverhead(launchers, root) : null,
    jobs: runs('jobs') && hasUnderstudy ? await runJobs(root) : null,
    snapshot: runs('snapshot') ? await runSnapshot(root) : null,
    rollback: runs('rollback') ? await runRollback(root) : null,
    streams: runs('streams') && hasUnderstudy ? await runStreams(root) : null,
    cluster: runs('cluster') && hasUnderstudy ? await runCluster(root, skipped) : null,
    vip: runs('cluster') && hasUnderstudy ? await runVip(skipped) : null,
    dashboard: runs('dashboard') && hasUnderstudy ? await runDashboard(root, skipped) : null,
  };

  const markdown = `${renderMarkdown(report)}${report.cluster ? `\n${clusterSection(report.cluster)}\n` : ''}${report.vip ? `\n${vipSection(report.vip)}\n` : ''}${report.dashboard ? `\n${dashboardSection(report.dashboard)}\n` : ''}`;
  process.stdout.write(markdown);
  progress(`saved ${await saveReport(report, markdown, RESULTS_DIR)}`);
}

async function main(): Promise<void> {
  let options: Options;
  try {
    options = parseOptions();
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\n`);
    process.exitCode = 2;
    return;
  }
  const root = await mkdtemp(path.join(os.tmpdir(), 'understudy-bench-'));
  // Whatever happens, no proxy or model server outlives the benchmark.
  process.on('exit', () => {
    killAllServicesNow();
    killRollbackInstancesNow();
    rmSync(root, { recursive: true, force: true });
  });
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      progress(`${signal}: stopping everything`);
      void stopEverything().finally(() => process.exit(130));
    });
  }
  try {
    await bench(options, root);
  } catch (error) {
    process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exitCode = 1;
  } finally {
    await stopEverything();
  }
}

await main();
