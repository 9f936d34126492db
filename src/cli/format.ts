import type { ServiceView } from '../controller/index.js';
import type { UnderstudyEvent } from '../core/index.js';

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
  const time = new Date(event.time).toISOString();
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
    default:
      what = `${event.type} ${event.instance}`;
  }
  return `${time}  ${event.service}  ${what}: ${event.reason}`;
}
