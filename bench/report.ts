import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { ProxyName } from './proxies/types.js';
import type { ColdResult } from './scenarios/cold.js';
import { AFTER_FAULT_WINDOW_MS, BASELINE_MS, CLIENT_TIMEOUT_MS, FAULT_AT_MS, FAULTS, RATE, RUN_MS, type FaultCaseResult } from './scenarios/faults.js';
import type { OverheadResult } from './scenarios/overhead.js';

export interface BenchReport {
  date: string;
  environment: { cpu: string; cores: number; node: string; software: string[] };
  skipped: string[];
  faults: FaultCaseResult[] | null;
  cold: ColdResult | null;
  overhead: OverheadResult[] | null;
}

const PROXY_LABELS: Record<ProxyName, string> = {
  nginx: 'nginx',
  haproxy: 'HAProxy',
  understudy: 'Understudy',
  'node-floor': 'bare Node.js proxy (reference)',
};

function ms(value: number | null): string {
  if (value === null || Number.isNaN(value)) return 'n/a';
  if (value === 0) return '0';
  if (Math.abs(value) >= 1000) return `${(value / 1000).toFixed(2)} s`;
  return `${value.toFixed(Math.abs(value) < 10 ? 2 : 0)} ms`;
}

function goal(met: boolean): string {
  return met ? 'met' : 'missed';
}

function counts(record: Record<string, number>): string {
  const entries = Object.entries(record);
  return entries.length === 0 ? '–' : entries.map(([key, n]) => `${key} ×${n}`).join(', ');
}

function table(header: string[], rows: string[][]): string {
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n');
}

function faultsSection(results: FaultCaseResult[]): string {
  const order = Object.keys(FAULTS);
  const byFault = [...results].sort((a, b) => order.indexOf(a.fault) - order.indexOf(b.fault));
  const rows = byFault.map((r) => [
    FAULTS[r.fault].label,
    PROXY_LABELS[r.proxy],
    `${r.failed} / ${r.total}`,
    ms(r.disruptionMs),
    ms(r.p99Ms),
    counts(r.failures),
    counts(r.servedBy),
  ]);
  return `## Failover when the primary fails

${RATE} req/s of \`POST /v1/infer\` for ${RUN_MS / 1000} s through each proxy to a primary and a hot standby
(fixture model servers answering in 50 ms); the fault hits the primary ${FAULT_AT_MS / 1000} s in. A request fails on
an error, a non-2xx status or no answer within ${CLIENT_TIMEOUT_MS / 1000} s. Disruption runs from the first failed
request's start to the last failed request's end. p99 covers the requests started in the ${AFTER_FAULT_WINDOW_MS / 1000} s
after the fault (for the baseline, a ${BASELINE_MS / 1000} s run without one), failed ones included.

${table(['Fault', 'Proxy', 'Failed', 'Disruption', 'p99', 'Failures', 'Answered by'], rows)}`;
}

function coldSection(cold: ColdResult): string {
  const addedGoal = cold.addedMs === null ? '< 100 ms' : `< 100 ms: ${goal(cold.addedMs < 100)}`;
  return `## Cold standby take-over (Understudy)

The primary is SIGKILLed under 20 req/s; the only standby is cold: Understudy starts it, and it takes its own
time to load its model (then answers at once, so the first answer times the take-over, not inference).
Clients wait up to 10 s. Added by Understudy: from the \`no-ready-instance\` event to the first answer from the
cold standby, less the standby's own start-up (its process start to its model loaded).

${table(
  ['Measure', 'Value', 'Goal'],
  [
    ['Failed requests', `${cold.failed} / ${cold.total}`, `0: ${goal(cold.failed === 0)}`],
    ['SIGKILL to first answer from the cold standby', ms(cold.takeoverMs), ''],
    ["Cold standby's own start-up after the fault", ms(cold.coldStartupMs), ''],
    ['Added by Understudy', ms(cold.addedMs), addedGoal],
    ['SIGKILL to `no-ready-instance` event', ms(cold.detectionMs), ''],
    ['p99 of requests started after the fault', ms(cold.p99Ms), ''],
  ],
)}`;
}

