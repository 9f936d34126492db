import type { ComponentChildren } from 'preact';
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import uPlot from 'uplot';
import { api, type Session } from './api.js';
import { ago, fullTime, localTime, serverNow, type Tone } from './format.js';
import { CHART_SECONDS, type Model, type TrafficSecond } from './model.js';

/** A state in words, coloured by its tone; the word alone says it (colour is never the only sign). */
export function Badge({ tone, children, testid }: { tone: Tone; children: ComponentChildren; testid?: string }) {
  return (
    <span class={`badge ${tone}`} data-testid={testid} data-tone={tone}>
      <span class="dot" aria-hidden="true" />
      {children}
    </span>
  );
}

/** "14:02:11 · 3 s ago", the full date in the tooltip. */
export function When({ time, short }: { time: number; short?: boolean }) {
  return (
    <time dateTime={new Date(time).toISOString()} title={fullTime(time)}>
      {short ? ago(time) : `${localTime(time)} · ${ago(time)}`}
    </time>
  );
}

/**
 * Latency (p50, p95, ms) and error rate (%) of one instance over the last two
 * minutes, from the gateway's own per-second figures: uPlot draws it.
 */
export function TrafficChart({ seconds, label }: { seconds: TrafficSecond[] | undefined; label: string }) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | undefined>(undefined);
  // The window moves once a second and the series grows by a second: redraw on those, not on every render.
  const end = Math.floor(serverNow() / 1000);
  const data = useMemo(() => chartData(seconds, end), [seconds, seconds?.length, seconds?.at(-1)?.t, end]);
  useEffect(() => {
    const element = box.current!;
    const options: uPlot.Options = {
      width: Math.max(160, element.clientWidth),
      height: 64,
      legend: { show: false },
      cursor: { show: false },
      scales: { x: { time: true }, ms: { range: (_u, _min, max) => [0, Math.max(1, max ?? 1) * 1.1] }, pct: { range: [0, 100] } },
      axes: [
        { show: false },
        { scale: 'ms', size: 36, font: '10px system-ui', ticks: { show: false }, values: (_u, splits) => splits.map((v) => `${v}ms`), splits: (_u, _i, _min, max) => [0, Math.round(max / 1.1)] },
      ],
      series: [
        {},
        // Points too: a second with traffic between quiet ones is a dot, not nothing.
        { label: 'p50 ms', scale: 'ms', stroke: '#2f6fdf', width: 1.5, points: { show: true, size: 3 } },
        { label: 'p95 ms', scale: 'ms', stroke: '#8a5cd6', width: 1, dash: [4, 3], points: { show: true, size: 2 } },
        { label: 'errors %', scale: 'pct', stroke: '#c8321e', fill: 'rgba(200,50,30,0.15)', width: 1 },
      ],
    };
    plot.current = new uPlot(options, data, element);
    const resize = new ResizeObserver(() => plot.current?.setSize({ width: Math.max(160, element.clientWidth), height: 64 }));
    resize.observe(element);
    return () => {
      resize.disconnect();
      plot.current?.destroy();
    };
  }, []);
  useEffect(() => plot.current?.setData(data), [data]);
  const latest = seconds?.[seconds.length - 1];
  const recent = latest && serverNow() / 1000 - latest.t < 5 ? latest : undefined;
  return (
    <figure class="chart" aria-label={`${label}: latency and error rate, last two minutes`}>
      <div ref={box} />
      <figcaption>
        {recent ? `${recent.n} req/s · p50 ${recent.p50 ?? '–'} ms · p95 ${recent.p95 ?? '–'} ms · errors ${Math.round((recent.errors / recent.n) * 100)} %` : 'no traffic in the last seconds'}
      </figcaption>
    </figure>
  );
}

function chartData(seconds: TrafficSecond[] | undefined, end: number): uPlot.AlignedData {
  const byT = new Map((seconds ?? []).map((s) => [s.t, s]));
  const xs: number[] = [];
  const p50: (number | null)[] = [];
  const p95: (number | null)[] = [];
  const errors: (number | null)[] = [];
  for (let t = end - CHART_SECONDS; t < end; t += 1) {
    const s = byT.get(t);
    xs.push(t);
    p50.push(s?.p50 ?? null);
    p95.push(s?.p95 ?? null);
    errors.push(s ? (s.errors / s.n) * 100 : null);
  }
  return [xs, p50, p95, errors];
}

