import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { ProxyName } from './proxies/types.js';
import type { ColdResult } from './scenarios/cold.js';
import { median, type JobsResult } from './scenarios/jobs.js';
import { AFTER_FAULT_WINDOW_MS, BASELINE_MS, CLIENT_TIMEOUT_MS, FAULT_AT_MS, FAULTS, RATE, RUN_MS, type FaultCaseResult } from './scenarios/faults.js';
import type { OverheadResult } from './scenarios/overhead.js';
import {
  CLIENT_PAUSE_MS,
  CLIENTS,
  MODEL_LATENCY_MS,
  POLL_MS,
  ROLLBACK_VARIANTS,
  spread,
  type RollbackResult,
  type RollbackRun,
} from './scenarios/rollback.js';
import type { SnapshotResult } from './scenarios/snapshot.js';
import { CONCURRENCY, MAX_TOKENS, OVERHEAD_CONCURRENCY, OVERHEAD_STREAMS, OVERHEAD_TOKENS, ROUNDS, TOKEN_DELAY_MS, type StreamsResult } from './scenarios/streams.js';

export interface BenchReport {
  date: string;
  environment: { cpu: string; cores: number; node: string; software: string[] };
  skipped: string[];
  faults: FaultCaseResult[] | null;
  cold: ColdResult | null;
  overhead: OverheadResult[] | null;
  /** Absent from reports saved before the jobs scenario. */
  jobs?: JobsResult | null;
  /** Absent from reports saved before the snapshot scenario. */
  snapshot?: SnapshotResult | null;
  /** Absent from reports saved before the rollback scenario. */
  rollback?: RollbackResult | null;
  /** Absent from reports saved before the streams scenario. */
  streams?: StreamsResult | null;
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

function jobsSection(jobs: JobsResult): string {
  const { throughput: t } = jobs;
  const rate = (v: number | undefined) => (v === undefined || Number.isNaN(v) ? 'n/a' : `${v.toFixed(1)} items/s`);
  const rounds = [...new Set(t.runs.map((r) => r.round))];
  const throughputRows = rounds.map((round) => {
    const direct = t.runs.find((r) => r.round === round && r.side === 'direct');
    const via = t.runs.find((r) => r.round === round && r.side === 'understudy');
    return [
      String(round),
      `${rate(direct?.itemsPerSecond)} (${ms(direct?.ms ?? null)})`,
      `${rate(via?.itemsPerSecond)} (${ms(via?.ms ?? null)})`,
      ms(via?.serverMs ?? null),
      direct && via ? (via.itemsPerSecond / direct.itemsPerSecond).toFixed(3) : 'n/a',
    ];
  });
  throughputRows.push(['median', rate(t.directMedian), rate(t.understudyMedian), '', t.ratio.toFixed(3)]);

  const num = (v: number | null) => (v === null ? NaN : v);
  const med = (pick: (r: JobsResult['restarts'][number]) => number | null) => ms(median(jobs.restarts.map((r) => num(pick(r)))));
  const restartRows = jobs.restarts.map((r) => [
    String(r.run),
    `${r.doneAtKill} / ${r.total}`,
    ms(r.toFirstDispatchMs),
    ms(r.toFirstRecordedMs),
    `${ms(r.modelServerStartMs)}${r.servedBy ? ` (${r.servedBy})` : ''}`,
    ms(r.toModelServerSpawnMs),
    ms(r.addedMs),
    `${r.succeeded} / ${r.total}`,
  ]);
  restartRows.push([
    'median',
    '',
    med((r) => r.toFirstDispatchMs),
    med((r) => r.toFirstRecordedMs),
    med((r) => r.modelServerStartMs),
    med((r) => r.toModelServerSpawnMs),
    med((r) => r.addedMs),
    '',
  ]);
  const addedMedian = median(jobs.restarts.map((r) => num(r.addedMs)));
  const alone = jobs.modelServerAloneMs;

  const failureLabel = { 'understudy-sigkill': 'Understudy SIGKILLed, started again', 'primary-sigkill': 'primary model server SIGKILLed' } as const;
  const failureRows = jobs.failures.map((f) => [
    failureLabel[f.kind],
    String(f.run),
    `${f.runTwice} / ${f.inFlightAtKill}`,
    String(f.extraRuns),
    String(f.neverRun),
    `${f.succeeded} / ${f.total}`,
    goal(f.runTwice <= f.inFlightAtKill && f.inFlightAtKill <= jobs.concurrency),
  ]);

  return `## Durable jobs (Understudy)

Jobs of ${jobs.items} \`POST /v1/infer\` items, ${jobs.concurrency} at a time, to a primary and a hot standby that
Understudy runs as processes (fixture model servers answering in ${jobs.latencyMs} ms, a model doing real work per item).

**Throughput.** Submit to the job's \`end\` event, against the same items sent straight to the same model server
by a pool of ${jobs.concurrency} undici workers; both sides warmed up first, rounds alternate which side goes first.
The job's own span is its \`finishedAt - createdAt\`.

${table(['Round', 'Direct', 'Through Understudy', "Job's own span", 'Ratio'], throughputRows)}

Through Understudy: ${t.ratio.toFixed(3)}× direct (goal ≥ 0.95: ${goal(t.ratio >= 0.95)}).

**Restart.** \`understudy up\` SIGKILLed mid-job, then started again on the same state: times from the new
process's spawn to the first resumed item reaching a model server (its \`--record\` line, read every 2 ms) and
to the first resumed item recorded (the job's done count, polled every 10 ms). The model servers the killed
Understudy left running are stopped and started afresh, so the restart includes a model server's start: its own
process start to \`/health\` ready, from its \`/__stats\`. A model server started alone answers \`/health\` 200
${alone.map((v) => ms(v)).join(', ')} after its spawn (median ${ms(median(alone))}).

${table(
  ['Run', 'Done at kill', 'Spawn → first resumed item at a model server', 'Spawn → first resumed item recorded', "Model server's own start", 'Spawn → model server spawn', 'Added (first item less model server start)', 'Succeeded'],
  restartRows,
)}

Restart to the first resumed item less the model server's own start: ${ms(addedMedian)} median (goal < 1 s: ${goal(addedMedian < 1000)}).
Where the time goes, medians from the new process's spawn: its first \`orphan-stopped\` event ${med((r) => r.toOrphanStopMs)}
(Node and Understudy's own start), the model server's process start ${med((r) => r.toModelServerSpawnMs)} (the orphan stopped
first: it holds the port), that model server \`ready\` ${med((r) => r.toServerReadyMs)}, \`job-resumed\` ${med((r) => r.toResumedMs)}.

**Work lost per failure.** Items that reached a model server more than once (\`--record\`) against the items in
flight at the kill: for an Understudy kill, items that had reached a model server less the results the store
held; for a primary kill, items that had reached the primary less the results it gave.

${table(['Failure', 'Run', 'Items run twice / in flight at kill', 'Extra runs', 'Never run', 'Succeeded', `Goal (≤ in flight ≤ ${jobs.concurrency})`], failureRows)}`;
}

function snapshotSection(snap: SnapshotResult): string {
  const mib = (n: number) => (n === 0 ? '0' : `${(n / 2 ** 20).toFixed(1)} MiB`);
  const gib = (n: number) => `${(n / 2 ** 30).toFixed(2)} GiB`;
  const rate = (bytes: number, msValue: number) => `${(bytes / 2 ** 20 / (msValue / 1000)).toFixed(0)} MiB/s`;
  const rows = snap.rounds.map((r) => [
    r.label,
    mib(r.changedBytes),
    ms(r.ms),
    mib(r.readBytes),
    mib(r.newBytes),
    goal(r.readBytes <= r.changedBytes && r.newBytes <= r.changedBytes),
  ]);
  const phases = Object.entries(snap.restore.phases)
    .map(([phase, at]) => `${phase} ${ms(at)}`)
    .join(', ');
  const first = snap.rounds[0];
  return `## Snapshots of a model directory (Understudy)

A ${gib(snap.modelBytes)} model directory (${snap.files} files: 8 weight shards of 256 MiB, a 16 MiB tokenizer, a config;
pseudo-random content) on the same disk as the snapshot store${snap.generateMs === null ? ', kept from an earlier run' : `, written in ${ms(snap.generateMs)}`}.
Each snapshot hashes what it reads, fsyncs each new blob, reads it back and hashes it again, then writes its manifest.
A file whose size, mtime, ctime, inode and mode match the previous snapshot is not read. The page cache is not
dropped: reads of the model may come from memory.

${table(['Snapshot', 'Changed', 'Time', 'Read', 'Written', 'Goal: read and written ≤ changed'], rows)}
${first ? `\nThe first snapshot ran at ${rate(first.totalBytes, first.ms)}.` : ''}
Verify of all four snapshots (every blob re-hashed once): ${ms(snap.verify.ms)} for ${gib(snap.verify.bytes)}.
Restore of the first snapshot over the changed directory (the blobs verified, copied to a staging directory next to
it, the copies hashed and fsynced, then swapped in by two renames): ${ms(snap.restore.ms)} for ${gib(snap.restore.bytes)}
(${rate(snap.restore.bytes, snap.restore.ms)}); phases began at about ${phases}.`;
}

function rollbackSection(result: RollbackResult): string {
  // Event times are whole milliseconds: no decimals under 10 ms.
  const whole = (v: number | null) => (v === null || Number.isNaN(v) || Math.abs(v) >= 1000 ? ms(v) : `${Math.round(v)} ms`);
  const range = (values: (number | null)[]) => {
    const { min, median, max } = spread(values);
    return `${whole(min)} / ${whole(median)} / ${whole(max)}`;
  };
  const summaryRows = result.variants.map((variant) => {
    const runs = result.runs.filter((r) => r.variant === variant);
    const failed = runs.reduce((n, r) => n + r.requests.failed, 0);
    const sent = runs.reduce((n, r) => n + r.requests.sent, 0);
    const allOk = runs.every((r) => r.ok && r.onV1 === r.instances);
    const worst = Math.max(...runs.map((r) => r.durationMs));
    return [
      ROLLBACK_VARIANTS[variant].label,
      String(runs.length),
      range(runs.map((r) => r.durationMs)),
      range(runs.map((r) => r.benchFailureToFinishedMs)),
      range(runs.map((r) => r.deployToFinishedMs)),
      `${failed} / ${sent}`,
      `< 60 s: ${goal(allOk && worst < 60_000)}; 0 failed: ${goal(failed === 0)}`,
    ];
  });
  const phase = (r: RollbackRun) => [r.phases.detect, r.phases.drain, r.phases.stop, r.phases.start, r.phases.version].map(whole);
  const runRows = result.runs.map((r) => [
    r.variant,
    String(r.run),
    whole(r.durationMs),
    whole(r.benchFailureToFinishedMs),
    whole(r.benchFailureToV1Ms),
    whole(r.healthyMs),
    ...phase(r),
    `${r.requests.failed} / ${r.requests.sent}`,
    String(r.requests.byVersion['2'] ?? 0),
  ]);
  const reasons = [...new Set(result.runs.map((r) => `- ${r.variant}: ${r.reason}`))].join('\n');
  const late = spread(result.runs.map((r) => (r.countedLateMs === null ? null : Math.abs(r.countedLateMs))));
  const known = spread(result.runs.map((r) => r.benchFailureWindowMs));
  const unseen = result.runs.filter((r) => r.benchFailureToFinishedMs === null).length;
  return `## Automatic rollback of a bad version (Understudy)

A primary and a hot standby run by Understudy from the fixture model server (${MODEL_LATENCY_MS} ms per request) on version 1;
${CLIENTS} clients send \`POST /v1/infer\` one at a time (${CLIENT_PAUSE_MS} ms apart) through the gateway, from 1 s before the
deploy of version 2 to 1 s after the rollback. Config: version probe every 1 s, passive ejection after 3 failures,
\`deploy: { watch: 60s, rollback: { minRequests: 10, errorRate: 0.2 } }\` (downs: 1, the default). Understudy runs in
the benchmark's process on a fresh state directory each run. **Understudy's figure** is the \`rollback-finished\`
event's \`durationMs\`: from the first failure Understudy counted on version 2 to version 1 serving on every instance
(the issue's figure; goal under 60 s, against hours by hand and minutes for a scripted approach). **Bench** times
start at the first failure of version 2 as the benchmark itself saw it, from two sides: its clients (a 200 from
version 2 came before it; an answer from version 1 to a request sent after version 2 began to serve came after it) and
its own reads of the upgraded instance's \`/version\` and \`/__stats\` every ${POLL_MS} ms (its count past \`failAfter\`, or a
refused connection after it served version 2, came after it). The figure is the midpoint of what it knew.
Cells are min / median / max.

${table(['Version 2', 'Runs', "Understudy's figure", 'Bench: first failure → rollback finished', 'Deploy → rollback finished', 'Failed client requests', 'Goals'], summaryRows)}

Each run; the phases come from Understudy's events for the instance that moved (the hot standby): detect is its first
counted failure to \`deploy-failed\` (passive ejection, then the deploy's watch, which looks every 200 ms); drain,
\`rollback-started\` to \`stopped\`; stop, to \`starting\` on version 1: waiting for the version 2 process to exit
(Understudy sends it SIGTERM as it goes down, so usually 0); start, to \`ready\` (process
start and startup probe); version read, to \`rollback-finished\` (the version probe reads 1). "Bench: failure →
v1 answers" ends at the first read of \`/version\` 1 from the moved instance.

${table(
  ['Variant', 'Run', "Understudy's figure", 'Bench: failure → finished', 'Bench: failure → v1 answers', 'Deploy → first failure', 'Detect', 'Drain', 'Stop', 'Start', 'Version read', 'Failed / sent', 'Answered by v2'],
  runRows,
)}

What the bench knew of each first failure spanned ${whole(known.median)} (median; ${whole(known.max)} at most), so its figures are ± half
that${unseen > 0 ? `; it did not see the failure in ${unseen} run(s)` : ''}. Understudy's first counted failure was within ${whole(late.max)} of the bench's (median ${whole(late.median)}).

Why Understudy rolled back:

${reasons}`;
}

function streamsSection(r: StreamsResult): string {
  const pct = (n: number) => `${((100 * n) / r.streams).toFixed(1)} %`;
  const cutPer1000 = (1000 * r.cut) / r.streams;
  const seamOverTtft = r.seamMs.p99 - r.standbyTtftMs.p50;
  return `## Streams cut mid-answer

${ROUNDS} rounds of ${CONCURRENCY} concurrent chat streams (${MAX_TOKENS} tokens, one every ${TOKEN_DELAY_MS} ms) through \`understudy up\`
to two imitation vLLM servers; in each round the instance answering them is SIGKILLed once every stream has had some
tokens (a different point of the answer each round), and started again for the next round, which kills the other one
(\`passive.ejectFor: 1s\` so that a restarted server is back for the next round, and \`quarantine.failures: ${ROUNDS}\` so that
a server killed ${ROUNDS / 2} times is not quarantined as flapping; the rest are the shipped defaults).

${table(
  ['Figure', 'Result', 'Goal', ''],
  [
    ['Streams cut per 1,000', `${cutPer1000.toFixed(1)} (${r.cut} of ${r.streams})`, '0', goal(r.cut === 0)],
    ['Streams continued on the standby', `${r.continued} (${pct(r.continued)})`, 'all', goal(r.continued === r.streams)],
    ['Text identical to the uninterrupted answer', `${r.identical} (${pct(r.identical)})`, '100 %', goal(r.identical === r.streams)],
    ['Seam: extra delay the client sees, p50 / p99 / max', `${ms(r.seamMs.p50)} / ${ms(r.seamMs.p99)} / ${ms(r.seamMs.max)}`, '< 300 ms + standby TTFT', goal(seamOverTtft < 300)],
    ["Standby's own time to first token (asked directly), p50", ms(r.standbyTtftMs.p50), '', ''],
    ['Per chunk, server to client, direct: p50 / p99', `${ms(r.chunk.direct.p50)} / ${ms(r.chunk.direct.p99)}`, '', ''],
    ['Per chunk, server to client, through Understudy: p50 / p99', `${ms(r.chunk.understudy.p50)} / ${ms(r.chunk.understudy.p99)}`, '', ''],
    ['Added per chunk in steady streaming, p50 (p99)', `${r.chunk.addedP50Ms.toFixed(3)} ms (${r.chunk.addedP99Ms.toFixed(3)} ms)`, '< 0.2 ms', goal(r.chunk.addedP50Ms < 0.2)],
  ],
)}

The seam is measured by the client: from the later of the kill and the last chunk before it, to the first chunk after it.
The per-chunk figures come from ${r.chunk.chunks} chunks each way (${OVERHEAD_STREAMS} streams of ${OVERHEAD_TOKENS} tokens, ${OVERHEAD_CONCURRENCY} at a
time, the two ways alternating): each chunk's \`x_sent_at\` (stamped by the server as it writes it) to the moment the client reads it.${
    r.failures.length > 0 ? `\n\nWhat went wrong:\n\n${r.failures.map((f) => `- ${f}`).join('\n')}` : ''
  }`;
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
  if (report.jobs) sections.push(jobsSection(report.jobs));
  if (report.snapshot) sections.push(snapshotSection(report.snapshot));
  if (report.rollback) sections.push(rollbackSection(report.rollback));
  if (report.streams) sections.push(streamsSection(report.streams));
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