function overheadSection(results: OverheadResult[]): string {
  const direct = results.find((r) => r.target === 'direct');
  const rows = results.map((r) => [
    r.target === 'direct' ? 'direct' : PROXY_LABELS[r.target],
    ms(r.p50Ms),
    ms(r.p99Ms),
    r.target === 'direct' || !direct ? '' : ms(r.p50Ms - direct.p50Ms),
    r.target === 'direct' || !direct ? '' : ms(r.p99Ms - direct.p99Ms),
    `${Math.round(r.throughput)} req/s`,
    String(r.failed),
  ]);
  const nginx = results.find((r) => r.target === 'nginx');
  const understudy = results.find((r) => r.target === 'understudy');
  const goals: string[] = [];
  if (direct && understudy) {
    const [p50, p99] = [understudy.p50Ms - direct.p50Ms, understudy.p99Ms - direct.p99Ms];
    goals.push(`Understudy adds ${ms(p50)} at p50 (goal < 0.5 ms: ${goal(p50 < 0.5)}) and ${ms(p99)} at p99 (goal < 1 ms: ${goal(p99 < 1)}).`);
  }
  if (nginx && understudy) {
    const ratio = understudy.throughput / nginx.throughput;
    goals.push(`Its throughput is ${ratio.toFixed(2)}× nginx's (goal ≥ 0.5: ${goal(ratio >= 0.5)}).`);
  }
  const floor = results.find((r) => r.target === 'node-floor');
  if (direct && floor && understudy) {
    goals.push(
      `A bare Node.js proxy (no routing, health, retries, metrics or logs) adds ${ms(floor.p50Ms - direct.p50Ms)} at p50 and ` +
        `${ms(floor.p99Ms - direct.p99Ms)} at p99 in the same run: the cost of Node's HTTP server and client on this machine, ` +
        `under which Understudy's data plane cannot go.`,
    );
  }
  return `## Overhead

A model server that answers at once, reached directly and through each proxy: latency at 100 req/s, then
throughput with 32 requests always in flight, 10 s of each per target, taken in 5 rounds that visit every
target in turn. Added latency is the difference from going direct.

${table(['Target', 'p50', 'p99', 'Added p50', 'Added p99', 'Throughput (32 in flight)', 'Failed'], rows)}${goals.length > 0 ? `\n\n${goals.join(' ')}` : ''}`;
}

export function renderMarkdown(report: BenchReport): string {
  const { environment: env } = report;
  const sections = [
    `# Benchmark: Understudy, nginx and HAProxy

Run ${report.date} on ${env.cpu} (${env.cores} cores): ${[`Node ${env.node}`, ...env.software].join(', ')}.
Everything runs on this one machine over 127.0.0.1: the load generator, the proxies and the model servers
share its cores, so compare the rows with each other rather than with other machines.`,
  ];
  if (report.skipped.length > 0) sections.push(`Skipped:\n\n${report.skipped.map((s) => `- ${s}`).join('\n')}`);
  if (report.faults) sections.push(faultsSection(report.faults));
  if (report.cold) sections.push(coldSection(report.cold));
  if (report.overhead) sections.push(overheadSection(report.overhead));
  return `${sections.join('\n\n')}\n`;
}

/** Writes bench-<time>.json and .md under dir; returns the Markdown file's path. */
export async function saveReport(report: BenchReport, markdown: string, dir: string): Promise<string> {
  await mkdir(dir, { recursive: true });
  const base = path.join(dir, `bench-${report.date.replace(/[:.]/g, '-')}`);
  await writeFile(`${base}.json`, `${JSON.stringify(report, null, 2)}\n`);
  await writeFile(`${base}.md`, markdown);
  return `${base}.md`;
}
