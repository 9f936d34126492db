import { useState } from 'preact/hooks';
import { eventSummary } from '../../src/cli/format.js';
import { Badge, When } from '../components.js';
import type { Tone } from '../format.js';
import type { Model, UnderstudyEvent } from '../model.js';

const SHOWN = 300;

function eventTone(event: UnderstudyEvent): Tone {
  const t = event.type;
  if (t === 'active-changed') return event.kind === 'failover' ? 'warn' : 'info';
  if (t === 'instance-state') return event.to === 'ready' ? 'good' : event.to === 'down' || event.to === 'quarantined' ? 'bad' : 'warn';
  if (/failed|cut|no-ready|quarantined|mismatch|lost|refused/.test(t)) return 'bad';
  if (t === 'operator-action') return event.outcome === 'accepted' ? 'info' : 'bad';
  if (/finished|restored|created|applied/.test(t)) return 'good';
  return 'idle';
}

/** The timeline, newest first, filtered by service and kind; a trace id opens its log lines. */
export function EventsView({ model, showLogs }: { model: Model; showLogs: (id: string) => void }) {
  const [service, setService] = useState('');
  const [kind, setKind] = useState('');
  const services = [...new Set(model.events.map((e) => e.service))].sort();
  const kinds = [...new Set(model.events.map((e) => e.type))].sort();
  const matching = model.events.filter((e) => (service === '' || e.service === service) && (kind === '' || e.type === kind));
  const shown = matching.slice(-SHOWN).reverse();
  return (
    <section class="card" aria-labelledby="events-title">
      <header>
        <h2 id="events-title">Event timeline</h2>
        <span class="filters">
          <label>
            Service{' '}
            <select value={service} onChange={(e) => setService((e.target as HTMLSelectElement).value)} data-testid="filter-service">
              <option value="">all</option>
              {services.map((s) => (
                <option value={s}>{s === '*' ? '* (Understudy)' : s}</option>
              ))}
            </select>
          </label>
          <label>
            Kind{' '}
            <select value={kind} onChange={(e) => setKind((e.target as HTMLSelectElement).value)} data-testid="filter-kind">
              <option value="">all</option>
              {kinds.map((k) => (
                <option value={k}>{k}</option>
              ))}
            </select>
          </label>
          <span class="meta">
            {matching.length} of {model.events.length}
          </span>
        </span>
      </header>
      <ol class="timeline" data-testid="timeline">
        {shown.map((event) => (
          <li data-type={event.type} data-service={event.service}>
            <When time={event.time} />
            <span class="svc">{event.service}</span>
            <Badge tone={eventTone(event)}>{event.type}</Badge>
            <span class="what">{eventSummary(event)}</span>
            <span class="why">{event.reason}</span>
            <button type="button" class="link trace" onClick={() => showLogs(event.traceId)} title="log lines with this trace id">
              {event.traceId}
            </button>
          </li>
        ))}
      </ol>
      {shown.length === 0 && <p class="empty">No events match.</p>}
    </section>
  );
}
