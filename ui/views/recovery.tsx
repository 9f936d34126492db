import { useState } from 'preact/hooks';
import type { SnapshotListing } from '../../src/backup/index.js';
import type { DeployView, DrillSummary, ReleaseRecord } from '../../src/controller/index.js';
import type { Alert } from '../../src/observe/index.js';
import { api, apiText, type Session } from '../api.js';
import { Badge, useFetched, When, type Confirm } from '../components.js';
import { bytes, span } from '../format.js';
import type { Model } from '../model.js';

interface Releases {
  service: string;
  current: string | null;
  knownGood: string[];
  history: ReleaseRecord[];
  running: DeployView | null;
}

/** A snapshot as GET /v1/snapshots lists it: when it was last found whole (when taken, or by a verify). */
type ListedSnapshot = SnapshotListing & { verified: { at: number; ok: boolean; by: 'taken' | 'verify' } | null };

function SnapshotState({ snapshot: s }: { snapshot: ListedSnapshot }) {
  if (s.broken) return <Badge tone="bad">damaged: {s.problem}</Badge>;
  const known = s.knownGood ? ' · known-good' : '';
  if (s.verified && !s.verified.ok) {
    return (
      <>
        <Badge tone="bad">damaged</Badge> found by verify <When time={s.verified.at} short />
        {known}
      </>
    );
  }
  if (s.verified?.by === 'verify') {
    return (
      <>
        <Badge tone="good">verified</Badge> <When time={s.verified.at} short />
        {known}
      </>
    );
  }
  return (
    <>
      <Badge tone="good">verified when taken</Badge>
      {known}
    </>
  );
}