export interface Confirm {
  title: string;
  body: string;
  verb: string;
  danger?: boolean;
  /** Form fields shown in the dialog, e.g. a target instance. */
  fields?: ComponentChildren;
  run: (form: FormData) => Promise<string>;
}

/** Every action asks first, in a real modal dialog (Escape cancels, focus stays inside). */
export function ConfirmDialog({ confirm, model, onDone }: { confirm: Confirm | undefined; model: Model; onDone: () => void }) {
  const dialog = useRef<HTMLDialogElement>(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    if (confirm && !dialog.current!.open) dialog.current!.showModal();
    if (!confirm && dialog.current!.open) dialog.current!.close();
  }, [confirm]);
  const submit = async (e: Event) => {
    e.preventDefault();
    if (!confirm) return;
    setBusy(true);
    try {
      model.toast('good', await confirm.run(new FormData(e.target as HTMLFormElement)));
    } catch (error) {
      model.toast('bad', `${confirm.verb} refused: ${(error as Error).message}`);
    } finally {
      setBusy(false);
      onDone();
    }
  };
  return (
    <dialog ref={dialog} onClose={onDone} aria-labelledby="confirm-title" data-testid="confirm">
      {confirm && (
        <form method="dialog" onSubmit={submit}>
          <h2 id="confirm-title">{confirm.title}</h2>
          <p>{confirm.body}</p>
          {confirm.fields}
          <div class="buttons">
            <button type="button" onClick={onDone}>
              Cancel
            </button>
            <button type="submit" class={confirm.danger ? 'danger' : 'primary'} disabled={busy} autofocus>
              {busy ? 'Working…' : confirm.verb}
            </button>
          </div>
        </form>
      )}
    </dialog>
  );
}

/** The log lines Understudy kept for one request or trace id. */
export function LogsDialog({ id, session, onDone }: { id: string | undefined; session: Session; onDone: () => void }) {
  const dialog = useRef<HTMLDialogElement>(null);
  const [lines, setLines] = useState<{ lines: Record<string, unknown>[]; access: boolean } | string>('Loading…');
  useEffect(() => {
    if (!id) {
      if (dialog.current!.open) dialog.current!.close();
      return;
    }
    dialog.current!.showModal();
    setLines('Loading…');
    api<{ lines: Record<string, unknown>[]; access: boolean }>(session, 'GET', `/v1/logs?request=${encodeURIComponent(id)}`).then(setLines, (error: Error) => setLines(error.message));
  }, [id]);
  return (
    <dialog ref={dialog} onClose={onDone} class="wide" aria-labelledby="logs-title">
      <h2 id="logs-title">Log lines for {id}</h2>
      {typeof lines === 'string' ? (
        <p>{lines}</p>
      ) : lines.lines.length === 0 ? (
        <p>No log lines mention it{lines.access ? '' : ' (answered requests are logged only with log.access: true; failed ones always are)'}.</p>
      ) : (
        <pre class="logs">{lines.lines.map((line) => JSON.stringify(line)).join('\n')}</pre>
      )}
      <div class="buttons">
        <button type="button" onClick={onDone} autofocus>
          Close
        </button>
      </div>
    </dialog>
  );
}

export function Toasts({ model }: { model: Model }) {
  return (
    <div class="toasts" role="status" aria-live="polite">
      {model.toasts.map((t) => (
        <div key={t.id} class={`toast ${t.tone}`}>
          {t.text}
        </div>
      ))}
    </div>
  );
}

/** Fetches `load()` again whenever `stamp` changes (a matching event arrived): no polling. */
export function useFetched<T>(load: () => Promise<T>, stamp: unknown): { value: T | undefined; error: string | undefined } {
  const [state, setState] = useState<{ value: T | undefined; error: string | undefined }>({ value: undefined, error: undefined });
  useEffect(() => {
    let current = true;
    const timer = setTimeout(() => {
      load().then(
        (value) => current && setState({ value, error: undefined }),
        (error: Error) => current && setState((s) => ({ value: s.value, error: error.message })),
      );
    }, 100);
    return () => {
      current = false;
      clearTimeout(timer);
    };
  }, [stamp]);
  return state;
}
