import type { InstanceState } from '../core/index.js';
import type { DrillMark, DrillReport, LatencySummary, StateSpan } from './types.js';

// ---------------------------------------------------------------------------
// timeline.svg
// ---------------------------------------------------------------------------

const WIDTH = 960;
const RIGHT = 24;
const FONT_SIZE = 12;
/** Average glyph width of the 12px sans-serif font: labels are laid out without a browser to measure them. */
const CHAR_W = 6.6;
const LANE_H = 22;
const LANE_GAP = 6;
const MARK_ROW_H = 14;
/** More rows than this and the label band dwarfs the lanes; past it, a label goes after the row that ends first. */
const MAX_MARK_ROWS = 4;
const MARK_LABEL_CHARS = 44;
const SCATTER_H = 150;

const STATE_COLOURS: Record<InstanceState, string> = {
  ready: '#2e9e50',
  suspect: '#e8a317',
  down: '#d62828',
  quarantined: '#7a1010',
  starting: '#2f6fdb',
  draining: '#8e5cc7',
  stopped: '#9aa0a6',
};
/** Legend order: the healthy states first, then the trouble, then off. */
const STATE_ORDER: InstanceState[] = ['ready', 'starting', 'draining', 'suspect', 'down', 'quarantined', 'stopped'];

const MARK_COLOURS: Record<DrillMark['kind'], string> = {
  fault: '#d62828',
  detected: '#ee7a00',
  recovered: '#2e9e50',
  lifted: '#2f6fdb',
  restored: '#14632f',
  event: '#6b7280',
};

const OK_COLOUR = '#2e9e50';
const FAILED_COLOUR = '#d62828';
const ACTIVE_COLOUR = '#1f2937';
const TEXT_COLOUR = '#374151';
const MUTED_COLOUR = '#6b7280';
const GRID_COLOUR = '#e5e7eb';

/**
 * The drill as a picture: one lane per instance with its states over time, the probe
 * requests' latencies below, and a dashed line for each mark across both. A standalone
 * SVG document (no scripts, no external fonts or styles) that opens in any browser.
 */
