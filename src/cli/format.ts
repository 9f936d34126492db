import type { ClusterView } from '../cluster/index.js';
import type { JobView } from '../api/index.js';
import type { DeployView, DrillSummary, ReleaseRecord, ServiceView } from '../controller/index.js';
import type { UnderstudyEvent } from '../core/index.js';
import type { Alert } from '../observe/index.js';

/** Plain aligned columns, like `docker ps`. */
export function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, col) => Math.max(...rows.map((row) => (row[col] ?? '').length)));
  return rows.map((row) => row.map((cell, col) => cell.padEnd(widths[col]!)).join('  ').trimEnd()).join('\n');
}

export function ago(time: number, now = Date.now()): string {
  const s = Math.max(0, Math.round((now - time) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  return `${Math.round(s / 3600)}h`;
}

export function formatStatus(services: ServiceView[]): string {
  return services
    .map((service) => {
      const head = `${service.name}: active ${service.active ?? '(none)'}${service.queued ? `, ${service.queued} queued` : ''}${
        service.expectedVersion ? `, version ${service.expectedVersion}` : ''
      }`;
      const rows = [['INSTANCE', 'TIER', 'STATE', 'FOR', 'VERSION', 'IN-FLIGHT', 'PID', 'REASON']];
      for (const i of service.instances) {
        rows.push([
          `${i.name === service.active ? '*' : ' '}${i.name}`,
          i.tier,
          i.state,
          ago(i.since),
          `${i.version ?? '-'}${i.admitted || i.version === null ? '' : ' (not admitted)'}`,
          String(i.inflight),
          i.pid === null ? '-' : String(i.pid),
          i.reason,
        ]);
      }
      return `${head}\n${table(rows)}`;
    })
    .join('\n\n');
}

export function formatEvent(event: UnderstudyEvent): string {
  return `${new Date(event.time).toISOString()}  ${event.service}  ${eventSummary(event)}: ${event.reason}`;
}

/** What happened, in a few words (the timeline's line before the reason; the dashboard's too). */
export function eventSummary(event: UnderstudyEvent): string {
  let what: string;
  switch (event.type) {
    case 'instance-state':
      what = `${event.instance} ${event.from} → ${event.to}`;
      break;
    case 'active-changed':
      what = `active ${event.from ?? '(none)'} → ${event.to} (${event.kind})`;
      break;
    case 'no-ready-instance':
      what = 'no ready instance';
      break;
    case 'job-state':
      what = `job ${event.job} ${event.from ?? 'submitted'} → ${event.to} (${event.done}/${event.total} done)`;
      break;
    case 'job-resumed':
      what = `job ${event.job} resumed at ${event.done}/${event.total}`;
      break;
    case 'item-failed':
      what = `job ${event.job} item ${event.item} failed${event.final ? '' : ' (will retry)'}`;
      break;
    case 'deploy-started':
      what = `deploy ${event.from} → ${event.to}`;
      break;
    case 'deploy-step':
      what = `deploy of ${event.to}: ${event.step}${event.instance ? ` ${event.instance}` : ''}`;
      break;
    case 'deploy-failed':
      what = `deploy ${event.from} → ${event.to} failed`;
      break;
    case 'deploy-finished':
      what = `deploy of ${event.to} finished`;
      break;
    case 'rollback-started':
      what = `rollback ${event.from} → ${event.to}`;
      break;
    case 'rollback-finished':
      what = `rollback to ${event.to} ${event.ok ? `done in ${(event.durationMs / 1000).toFixed(1)}s` : 'failed'}`;
      break;
    case 'snapshot-created':
    case 'snapshot-restored':
      what = `${event.type} ${event.snapshot}`;
      break;
    case 'snapshot-failed':
    case 'snapshots-pruned':
      what = event.type;
      break;
    case 'snapshots-verified':
      what = event.damaged.length === 0 ? `snapshots verified: ${event.checked.length} whole` : `snapshots verified: ${event.damaged.length} DAMAGED`;
      break;
    case 'drill-started':
      what = `drill ${event.drill}: ${event.fault} on ${event.instances.join(', ')}`;
      break;
    case 'drill-finished':
      what = `drill ${event.drill} ${event.passed ? 'passed' : 'FAILED'}`;
      break;
    case 'drill-skipped':
      what = `drill (${event.fault}) skipped`;
      break;
    case 'stream-continued':
      what = `stream ${event.requestId} ${event.from} → ${event.to} at ${event.atSegment !== undefined ? `segment ${event.atSegment}` : `${event.atTokens} tokens`}`;
      break;
    case 'stream-cut':
      what = `stream ${event.requestId} cut on ${event.instance}`;
      break;
    case 'model-ejected':
    case 'model-restored':
      what = `${event.type} ${event.instance} ${event.model}`;
      break;
    case 'leader-changed':
      what = `${event.node}: leader ${event.leader ?? 'none'}${event.epoch === null ? '' : ` (epoch ${event.epoch})`}`;
      break;
    case 'coordination-lost':
    case 'coordination-restored':
      what = `${event.node}: ${event.type}`;
      break;
    case 'desired-state':
      what = `${event.node}: ${event.instance} ${event.state} (the leader's word)`;
      break;
    case 'config-applied':
    case 'config-refused':
      what = `${event.node}: ${event.type} revision ${event.revision}`;
      break;
    case 'config-reloaded':
      what = `config ${event.outcome === 'applied' ? 'reloaded' : 'reload refused'}`;
      break;
    case 'operator-action':
      what = `${event.by} via ${event.via}: ${event.action} ${event.target} ${event.outcome}`;
      break;
    default:
      what = `${event.type} ${event.instance}`;
  }
  return what;
}

const BAR = 24;

/** One line of progress: bar, counts, rate and ETA. */
export function progressLine(job: JobView, columns: number): string {
  const fraction = job.total === 0 ? 1 : job.done / job.total;
  const filled = Math.round(fraction * BAR);
  const bar = `${'█'.repeat(filled)}${'░'.repeat(BAR - filled)}`;
  const parts = [`${job.id} [${bar}] ${job.done}/${job.total} ${Math.floor(fraction * 100)}%`, job.state];
  if (job.ratePerSecond) parts.push(`${job.ratePerSecond.toFixed(1)} items/s`);
  if (job.etaSeconds !== null && job.state === 'running') parts.push(`ETA ${duration(job.etaSeconds)}`);
  if (job.running > 0) parts.push(`${job.running} running`);
  if (job.failed > 0) parts.push(`${job.failed} failed`);
  const line = parts.join(' · ');
  return line.length > columns - 1 ? line.slice(0, columns - 1) : line;
}

export function formatJobs(jobs: JobView[]): string {
  if (jobs.length === 0) return '(no jobs)';
  const rows = jobs.map((job) => [
    job.id,
    job.service,
    job.state,
    `${job.done}/${job.total}`,
    job.failed > 0 ? `${job.failed} failed` : '',
    new Date(job.createdAt).toISOString().replace('T', ' ').slice(0, 19),
    job.name ?? '',
  ]);
  return table([['JOB', 'SERVICE', 'STATE', 'DONE', 'FAILED', 'SUBMITTED', 'NAME'], ...rows]);
}

export function formatJob(job: JobView): string {
  const lines = [
    `${job.id}${job.name ? ` (${job.name})` : ''}: ${job.state}${job.reason ? `: ${job.reason}` : ''}`,
    `  service      ${job.service}`,
    `  items        ${job.total}: ${job.succeeded} succeeded, ${job.failed} failed, ${job.running} running, ${job.pending} pending`,
    `  options      concurrency ${job.options.concurrency}, itemTimeout ${job.options.itemTimeout}ms, retries ${job.options.retries}, join ${job.options.join}`,
    `  submitted    ${new Date(job.createdAt).toISOString()}`,
  ];
  if (job.finishedAt) lines.push(`  finished     ${new Date(job.finishedAt).toISOString()}`);
  if (job.ratePerSecond) lines.push(`  rate         ${job.ratePerSecond.toFixed(2)} items/s, ETA ${duration(job.etaSeconds ?? 0)}`);
  lines.push(`  results      ${job.outputs.results}`);
  if (job.outputs.joined) lines.push(`  output       ${job.outputs.joined}`);
  return lines.join('\n');
}

function duration(seconds: number): string {
  if (seconds < 60) return `${Math.round(seconds)}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${String(Math.round(seconds % 60)).padStart(2, '0')}s`;
  return `${Math.floor(seconds / 3600)}h${String(Math.floor((seconds % 3600) / 60)).padStart(2, '0')}m`;
}

export interface ReleasesView {
  service: string;
  current: string | null;
  knownGood: string[];
  history: ReleaseRecord[];
  running: DeployView | null;
}

/** A service's releases: what runs, what is known-good, the deploy running, the newest history first. */
export function formatReleases(view: ReleasesView): string {
  if (view.current === null) return `${view.service}: pins no version (set version.expect)`;
  const lines = [`${view.service}: version ${view.current}; known-good: ${view.knownGood.join(', ') || 'none'}`];
  if (view.running) {
    const r = view.running;
    const watch = r.watchUntil ? `, watched until ${new Date(r.watchUntil).toISOString()} (${r.failed}/${r.attempts} failed)` : '';
    lines.push(`  running: ${r.kind} ${r.from} → ${r.to}, step ${r.step}${watch}`);
  }
  for (const record of [...view.history].reverse().slice(0, 10)) {
    const when = new Date(record.startedAt).toISOString();
    lines.push(`  ${when}  ${record.kind} ${record.from} → ${record.to}: ${record.outcome}${record.reason ? ` (${record.reason})` : ''}`);
  }
  return lines.join('\n');
}


const ms = (value: number | null): string => (value === null ? 'never' : value < 1000 ? `${Math.round(value)} ms` : `${(value / 1000).toFixed(2)} s`);

/** A drill's outcome in a few lines, for the terminal; report.md has the whole of it. */
export function formatDrill(report: DrillSummary): string {
  const r = report.requests;
  const lines = [
    `drill ${report.id}: ${report.passed ? 'PASSED' : 'FAILED'}: ${report.verdict}`,
    table([
      ['fault', `${report.fault} on ${report.instances.join(', ')}`],
      ['noticed after', ms(report.detectedMs)],
      ['answered again after', ms(report.recoveredMs)],
      ['back as before after', ms(report.restoredMs)],
      ['probe requests', `${r.sent} sent, ${r.ok} ok, ${r.failed} failed`],
      ['latency before (p50/p99)', `${ms(r.before.p50)} / ${ms(r.before.p99)}`],
      ['latency during (p50/p99/max)', `${ms(r.during.p50)} / ${ms(r.during.p99)} / ${ms(r.during.max)}`],
      ['job items', report.job ? `${report.job.items}: ${report.job.succeeded} done, ${report.job.lost} lost, ${report.job.unfinished} unfinished, ${report.job.redone} redone` : 'no job'],
    ]),
  ];
  for (const failure of r.failures) lines.push(`  failed: ${failure}`);
  for (const note of report.notes) lines.push(`  note: ${note}`);
  lines.push(`report: ${report.dir}/report.md (timeline: ${report.dir}/timeline.svg)`);
  return lines.join('\n');
}

export function formatDrills(drills: DrillSummary[]): string {
  if (drills.length === 0) return '(no drills yet: `understudy drill SERVICE --fault kill`)';
  const rows = [['DRILL', 'FAULT', 'ON', 'RESULT', 'ANSWERED AGAIN', 'FAILED', 'LOST', 'TRIGGER']];
  for (const d of drills) {
    rows.push([d.id, d.fault, d.instances.join(','), d.passed ? 'passed' : 'FAILED', ms(d.recoveredMs), String(d.requests.failed), String(d.job?.lost ?? 0), d.trigger]);
  }
  return table(rows);
}

export function formatAlerts(alerts: Omit<Alert, 'event'>[]): string {
  if (alerts.length === 0) return '(no alerts)';
  return alerts
    .map((a) => {
      const delivery = a.quieted ? `not sent: ${a.quieted}` : a.suppressed ? 'repeat, not sent' : a.sent ? 'sent' : 'not sent';
      return `${new Date(a.time).toISOString()}  ${a.severity.toUpperCase().padEnd(8)}  ${a.service}  ${a.title} (${delivery})\n    ${a.detail}`;
    })
    .join('\n');
}

/** `understudy cluster status`: the leader, then a line per member with its age and where it sends each service. */
export function formatCluster(view: ClusterView): string {
  const lines = [
    `leader: ${view.leader ?? 'none'}${view.epoch === null ? '' : `  epoch ${view.epoch}`}${view.url ? `  ${view.url}` : ''}`,
    `this node: ${view.node}${view.acting ? ' (leads)' : ''}  etcd: ${view.etcd === 'ok' ? 'ok' : `UNREACHABLE (${view.etcdError})`}`,
    '',
    'members:',
  ];
  const now = Date.now();
  for (const member of view.members) {
    const services = Object.entries(member.services).map(([service, active]) => `${service}→${active ?? 'none'}`).join(' ');
    const c = member.config;
    const config = !c ? '' : `  config: ${c.revision === null ? 'own file' : `revision ${c.revision}`}${c.pending ? ` (kept; ${c.pending.revision} needs a restart or cannot be read: see config status)` : ''}`;
    lines.push(`  ${member.node.padEnd(12)} ${`${Math.round((now - member.at) / 100) / 10}s ago`.padEnd(10)} ${services}${config}`);
  }
  if (view.membersError !== undefined) lines.push(`  (unknown: ${view.membersError})`);
  else if (view.members.length === 0) lines.push('  (none seen)');
  const routing = Object.entries(view.routing);
  if (routing.length > 0) {
    lines.push('', 'routing (from the leader):');
    for (const [service, r] of routing) lines.push(`  ${service.padEnd(12)} ${r.active ?? 'none'}  (epoch ${r.epoch})`);
  }
  for (const [service, why] of Object.entries(view.diverging)) lines.push(`  ! ${service}: ${why}`);
  return lines.join('\n');
}
