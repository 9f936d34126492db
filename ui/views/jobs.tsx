import { useState } from 'preact/hooks';
import { api, apiText, type Session } from '../api.js';
import { Badge, useFetched, When, type Confirm } from '../components.js';
import { jobTone, span } from '../format.js';
import type { JobView, Model } from '../model.js';

function jobActions(job: JobView, session: Session, ask: (c: Confirm) => void) {
  const act = (verb: 'pause' | 'resume' | 'cancel') =>
    ask({
      title: `${verb[0]!.toUpperCase()}${verb.slice(1)} job ${job.id}?`,
      body:
        verb === 'pause'
          ? 'Items in flight finish; no new item starts until you resume it. Every finished item stays recorded.'
          : verb === 'resume'
            ? 'It continues from its last finished item.'
            : 'No further item runs. Finished items and their results are kept; this cannot be undone.',
      verb: verb[0]!.toUpperCase() + verb.slice(1),
      danger: verb === 'cancel',
      run: async () => {
        await api(session, 'POST', `/v1/jobs/${encodeURIComponent(job.id)}/${verb}`, {});
        return `Job ${job.id}: ${verb} accepted`;
      },
    });
  return (
    <span class="actions">
      {job.state === 'running' && (
        <button type="button" class="small" onClick={() => act('pause')}>
          Pause…
        </button>
      )}
      {job.state === 'paused' && (
        <button type="button" class="small" onClick={() => act('resume')}>
          Resume…
        </button>
      )}
      {(job.state === 'running' || job.state === 'paused') && (
        <button type="button" class="small" onClick={() => act('cancel')}>
          Cancel…
        </button>
      )}
    </span>
  );
}

function Progress({ job }: { job: JobView }) {
  const pct = job.total === 0 ? 100 : Math.floor((job.done / job.total) * 100);
  return (
    <span class="progress">
      <progress value={job.done} max={job.total} aria-label={`${job.id}: ${pct} %`} data-testid="progress" />
      <span data-testid="percent">
        {job.done} / {job.total} · {pct} %
      </span>
    </span>
  );
}