export function renderTimelineSvg(report: DrillReport): string {
  const lanes = laneOrder(report.spans);
  // The label column grows with the longest instance name, within reason; longer names are cut.
  const left = clamp(maxOf(lanes.map((name) => name.length)) * CHAR_W + 16, 110, 220);
  const plotW = WIDTH - left - RIGHT;
  const right = left + plotW;
  const domain = timeDomain(report);
  const x = (t: number): number => left + (clamp(finite(t), 0, domain) / domain) * plotW;
  const on = report.instances.length > 0 ? report.instances.join(', ') : '(no instance)';
  const title = `${report.service}: ${report.fault} on ${on}`;
  const out: string[] = [];

  out.push(el('text', { x: 16, y: 26, 'font-size': 16, 'font-weight': 'bold' }, esc(title)));
  out.push(el('text', { x: 16, y: 46, fill: report.passed ? OK_COLOUR : FAILED_COLOUR }, esc(subtitle(report))));

  // Vertical layout, top to bottom: mark labels (staggered into rows so close marks stay
  // readable), the lanes, the latency panel, the time axis, the legend.
  const labels = placeMarkLabels(report.marks, x, left);
  const marksTop = 62;
  const lanesTop = marksTop + maxOf(labels.map((label) => label.row + 1)) * MARK_ROW_H + 8;
  const lanesH = Math.max(1, lanes.length) * (LANE_H + LANE_GAP) - LANE_GAP;
  const laneY = new Map(lanes.map((name, i) => [name, lanesTop + i * (LANE_H + LANE_GAP)]));
  const scatterTop = lanesTop + lanesH + 18;
  const axisY = scatterTop + SCATTER_H;

  // Time gridlines first, so everything else is drawn over them.
  const step = timeStep(domain);
  for (let i = 0; i * step <= domain; i++) {
    const tx = x(i * step);
    out.push(el('line', { class: 'grid', x1: tx, y1: lanesTop, x2: tx, y2: axisY, stroke: GRID_COLOUR }));
    out.push(el('text', { x: tx, y: axisY + 16, 'text-anchor': 'middle', fill: TEXT_COLOUR }, timeLabel(i * step, step)));
  }
  out.push(el('line', { x1: left, y1: axisY, x2: right, y2: axisY, stroke: MUTED_COLOUR }));
  out.push(
    el('text', { x: left + plotW / 2, y: axisY + 34, 'text-anchor': 'middle', fill: TEXT_COLOUR }, 'time since the drill started'),
  );

  // Lanes.
  if (lanes.length === 0) {
    out.push(el('text', { x: left + 8, y: lanesTop + 15, fill: MUTED_COLOUR }, 'no instance states recorded'));
  }
  for (const [name, y] of laneY) {
    const shown = truncate(name, Math.floor((left - 16) / CHAR_W));
    out.push(el('rect', { x: left, y, width: plotW, height: LANE_H, fill: '#f3f4f6' }));
    out.push(
      el('text', { class: 'lane-label', x: left - 8, y: y + 15, 'text-anchor': 'end' }, tooltip(name) + esc(shown)),
    );
  }
  for (const span of report.spans) {
    const y = laneY.get(span.instance)!;
    const x1 = x(span.from);
    // A span shorter than a pixel still happened: draw it a pixel wide rather than not at all.
    const width = Math.max(1, x(span.to) - x1);
    const tip = `${span.instance}: ${span.state}${span.active ? ', active' : ''}, ${seconds(span.from)}–${seconds(span.to)}`;
    const fill = STATE_COLOURS[span.state] ?? MUTED_COLOUR;
    out.push(el('rect', { class: `span state-${span.state}`, x: x1, y, width, height: LANE_H, fill }, tooltip(tip)));
    if (span.active) {
      out.push(el('rect', { class: 'active', x: x1, y: y + LANE_H - 5, width, height: 5, fill: ACTIVE_COLOUR }));
    }
  }

  // Probe requests: latency over time.
  out.push(el('rect', { x: left, y: scatterTop, width: plotW, height: SCATTER_H, fill: '#fafafa', stroke: '#d1d5db' }));
  out.push(el('text', { x: left - 8, y: scatterTop - 4, 'text-anchor': 'end', fill: TEXT_COLOUR }, 'latency'));
  const latencies = report.samples.map((s) => Math.max(0, finite(s.endedAt - s.sentAt)));
  // Headroom so the slowest request is not drawn on the panel's edge.
  const top = Math.max(1, maxOf(latencies)) * 1.08;
  const y = (ms: number): number => axisY - (ms / top) * SCATTER_H;
  if (report.samples.length === 0) {
    const at = { x: left + plotW / 2, y: scatterTop + SCATTER_H / 2, 'text-anchor': 'middle', fill: MUTED_COLOUR };
    out.push(el('text', at, 'no probe requests'));
  } else {
    const gridStep = niceStep(top / 3);
    for (let i = 0; i * gridStep <= top; i++) {
      const v = i * gridStep;
      if (v > 0) out.push(el('line', { x1: left, y1: y(v), x2: right, y2: y(v), stroke: GRID_COLOUR }));
      out.push(el('text', { x: left - 8, y: y(v) + 4, 'text-anchor': 'end', fill: TEXT_COLOUR }, latencyLabel(v)));
    }
  }
  report.samples.forEach((sample, i) => {
    const sx = x(sample.sentAt);
    const sy = y(latencies[i]!);
    if (sample.ok) {
      out.push(el('circle', { class: 'ok', cx: sx, cy: sy, r: 2.5, fill: OK_COLOUR, 'fill-opacity': 0.7 }));
    } else {
      const status = sample.status === null ? '' : ` (HTTP ${sample.status})`;
      const why = `${sample.error ?? 'failed'}${status} at ${seconds(sample.sentAt)}`;
      out.push(el('path', { class: 'failed', ...cross(sx, sy) }, tooltip(why)));
    }
  });

  // Marks last, over everything they cross.
  for (const label of labels) {
    const { kind, at } = label.mark;
    const colour = MARK_COLOURS[kind] ?? MARK_COLOURS.event;
    const ly = marksTop + label.row * MARK_ROW_H;
    out.push(
      el('line', {
        class: `mark mark-${kind}`,
        x1: label.x,
        y1: ly - 10,
        x2: label.x,
        y2: axisY,
        stroke: colour,
        'stroke-width': 1.5,
        'stroke-dasharray': '5 3',
      }),
    );
    const tip = tooltip(`${kind} at ${seconds(at)}: ${label.mark.label}`);
    const attrs = { class: 'mark-label', x: label.textX, y: ly, 'text-anchor': label.anchor, fill: colour };
    out.push(el('text', attrs, tip + esc(label.text)));
  }

  // Legend: only the states that appear, so it explains this picture rather than every possible one.
  const seen = new Set(report.spans.map((s) => s.state));
  const items: { swatch: (sx: number, sy: number) => string; text: string }[] = STATE_ORDER.filter((state) =>
    seen.has(state),
  ).map((state) => ({
    swatch: (sx, sy) => el('rect', { x: sx, y: sy - 9, width: 14, height: 10, fill: STATE_COLOURS[state] }),
    text: state,
  }));
  if (report.spans.some((s) => s.active)) {
    items.push({
      swatch: (sx, sy) => el('rect', { x: sx, y: sy - 3, width: 14, height: 5, fill: ACTIVE_COLOUR }),
      text: 'carried the traffic',
    });
  }
  items.push(
    { swatch: (sx, sy) => el('circle', { cx: sx + 7, cy: sy - 4, r: 3, fill: OK_COLOUR }), text: 'request ok' },
    { swatch: (sx, sy) => el('path', cross(sx + 7, sy - 4)), text: 'request failed' },
  );
  let lx = 16;
  let ly = axisY + 52;
  for (const item of items) {
    const w = 14 + 6 + item.text.length * CHAR_W + 18;
    if (lx + w > WIDTH - RIGHT && lx > 16) {
      lx = 16;
      ly += 18;
    }
    out.push(item.swatch(lx, ly));
    out.push(el('text', { x: lx + 20, y: ly, fill: TEXT_COLOUR }, esc(item.text)));
    lx += w;
  }

  const height = Math.ceil(ly + 14);
  const root = {
    xmlns: 'http://www.w3.org/2000/svg',
    width: WIDTH,
    height,
    viewBox: `0 0 ${WIDTH} ${height}`,
    'font-family': 'system-ui, -apple-system, Segoe UI, sans-serif',
    'font-size': FONT_SIZE,
    role: 'img',
  };
  const body = [
    el('title', {}, esc(title)),
    // An explicit background: a transparent SVG is unreadable in a browser's dark mode.
    el('rect', { width: WIDTH, height, fill: '#ffffff' }),
    ...out,
  ];
  return `<?xml version="1.0" encoding="UTF-8"?>\n${el('svg', root, `\n${body.join('\n')}\n`)}\n`;
}

