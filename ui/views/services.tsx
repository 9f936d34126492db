import { api, type Session } from '../api.js';
import { Badge, TrafficChart, When, type Confirm } from '../components.js';
import { fullTime, instanceTone, serverNow, span, type Tone } from '../format.js';
import type { Model, ServiceView } from '../model.js';

/** The drill faults (FAULT_KINDS in src/config; not imported, to keep the schema out of the page). */
const FAULTS = ['kill', 'hang', 'error', 'slow', 'cold-start'];

/** What a person needs first: is the service answering, and from where. */
export function serviceState(service: ServiceView): { word: string; tone: Tone } {
  const active = service.instances.find((i) => i.name === service.active);
  if (!active) {
    const starting = service.instances.some((i) => i.state === 'starting');
    if (service.queued > 0 || starting) return { word: `queueing for a cold start${service.queued ? ` (${service.queued} waiting)` : ''}`, tone: 'warn' };
    return { word: 'down: no ready instance', tone: 'bad' };
  }
  if (active.state !== 'ready' && active.state !== 'draining') return { word: `degraded: ${active.name} is ${active.state}`, tone: 'bad' };
  if (active.tier === 'primary') return { word: service.mode === 'pinned' ? `serving on ${active.name} (switched over)` : 'serving on primary', tone: 'good' };
  if (service.mode === 'pinned') return { word: `switched over to ${active.name}`, tone: 'info' };
  return { word: `failed over to ${active.name}`, tone: 'warn' };
}

export function ServicesView({ model, session, ask, showLogs }: { model: Model; session: Session; ask: (c: Confirm) => void; showLogs: (id: string) => void }) {
  if (model.services.length === 0) return <p class="empty">{model.live === 'live' ? 'No services configured.' : 'Waiting for Understudy…'}</p>;
  return (
    <div class="services">
      {model.services.map((service) => (
        <ServiceCard key={service.name} service={service} model={model} session={session} ask={ask} showLogs={showLogs} />
      ))}
    </div>
  );
}