/** Jobs: newest first, progress live from the feed, refetched when one starts or ends. */
export function JobsView({ model, session, ask }: { model: Model; session: Session; ask: (c: Confirm) => void }) {
  const listed = useFetched(() => api<{ jobs: JobView[] }>(session, 'GET', '/v1/jobs?limit=50'), model.jobsStamp);
  const jobs = (listed.value?.jobs ?? []).map((job) => {
    const live = model.jobs.get(job.id);
    return live && live.updatedAt >= job.updatedAt ? live : job;
  });
  for (const live of model.jobs.values()) if (!jobs.some((j) => j.id === live.id)) jobs.unshift(live);
  return (
    <section class="card" aria-labelledby="jobs-title">
      <header>
        <h2 id="jobs-title">Jobs</h2>
        {listed.error && <span class="error">{listed.error}</span>}
      </header>
      {jobs.length === 0 ? (
        <p class="empty">No jobs yet. Submit one with `understudy jobs submit` or POST /v1/jobs (docs/jobs.md).</p>
      ) : (
        <table class="jobs">
          <thead>
            <tr>
              <th>job</th>
              <th>service</th>
              <th>state</th>
              <th>progress</th>
              <th>rate · ETA</th>
              <th>failed</th>
              <th>started</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {jobs.map((job) => (
              <tr data-testid={`job-${job.id}`} data-state={job.state}>
                <td>
                  <a href={`#/jobs/${encodeURIComponent(job.id)}`}>{job.name ?? job.id}</a>
                </td>
                <td>{job.service}</td>
                <td>
                  <Badge tone={jobTone(job.state)}>{job.state}</Badge>
                  {job.reason && <div class="reason">{job.reason}</div>}
                </td>
                <td>
                  <Progress job={job} />
                </td>
                <td>
                  {job.ratePerSecond ? `${job.ratePerSecond.toFixed(1)} items/s` : '–'}
                  {job.etaSeconds !== null && job.state === 'running' ? ` · ${span(job.etaSeconds * 1000)} left` : ''}
                </td>
                <td>{job.failed}</td>
                <td>
                  <When time={job.createdAt} short />
                </td>
                <td>{jobActions(job, session, ask)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

interface ResultLine {
  index: number;
  state: string;
  status?: number | null;
  instance?: string | null;
  attempts?: number;
  ms?: number;
  size?: number;
  error?: string;
  failedTries?: number;
}

/** One job: its figures, then what each item did and where it ran. */
export function JobPage({ id, model, session, ask }: { id: string; model: Model; session: Session; ask: (c: Confirm) => void }) {
  const live = model.jobs.get(id);
  const fetched = useFetched(() => api<{ job: JobView }>(session, 'GET', `/v1/jobs/${encodeURIComponent(id)}`), `${id}:${model.jobsStamp}`);
  const job = live && (!fetched.value || live.updatedAt >= fetched.value.job.updatedAt) ? live : fetched.value?.job;
  const done = job?.done ?? 0;
  const results = useFetched(
    async () =>
      (await apiText(session, `/v1/jobs/${encodeURIComponent(id)}/results?bodies=0`))
        .split('\n')
        .filter(Boolean)
        .map((line) => JSON.parse(line) as ResultLine),
    `${id}:${Math.floor(done / 25)}:${job?.state}`,
  );
  const [showAll, setShowAll] = useState(false);
  if (!job) return <p class="empty">{fetched.error ?? 'Loading…'}</p>;
  const lines = results.value ?? [];
  const byInstance = new Map<string, number>();
  for (const line of lines) if (line.instance) byInstance.set(line.instance, (byInstance.get(line.instance) ?? 0) + 1);
  const shown = showAll ? lines : lines.slice(0, 200);
  return (
    <section class="card" aria-labelledby="job-title" data-testid="job-page" data-state={job.state}>
      <header>
        <h2 id="job-title">
          <a href="#/jobs">Jobs</a> / {job.name ?? job.id}
        </h2>
        <Badge tone={jobTone(job.state)}>{job.state}</Badge>
        {jobActions(job, session, ask)}
      </header>
      <Progress job={job} />
      <dl class="facts">
        <dt>id</dt>
        <dd>{job.id}</dd>
        <dt>service</dt>
        <dd>{job.service}</dd>
        <dt>succeeded · failed · running</dt>
        <dd>
          {job.succeeded} · {job.failed} · {job.running}
        </dd>
        <dt>rate</dt>
        <dd>{job.ratePerSecond ? `${job.ratePerSecond.toFixed(2)} items/s` : '–'}</dd>
        <dt>left</dt>
        <dd>{job.etaSeconds !== null && job.state === 'running' ? span(job.etaSeconds * 1000) : '–'}</dd>
        <dt>started</dt>
        <dd>
          <When time={job.createdAt} />
        </dd>
        {job.finishedAt && (
          <>
            <dt>ended</dt>
            <dd>
              <When time={job.finishedAt} /> (took {span(job.finishedAt - job.createdAt)})
            </dd>
          </>
        )}
        <dt>items per instance</dt>
        <dd data-testid="per-instance">{[...byInstance].map(([name, n]) => `${name}: ${n}`).join(' · ') || '–'}</dd>
        {job.reason && (
          <>
            <dt>why</dt>
            <dd>{job.reason}</dd>
          </>
        )}
        <dt>results file</dt>
        <dd>{job.outputs.results}</dd>
        {job.outputs.joined && (
          <>
            <dt>joined output</dt>
            <dd>{job.outputs.joined}</dd>
          </>
        )}
      </dl>
      <table class="results">
        <thead>
          <tr>
            <th>item</th>
            <th>state</th>
            <th>status</th>
            <th>instance</th>
            <th>tries</th>
            <th>ms</th>
            <th>size</th>
            <th>error</th>
          </tr>
        </thead>
        <tbody>
          {shown.map((r) => (
            <tr data-state={r.state}>
              <td>{r.index}</td>
              <td>{r.state}</td>
              <td>{r.status ?? '–'}</td>
              <td>{r.instance ?? '–'}</td>
              <td>{r.attempts ?? r.failedTries ?? 0}</td>
              <td>{r.ms ?? '–'}</td>
              <td>{r.size ?? '–'}</td>
              <td>{r.error ?? ''}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {lines.length > shown.length && (
        <button type="button" onClick={() => setShowAll(true)}>
          Show all {lines.length} items
        </button>
      )}
    </section>
  );
}