type Attrs = Record<string, string | number>;

/**
 * One element. Attribute values are escaped and numbers rounded here, so no caller can
 * break the document or write a 17-digit float; `content` is markup, already escaped.
 */
function el(name: string, attrs: Attrs, content?: string): string {
  const written = Object.entries(attrs)
    .map(([key, value]) => ` ${key}="${typeof value === 'number' ? num(value) : esc(value)}"`)
    .join('');
  return content === undefined ? `<${name}${written}/>` : `<${name}${written}>${content}</${name}>`;
}

/** A browser shows an element's first <title> child on hover: the full text behind a cut label, a request's error. */
function tooltip(text: string): string {
  return el('title', {}, esc(text));
}

/** The red × of a failed request, centred on (cx, cy). */
function cross(cx: number, cy: number): Attrs {
  const [l, r, t, b] = [num(cx - 4), num(cx + 4), num(cy - 4), num(cy + 4)];
  return { d: `M${l} ${t}L${r} ${b}M${l} ${b}L${r} ${t}`, stroke: FAILED_COLOUR, 'stroke-width': 2 };
}

function subtitle(report: DrillReport): string {
  const recovered = report.recoveredMs === null ? 'never recovered' : `recovered in ${formatMs(report.recoveredMs)}`;
  const lost = report.job === null ? 'no job' : `lost items ${report.job.lost}`;
  return `${report.passed ? 'PASSED' : 'FAILED'} · ${recovered} · failed requests ${report.requests.failed} · ${lost}`;
}

/** Instances in the order they first appear in the spans, which is the order the drill met them. */
function laneOrder(spans: StateSpan[]): string[] {
  return [...new Set(spans.map((s) => s.instance))];
}

/**
 * The x axis runs over the drill's duration, stretched to anything recorded past it (a
 * request that ended after the last span) so nothing is clipped, and never zero wide.
 */
function timeDomain(report: DrillReport): number {
  const times = [
    report.durationMs,
    ...report.spans.map((s) => s.to),
    ...report.samples.map((s) => s.sentAt),
    ...report.marks.map((m) => m.at),
  ].map(finite);
  const end = maxOf(times);
  return end > 0 ? end : 1000;
}

/** Tick steps (ms) people read easily; the first that gives at most 12 ticks wins, which leaves at least 5. */
const TIME_STEPS = [
  1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000,
  900_000, 1_800_000, 3_600_000,
];

function timeStep(domain: number): number {
  for (const step of TIME_STEPS) if (Math.floor(domain / step) + 1 <= 12) return step;
  return Math.ceil(domain / 11 / 3_600_000) * 3_600_000;
}