function ServiceCard({ service, model, session, ask, showLogs }: { service: ServiceView; model: Model; session: Session; ask: (c: Confirm) => void; showLogs: (id: string) => void }) {
  const state = serviceState(service);
  const name = service.name;
  const others = service.instances.filter((i) => i.name !== service.active);
  const switchover = () =>
    ask({
      title: `Switch ${name} over?`,
      body: 'Traffic moves to the instance you choose; requests in flight finish where they are, none fail. It stays there until a failure or another switchover moves it.',
      verb: 'Switch over',
      fields: (
        <label>
          To{' '}
          <select name="to">
            <option value="">the best ready standby</option>
            {others.map((i) => (
              <option value={i.name}>
                {i.name} ({i.tier}, {i.state})
              </option>
            ))}
          </select>
        </label>
      ),
      run: async (form) => {
        const to = String(form.get('to') ?? '');
        await api(session, 'POST', `/v1/services/${encodeURIComponent(name)}/switchover`, to ? { to } : {});
        return `Switchover of ${name} accepted`;
      },
    });
  const drill = () =>
    ask({
      title: `Run a failure drill on ${name}?`,
      body: 'The drill hurts an instance on purpose (killed, hung, erroring or slowed), sends probe traffic through the gateway and measures how Understudy recovers. Its report appears under Recovery.',
      verb: 'Run drill',
      danger: true,
      fields: (
        <label>
          Fault{' '}
          <select name="fault">
            {FAULTS.map((f) => (
              <option value={f}>{f}</option>
            ))}
          </select>
        </label>
      ),
      run: async (form) => {
        const answer = await api<{ drill: { id: string } }>(session, 'POST', `/v1/services/${encodeURIComponent(name)}/drill`, { fault: String(form.get('fault')) });
        return `Drill ${answer.drill.id} begun on ${name}`;
      },
    });
  const rollback = () =>
    ask({
      title: `Roll ${name} back?`,
      body: 'Every instance goes back to the newest known-good version (from its snapshot, if it has one), one at a time behind a standby.',
      verb: 'Roll back',
      danger: true,
      run: async () => {
        await api(session, 'POST', `/v1/services/${encodeURIComponent(name)}/rollback`, {});
        return `Rollback of ${name} begun`;
      },
    });
  const last = model.last[name] ?? [];
  return (
    <section class="card service" data-testid={`service-${name}`} data-active={service.active ?? ''} aria-labelledby={`svc-${name}`}>
      <header>
        <h2 id={`svc-${name}`}>{name}</h2>
        <Badge tone={state.tone} testid="service-state">
          {state.word}
        </Badge>
        <span class="meta">
          active: <strong data-testid="active">{service.active ?? 'none'}</strong>
          {service.expectedVersion ? ` · version ${service.expectedVersion}` : ''}
          {service.queued ? ` · ${service.queued} queued` : ''}
        </span>
        <span class="actions">
          <button type="button" onClick={switchover}>
            Switch over…
          </button>
          <button type="button" onClick={drill}>
            Drill…
          </button>
          <button type="button" onClick={rollback}>
            Roll back…
          </button>
        </span>
      </header>
      <div class="instances">
        {service.instances.map((instance) => {
          // A stopped cold standby is waiting to be needed, not held: it has no button.
          const idleCold = instance.tier === 'cold' && instance.state === 'stopped';
          const held = instance.state === 'draining' || instance.state === 'stopped' || instance.state === 'quarantined';
          const act = (verb: 'drain' | 'resume') =>
            ask({
              title: `${verb === 'drain' ? 'Drain' : 'Resume'} ${name}/${instance.name}?`,
              body:
                verb === 'drain'
                  ? 'It takes no new requests, finishes those in flight, and is then stopped (if Understudy runs it) until you resume it.'
                  : 'It is started (if stopped) and probed, and takes traffic again once ready.',
              verb: verb === 'drain' ? 'Drain' : 'Resume',
              danger: verb === 'drain',
              run: async () => {
                await api(session, 'POST', `/v1/services/${encodeURIComponent(name)}/instances/${encodeURIComponent(instance.name)}/${verb}`, {});
                return `${verb === 'drain' ? 'Drain' : 'Resume'} of ${name}/${instance.name} accepted`;
              },
            });
          return (
            <article class={`instance${instance.name === service.active ? ' active' : ''}`} data-testid={`instance-${name}-${instance.name}`} data-state={instance.state}>
              <div class="what">
                <h3>
                  {instance.name}
                  {instance.name === service.active && <span class="tag">active</span>}
                </h3>
                <Badge tone={instanceTone(instance.state)}>{instance.state}</Badge>
                <dl>
                  <dt>tier</dt>
                  <dd>{instance.tier}</dd>
                  <dt>runtime</dt>
                  <dd>
                    {instance.runtime}
                    {instance.pid ? ` (pid ${instance.pid})` : ''}
                  </dd>
                  <dt>version</dt>
                  <dd>
                    {instance.version ?? '–'}
                    {instance.admitted ? '' : ' (not admitted)'}
                  </dd>
                  <dt>{instance.state} for</dt>
                  <dd title={fullTime(instance.since)}>{span(serverNow() - instance.since)}</dd>
                  <dt>in flight</dt>
                  <dd>{instance.inflight}</dd>
                </dl>
                <p class="reason" title={instance.reason}>
                  {instance.reason}
                </p>
                {!idleCold && (
                  <button type="button" class="small" onClick={() => act(held ? 'resume' : 'drain')}>
                    {held ? 'Resume…' : 'Drain…'}
                  </button>
                )}
              </div>
              <TrafficChart seconds={model.traffic[name]?.[instance.name]} label={`${name}/${instance.name}`} />
            </article>
          );
        })}
      </div>
      <details class="last">
        <summary>Who answered the last {last.length} requests</summary>
        <table>
          <thead>
            <tr>
              <th>when</th>
              <th>request</th>
              <th>instance</th>
              <th>status</th>
              <th>ms</th>
            </tr>
          </thead>
          <tbody>
            {[...last].reverse().map((r) => (
              <tr>
                <td>
                  <When time={r.time} short />
                </td>
                <td>
                  <button type="button" class="link" onClick={() => showLogs(r.requestId)} title="log lines for this request">
                    {r.requestId}
                  </button>
                </td>
                <td>{r.instance ?? 'gateway'}</td>
                <td>{r.outcome === 'ok' ? r.status : `${r.status} ${r.outcome}`}</td>
                <td>{r.ms}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </details>
    </section>
  );
}