/** Releases and known-good versions, snapshots, drill reports and alerts: refetched when such an event arrives. */
export function RecoveryView({ model, session, ask }: { model: Model; session: Session; ask: (c: Confirm) => void }) {
  const names = model.services.map((s) => s.name);
  const releases = useFetched(
    () => Promise.all(names.map((name) => api<Releases>(session, 'GET', `/v1/services/${encodeURIComponent(name)}/releases`))),
    `${model.recoveryStamp}:${names.join(',')}`,
  );
  const snapshots = useFetched(() => api<{ snapshots: ListedSnapshot[]; schedules: unknown }>(session, 'GET', '/v1/snapshots'), model.recoveryStamp);
  const drills = useFetched(() => api<{ drills: DrillSummary[] }>(session, 'GET', '/v1/drills'), model.recoveryStamp);
  const alerts = useFetched(() => api<{ alerts: Omit<Alert, 'event'>[] }>(session, 'GET', '/v1/alerts?limit=50'), model.recoveryStamp);
  const [picture, setPicture] = useState<{ id: string; url: string } | undefined>();
  const showPicture = async (id: string) => {
    const svg = await apiText(session, `/v1/drills/${encodeURIComponent(id)}/timeline.svg`);
    if (picture) URL.revokeObjectURL(picture.url);
    setPicture({ id, url: URL.createObjectURL(new Blob([svg], { type: 'image/svg+xml' })) });
  };
  const rollbackTo = (service: string, to: string) =>
    ask({
      title: `Roll ${service} back to ${to}?`,
      body: 'Every instance goes to that known-good version, one at a time behind a standby.',
      verb: 'Roll back',
      danger: true,
      run: async () => {
        await api(session, 'POST', `/v1/services/${encodeURIComponent(service)}/rollback`, { to });
        return `Rollback of ${service} to ${to} begun`;
      },
    });
  const snapshot = (service: string) =>
    ask({
      title: `Take a snapshot of ${service} now?`,
      body: 'Its model files, config and image are copied into the snapshot store (only what changed takes space).',
      verb: 'Take snapshot',
      run: async () => {
        const answer = await api<{ snapshot: { id: string } }>(session, 'POST', '/v1/snapshots', { service });
        return `Snapshot ${answer.snapshot.id} taken`;
      },
    });
  const verify = () =>
    ask({
      title: 'Verify every snapshot?',
      body: 'Every stored file is read and hashed again; a damaged one is named.',
      verb: 'Verify',
      run: async () => {
        const report = await api<{ ok: boolean; checked: number; damaged?: unknown[] }>(session, 'POST', '/v1/snapshots/verify', {});
        return report.ok ? `Snapshots verified: all intact` : `Verification found damage: see the snapshots list`;
      },
    });
  return (
    <div class="recovery">
      <section class="card" aria-labelledby="releases-title">
        <header>
          <h2 id="releases-title">Releases</h2>
          {releases.error && <span class="error">{releases.error}</span>}
        </header>
        {(releases.value ?? []).map((r) => (
          <div class="release" data-testid={`releases-${r.service}`}>
            <h3>{r.service}</h3>
            <p>
              running <strong>{r.current ?? 'no pinned version'}</strong>
              {r.running && (
                <>
                  {' '}
                  · {r.running.kind} to {r.running.to}: <Badge tone="info">{r.running.step}</Badge>
                </>
              )}
            </p>
            <p>
              known-good:{' '}
              {r.knownGood.length === 0
                ? 'none yet'
                : [...r.knownGood].reverse().map((v) => (
                    <span class="version">
                      {v}
                      {v !== r.current && (
                        <button type="button" class="small" onClick={() => rollbackTo(r.service, v)}>
                          Roll back to {v}…
                        </button>
                      )}
                    </span>
                  ))}
            </p>
            {r.history.length > 0 && (
              <table>
                <thead>
                  <tr>
                    <th>when</th>
                    <th>what</th>
                    <th>outcome</th>
                    <th>why</th>
                  </tr>
                </thead>
                <tbody>
                  {[...r.history].reverse().slice(0, 10).map((h) => (
                    <tr>
                      <td>
                        <When time={h.startedAt} />
                      </td>
                      <td>
                        {h.kind} {h.from} → {h.to}
                      </td>
                      <td>
                        <Badge tone={h.outcome === 'known-good' || h.outcome === 'done' ? 'good' : h.outcome === 'running' ? 'info' : 'bad'}>{h.outcome}</Badge>
                      </td>
                      <td>{h.reason}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            )}
          </div>
        ))}
      </section>

      <section class="card" aria-labelledby="snapshots-title">
        <header>
          <h2 id="snapshots-title">Snapshots</h2>
          <span class="actions">
            {names.map((name) => (
              <button type="button" class="small" onClick={() => snapshot(name)}>
                Snapshot {name}…
              </button>
            ))}
            <button type="button" class="small" onClick={verify}>
              Verify all…
            </button>
          </span>
        </header>
        {(snapshots.value?.snapshots ?? []).length === 0 ? (
          <p class="empty">No snapshots yet (a service needs backup.paths or backup.images; see docs/recovery.md).</p>
        ) : (
          <table>
            <thead>
              <tr>
                <th>snapshot</th>
                <th>service</th>
                <th>version</th>
                <th>state</th>
                <th>size</th>
                <th>age</th>
              </tr>
            </thead>
            <tbody>
              {snapshots.value!.snapshots.map((s) => (
                <tr>
                  <td>{s.id}</td>
                  <td>{s.service}</td>
                  <td>{s.broken ? '–' : (s.version ?? '–')}</td>
                  <td>
                    <SnapshotState snapshot={s} />
                  </td>
                  <td>{s.broken ? '–' : `${bytes(s.totals.bytes)} (${bytes(s.totals.newBytes)} new)`}</td>
                  <td>
                    <When time={s.createdAt} short />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </section>

      <section class="card" aria-labelledby="drills-title">
        <header>
          <h2 id="drills-title">Drills</h2>
        </header>
        {(drills.value?.drills ?? []).length === 0 ? (
          <p class="empty">No drill reports yet: run one from a service's card, or `understudy drill SERVICE --fault kill`.</p>
        ) : (
          <table data-testid="drills">
            <thead>
              <tr>
                <th>when</th>
                <th>service</th>
                <th>fault</th>
                <th>verdict</th>
                <th>detected · recovered · restored</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {[...drills.value!.drills].reverse().map((d) => (
                <tr>
                  <td>
                    <When time={d.startedAt} />
                  </td>
                  <td>{d.service}</td>
                  <td>
                    {d.fault} on {d.instances.join(', ')}
                  </td>
                  <td>
                    <Badge tone={d.aborted ? 'idle' : d.passed ? 'good' : 'bad'}>{d.aborted ? 'aborted' : d.passed ? 'passed' : 'failed'}</Badge> {d.verdict}
                  </td>
                  <td>
                    {[d.detectedMs, d.recoveredMs, d.restoredMs].map((ms) => (ms === null ? '–' : span(ms))).join(' · ')}
                  </td>
                  <td>
                    <button type="button" class="small" onClick={() => void showPicture(d.id)}>
                      Timeline
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
        {picture && (
          <figure class="drill-picture">
            <img src={picture.url} alt={`timeline of drill ${picture.id}`} />
            <figcaption>Drill {picture.id}</figcaption>
          </figure>
        )}
      </section>

      <section class="card" aria-labelledby="alerts-title">
        <header>
          <h2 id="alerts-title">Alerts</h2>
        </header>
        {(alerts.value?.alerts ?? []).length === 0 ? (
          <p class="empty">No alerts raised.</p>
        ) : (
          <table>
            <thead>
              <tr>
                <th>when</th>
                <th>severity</th>
                <th>alert</th>
                <th>state</th>
              </tr>
            </thead>
            <tbody>
              {[...alerts.value!.alerts].reverse().map((a) => (
                <tr>
                  <td>
                    <When time={a.time} />
                  </td>
                  <td>
                    <Badge tone={a.severity === 'critical' ? 'bad' : a.severity === 'warning' ? 'warn' : 'info'}>{a.severity}</Badge>
                  </td>
                  <td title={a.detail}>
                    {a.service}: {a.title}
                  </td>
                  <td>{a.sent ? 'sent' : a.quieted ? `held back: ${a.quieted}` : a.suppressed ? `repeat, not sent` : 'not sent'}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </section>
    </div>
  );
}