function timeLabel(ms: number, step: number): string {
  const decimals = step < 10 ? 3 : step < 100 ? 2 : step < 1000 ? 1 : 0;
  return `${(ms / 1000).toFixed(decimals)} s`;
}

/** The smallest 1, 2 or 5 × 10ⁿ at least `raw`. */
function niceStep(raw: number): number {
  const power = 10 ** Math.floor(Math.log10(Math.max(raw, 1e-9)));
  for (const m of [1, 2, 5, 10]) if (m * power >= raw) return m * power;
  return 10 * power;
}

function latencyLabel(ms: number): string {
  if (ms < 1000) return `${round(ms, 1)} ms`;
  return `${round(ms / 1000, 2)} s`;
}

interface PlacedLabel {
  mark: DrillMark;
  /** Where the mark's line is drawn. */
  x: number;
  text: string;
  /** Where the label is written, and which end of it sits there. */
  textX: number;
  anchor: 'start' | 'end';
  row: number;
}

/**
 * Put each mark's label in the first row where it does not run into the label before
 * it. A label that would leave the picture on the right is written to the left of its
 * line instead. When every row is taken (a burst of marks), the label goes after the
 * row that ends first, away from its line but readable; its colour ties it to the line.
 */
function placeMarkLabels(marks: DrillMark[], x: (t: number) => number, left: number): PlacedLabel[] {
  const rowEnds: number[] = [];
  return [...marks]
    .sort((a, b) => a.at - b.at)
    .map((mark) => {
      const text = truncate(mark.label, MARK_LABEL_CHARS);
      const px = x(mark.at);
      const w = text.length * CHAR_W + 6;
      let anchor: 'start' | 'end' = px + w > WIDTH - 4 && px - w >= left - 8 ? 'end' : 'start';
      let from = anchor === 'start' ? px : px - w;
      let row = rowEnds.findIndex((end) => end + 4 <= from);
      if (row === -1 && rowEnds.length < MAX_MARK_ROWS) row = rowEnds.length;
      if (row === -1) {
        row = rowEnds.indexOf(Math.min(...rowEnds));
        const after = rowEnds[row]! + 4;
        if (after + w <= WIDTH - 4) {
          anchor = 'start';
          from = after;
        }
      }
      rowEnds[row] = from + w;
      const textX = anchor === 'start' ? from + 3 : px - 3;
      return { mark, x: px, text, textX, anchor, row };
    });
}

/** Escapes text for XML, and replaces the control characters XML 1.0 cannot hold at all (an error message may carry one). */
function esc(text: string): string {
  return text
    .replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]/g, '\ufffd')
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&apos;');
}

/** A coordinate with one decimal: enough for a screen, and no 17-digit floats in the file. */
function num(n: number): number {
  return round(finite(n), 1);
}

function round(n: number, decimals: number): number {
  const f = 10 ** decimals;
  // `+ 0` turns -0 into 0, so no "-0" attribute shows up.
  return Math.round(n * f) / f + 0;
}

/** The largest of the numbers, 0 for none; unlike Math.max(...xs) it does not overflow the stack on a long drill's samples. */
function maxOf(values: number[]): number {
  let max = 0;
  for (const v of values) if (v > max) max = v;
  return max;
}

function finite(n: number): number {
  return Number.isFinite(n) ? n : 0;
}

function clamp(n: number, lo: number, hi: number): number {
  return Math.min(hi, Math.max(lo, n));
}

function truncate(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, Math.max(1, max - 1))}…`;
}

function seconds(ms: number): string {
  return `${(finite(ms) / 1000).toFixed(3)} s`;
}

// ---------------------------------------------------------------------------
// report.md
// ---------------------------------------------------------------------------

/**
 * The drill for a person to read: what was done, whether it passed, the figures, and
 * the timeline picture. `files` are names relative to the markdown file (it embeds
 * `files.svg` and points to `files.json` for the full data).
 */
export function renderReportMarkdown(report: DrillReport, files: { svg: string; json: string }): string {
  const lines: string[] = [];
  const on = report.instances.length > 0 ? report.instances.map(md).join(', ') : '(no instance)';
  const started = Number.isFinite(report.startedAt) ? new Date(report.startedAt).toISOString() : 'unknown';

  lines.push(`# Drill: ${md(report.service)}, ${md(report.fault)} on ${on}`);
  lines.push('');
  lines.push(
    `Started ${started} (${report.trigger}), lasted ${formatMs(report.durationMs)}; the fault began at +${seconds(report.faultAt)}${
      report.liftedAt === null ? '' : ` and was lifted at +${seconds(report.liftedAt)}`
    }. Drill ${md(report.id)}.`,
  );
  lines.push('');
  lines.push(`**${report.passed ? 'PASSED' : 'FAILED'}**: ${md(report.verdict)}`);
  lines.push('');

  lines.push('## Figures');
  lines.push('');
  lines.push('| | |');
  lines.push('|---|---|');
  lines.push(`| Detected (fault → taken out of service) | ${orNever(report.detectedMs)} |`);
  lines.push(`| Recovered (fault → first good answer from another instance) | ${orNever(report.recoveredMs)} |`);
  lines.push(`| Restored (fault → back as before) | ${orNever(report.restoredMs)} |`);
  const r = report.requests;
  lines.push(`| Requests sent / ok / failed | ${r.sent} / ${r.ok} / ${r.failed} |`);
  for (const key of ['p50', 'p99', 'max'] as const) {
    lines.push(`| Latency ${key} before / during | ${latency(r.before, key)} / ${latency(r.during, key)} |`);
  }
  const job = report.job;
  lines.push(
    job === null
      ? '| Job | no job |'
      : `| Job ${md(job.id)}: items / succeeded / lost / unfinished / redone | ${job.items} / ${job.succeeded} / ${job.lost} / ${job.unfinished} / ${job.redone} |`,
  );
  lines.push('');

  if (r.failures.length > 0) {
    lines.push('## First failures');
    lines.push('');
    for (const failure of r.failures) lines.push(`- ${md(failure)}`);
    if (r.failed > r.failures.length) lines.push(`- … and ${r.failed - r.failures.length} more`);
    lines.push('');
  }

  lines.push('## State before and after');
  lines.push('');
  lines.push(`Active instance: ${activeName(report.before.active)} before, ${activeName(report.after.active)} after.`);
  lines.push('');
  lines.push('| Instance | Before | After |');
  lines.push('|---|---|---|');
  const names = [...new Set([...Object.keys(report.before.states), ...Object.keys(report.after.states)])];
  for (const name of names) {
    const before = stateCell(report.before.states[name], name === report.before.active);
    const after = stateCell(report.after.states[name], name === report.after.active);
    // A state the drill did not give back is what a reader looks for: make it stand out.
    lines.push(`| ${md(name)} | ${before} | ${after === before ? after : `**${after}**`} |`);
  }
  lines.push('');

  if (report.notes.length > 0) {
    lines.push('## Notes');
    lines.push('');
    for (const note of report.notes) lines.push(`- ${md(note)}`);
    lines.push('');
  }

  lines.push('## Timeline');
  lines.push('');
  if (report.marks.length === 0) lines.push('Nothing marked.');
  for (const mark of [...report.marks].sort((a, b) => a.at - b.at)) {
    lines.push(`- \`+${seconds(mark.at)}\`  ${mark.kind}: ${md(mark.label)}`);
  }
  lines.push('');
  lines.push(`![timeline](${linkTarget(files.svg)})`);
  lines.push('');
  lines.push(`Every probe request, state span and mark is in ${md(files.json)}.`);
  lines.push('');
  return lines.join('\n');
}

function orNever(ms: number | null): string {
  return ms === null ? 'never' : formatMs(ms);
}

function latency(summary: LatencySummary, key: keyof LatencySummary): string {
  const ms = summary[key];
  return ms === null ? '—' : `${round(finite(ms), 1)} ms`;
}

function formatMs(ms: number): string {
  const n = Math.round(finite(ms));
  return n < 10_000 ? `${n} ms` : `${n} ms (${round(n / 1000, 1)} s)`;
}

function activeName(name: string | null): string {
  return name === null ? 'none' : md(name);
}

function stateCell(state: InstanceState | undefined, active: boolean): string {
  if (state === undefined) return '—';
  return active ? `${state} (active)` : state;
}

/**
 * Makes text from the report (names, error messages, notes) literal markdown: no
 * emphasis, links, HTML or table cells it did not mean, and on one line.
 */
function md(text: string): string {
  return text
    .replace(/\s*[\r\n]+\s*/g, ' ')
    .replace(/[\\`*_[\]<>|~&]/g, '\\$&')
    .replace(/^(?=(#{1,6}|[+-])(\s|$))/, '\\')
    .replace(/^(\d+)([.)])/, '$1\\$2');
}

/** A relative file name as a link target: spaces and brackets would end the link early. */
function linkTarget(file: string): string {
  return encodeURI(file).replace(/\(/g, '%28').replace(/\)/g, '%29');
}
