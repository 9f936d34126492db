import { describe, expect, it } from 'vitest';
import { renderReportMarkdown, renderTimelineSvg } from '../../src/drill/render.js';
import type { DrillReport, ProbeSample } from '../../src/drill/types.js';

/**
 * A kill of the primary at +4 s: the hot standby carries the traffic from +4.62 s, the
 * primary restarts and takes the traffic back at +8.2 s. A request every 100 ms; the few
 * sent while the primary was dead wait for the failover and come back slow.
 */
function killReport(): DrillReport {
  const samples: ProbeSample[] = [];
  for (let sentAt = 0; sentAt < 14_000; sentAt += 100) {
    const held = sentAt >= 4_000 && sentAt < 4_620;
    const latency = held ? 4_660 - sentAt : 38 + (sentAt % 700) / 100;
    const onHot = sentAt >= 4_000 && sentAt < 8_200;
    samples.push({
      sentAt,
      endedAt: sentAt + latency,
      status: 200,
      instance: onHot ? 'tts-hot' : 'tts-primary',
      ok: true,
      error: null,
    });
  }
  return {
    id: 'drill-20250301-1',
    service: 'tts',
    fault: 'kill',
    instances: ['tts-primary'],
    trigger: 'manual',
    startedAt: Date.UTC(2025, 2, 1, 10, 0, 0),
    durationMs: 14_000,
    faultAt: 4_000,
    liftedAt: null,
    passed: true,
    aborted: false,
    verdict: 'no request failed, the job lost nothing, tts-primary active again after 8200 ms',
    detectedMs: 620,
    recoveredMs: 640,
    restoredMs: 4_200,
    requests: {
      sent: samples.length,
      ok: samples.length,
      failed: 0,
      failures: [],
      before: { p50: 41, p99: 44.6, max: 44.9 },
      during: { p50: 42, p99: 640, max: 660 },
    },
    job: { id: 'job-7', items: 40, succeeded: 40, lost: 0, unfinished: 0, redone: 2 },
    before: { active: 'tts-primary', states: { 'tts-primary': 'ready', 'tts-hot': 'ready', 'tts-cold': 'stopped' } },
    after: { active: 'tts-primary', states: { 'tts-primary': 'ready', 'tts-hot': 'ready', 'tts-cold': 'stopped' } },
    samples,
    spans: [
      { instance: 'tts-primary', state: 'ready', from: 0, to: 4_300, active: true },
      { instance: 'tts-hot', state: 'ready', from: 0, to: 4_620, active: false },
      { instance: 'tts-cold', state: 'stopped', from: 0, to: 14_000, active: false },
      { instance: 'tts-primary', state: 'suspect', from: 4_300, to: 4_620, active: true },
      { instance: 'tts-primary', state: 'down', from: 4_620, to: 5_100, active: false },
      { instance: 'tts-hot', state: 'ready', from: 4_620, to: 8_200, active: true },
      { instance: 'tts-primary', state: 'starting', from: 5_100, to: 7_900, active: false },
      { instance: 'tts-primary', state: 'ready', from: 7_900, to: 8_200, active: false },
      { instance: 'tts-primary', state: 'ready', from: 8_200, to: 14_000, active: true },
      { instance: 'tts-hot', state: 'ready', from: 8_200, to: 14_000, active: false },
    ],
    marks: [
      { at: 4_000, kind: 'fault', label: 'kill tts-primary (pid 4242)' },
      { at: 4_620, kind: 'detected', label: 'tts-primary down' },
      { at: 4_640, kind: 'recovered', label: 'first answer from tts-hot' },
      { at: 8_200, kind: 'restored', label: 'tts-primary active again' },
    ],
    notes: ['tts-primary took 2.8 s to start again'],
  };
}

/** The same drill, but the gateway was slow to notice: two requests failed. */
function failingReport(): DrillReport {
  const report = killReport();
  const failedAt = [4_100, 4_200];
  report.samples = report.samples.map((s) =>
    failedAt.includes(s.sentAt)
      ? { ...s, endedAt: s.sentAt + 300, status: null, instance: null, ok: false, error: 'connect ECONNREFUSED 127.0.0.1:9001' }
      : s,
  );
  report.passed = false;
  report.verdict = '2 requests failed';
  report.restoredMs = null;
  report.requests = {
    ...report.requests,
    ok: report.requests.sent - 2,
    failed: 2,
    failures: ['+4.100 s: connect ECONNREFUSED 127.0.0.1:9001', '+4.200 s: connect ECONNREFUSED 127.0.0.1:9001'],
  };
  report.after = { active: 'tts-hot', states: { 'tts-primary': 'down', 'tts-hot': 'ready', 'tts-cold': 'stopped' } };
  return report;
}

function emptyReport(): DrillReport {
  return {
    ...killReport(),
    durationMs: 0,
    detectedMs: null,
    recoveredMs: null,
    restoredMs: null,
    requests: {
      sent: 0,
      ok: 0,
      failed: 0,
      failures: [],
      before: { p50: null, p99: null, max: null },
      during: { p50: null, p99: null, max: null },
    },
    job: null,
    samples: [],
    spans: [],
    marks: [],
    notes: [],
  };
}

interface Element {
  name: string;
  attrs: Record<string, string>;
}

/**
 * A strict little XML checker, since the project has no XML parser: every tag is a
 * name with double-quoted attributes holding no raw `<` or `"`, every opened element is
 * closed in order, one root, and `&` only starts an entity. Returns the elements.
 */
function parseXml(xml: string): Element[] {
  const elements: Element[] = [];
  const open: string[] = [];
  let roots = 0;
  const body = xml.replace(/^<\?xml [^?]*\?>\s*/, '');
  expect(body).not.toMatch(/&(?!(amp|lt|gt|quot|apos|#\d+|#x[0-9a-f]+);)/i);
  let at = 0;
  while (at < body.length) {
    const lt = body.indexOf('<', at);
    if (lt === -1) {
      expect(body.slice(at).trim(), 'text after the root').toBe('');
      break;
    }
    const text = body.slice(at, lt);
    expect(text.includes('>'), `raw > in text: ${text}`).toBe(false);
    if (open.length === 0) expect(text.trim(), 'text outside the root').toBe('');
    const gt = body.indexOf('>', lt);
    expect(gt, 'unterminated tag').toBeGreaterThan(lt);
    const tag = body.slice(lt, gt + 1);
    at = gt + 1;
    const close = /^<\/([a-zA-Z][\w:-]*)\s*>$/.exec(tag);
    if (close) {
      expect(open.pop(), `closing ${close[1]}`).toBe(close[1]);
      continue;
    }
    const m = /^<([a-zA-Z][\w:-]*)((?:\s+[a-zA-Z][\w:-]*="[^"<]*")*)\s*(\/?)>$/.exec(tag);
    expect(m, `malformed tag: ${tag}`).not.toBeNull();
    const [, name, attrText, selfClosing] = m!;
    const attrs: Record<string, string> = {};
    for (const a of attrText!.matchAll(/([a-zA-Z][\w:-]*)="([^"]*)"/g)) {
      expect(attrs[a[1]!], `attribute ${a[1]} twice in ${tag}`).toBeUndefined();
      attrs[a[1]!] = a[2]!;
    }
    elements.push({ name: name!, attrs });
    if (open.length === 0) roots++;
    if (!selfClosing) open.push(name!);
  }
  expect(open, 'unclosed elements').toEqual([]);
  expect(roots).toBe(1);
  return elements;
}

const byClass = (elements: Element[], cls: string): Element[] =>
  elements.filter((e) => (e.attrs.class ?? '').split(' ').includes(cls));

/** The text of every element with the class, tags inside it (a <title>) removed. */
const textsOf = (svg: string, cls: string): string[] =>
  [...svg.matchAll(new RegExp(`<text class="${cls}"[^>]*>(?:<title>[^<]*</title>)?([^<]*)</text>`, 'g'))].map((m) => m[1]!);

describe('timeline svg', () => {
  it('draws a lane per instance, a dot per ok request and a line per mark, as well-formed XML', () => {
    const report = killReport();
    const svg = renderTimelineSvg(report);
    const elements = parseXml(svg);

    const root = elements[0]!;
    expect(root.name).toBe('svg');
    expect(root.attrs.xmlns).toBe('http://www.w3.org/2000/svg');
    expect(Number(root.attrs.width)).toBe(960);

    // Lanes in the order the instances first appear in the spans.
    expect(textsOf(svg, 'lane-label')).toEqual(['tts-primary', 'tts-hot', 'tts-cold']);
    expect(byClass(elements, 'span')).toHaveLength(report.spans.length);
    expect(byClass(elements, 'active')).toHaveLength(report.spans.filter((s) => s.active).length);
    expect(byClass(elements, 'state-down')[0]!.attrs.fill).toBe('#d62828');

    expect(byClass(elements, 'ok')).toHaveLength(report.samples.length);
    expect(byClass(elements, 'failed')).toHaveLength(0);

    const lines = byClass(elements, 'mark');
    expect(lines.map((l) => l.attrs.class)).toEqual(['mark mark-fault', 'mark mark-detected', 'mark mark-recovered', 'mark mark-restored']);
    expect(lines.every((l) => l.attrs['stroke-dasharray'] !== undefined)).toBe(true);
    expect(textsOf(svg, 'mark-label')).toEqual(report.marks.map((m) => m.label));

    // detected and recovered are 20 ms apart: their labels must not share a row.
    const labelY = byClass(elements, 'mark-label').map((e) => e.attrs.y);
    expect(labelY[1]).not.toBe(labelY[2]);

    expect(svg).toContain('tts: kill on tts-primary');
    expect(svg).toContain('PASSED · recovered in 640 ms · failed requests 0 · lost items 0');
  });

  it('spreads the labels of a burst of marks so each stays readable', () => {
    const report = killReport();
    report.marks = Array.from({ length: 7 }, (_, i) => ({ at: 4_600 + i * 10, kind: 'event' as const, label: `event number ${i}` }));
    report.marks.push({ at: 13_990, kind: 'lifted', label: 'a label at the right edge' });
    const labels = byClass(parseXml(renderTimelineSvg(report)), 'mark-label');
    // Estimated extents (6.6 px a character, as the renderer assumes): no two on one row overlap.
    const boxes = labels.map((l, i) => {
      const w = (i < 7 ? 'event number 0' : 'a label at the right edge').length * 6.6;
      const x = Number(l.attrs.x);
      return { y: l.attrs.y, from: l.attrs['text-anchor'] === 'end' ? x - w : x, to: l.attrs['text-anchor'] === 'end' ? x : x + w };
    });
    for (const [i, a] of boxes.entries()) {
      expect(a.from).toBeGreaterThanOrEqual(0);
      expect(a.to).toBeLessThanOrEqual(960);
      for (const b of boxes.slice(i + 1)) if (a.y === b.y) expect(a.to <= b.from || b.to <= a.from, `${i}`).toBe(true);
    }
  });

  it('puts a mark at its time and a sample at its latency', () => {
    const report = killReport();
    const elements = parseXml(renderTimelineSvg(report));
    const fault = byClass(elements, 'mark-fault')[0]!;
    const restored = byClass(elements, 'mark-restored')[0]!;
    const axis = byClass(elements, 'grid').map((g) => Number(g.attrs.x1));
    // Ticks every 2 s over 14 s: 0, 2, ..., 14.
    expect(axis).toHaveLength(8);
    const perSecond = (axis[1]! - axis[0]!) / 2;
    expect(Number(fault.attrs.x1)).toBeCloseTo(axis[0]! + 4 * perSecond, 0);
    expect(Number(restored.attrs.x1)).toBeCloseTo(axis[0]! + 8.2 * perSecond, 0);

    // The slowest request (held through the failover) is the highest dot, the usual ones sit low.
    const dots = byClass(elements, 'ok').map((d) => Number(d.attrs.cy));
    const slowest = report.samples.findIndex((s) => s.sentAt === 4_000);
    expect(dots[slowest]).toBe(Math.min(...dots));
    expect(dots[0]! - dots[slowest]!).toBeGreaterThan(100);
  });

  it('keeps numbers short', () => {
    const elements = parseXml(renderTimelineSvg(killReport()));
    for (const e of elements) {
      for (const [name, value] of Object.entries(e.attrs)) {
        expect(value, `${e.name} ${name}`).not.toMatch(/\d\.\d{2,}/);
        expect(value, `${e.name} ${name}`).not.toMatch(/NaN|Infinity/);
      }
    }
  });

  it('draws a red cross for each failed request, with its error, and says FAILED', () => {
    const report = failingReport();
    const svg = renderTimelineSvg(report);
    const elements = parseXml(svg);
    const crosses = byClass(elements, 'failed');
    expect(crosses).toHaveLength(2);
    expect(crosses.every((c) => c.name === 'path' && c.attrs.stroke === '#d62828')).toBe(true);
    expect(byClass(elements, 'ok')).toHaveLength(report.samples.length - 2);
    expect(svg).toContain('connect ECONNREFUSED 127.0.0.1:9001');
    expect(svg).toContain('FAILED · recovered in 640 ms · failed requests 2 · lost items 0');
  });

  it('escapes every piece of text from the report', () => {
    const nasty = `a<b&"c"'`;
    const report = killReport();
    report.service = `svc & <co>`;
    report.instances = [nasty];
    report.spans = report.spans.map((s) => (s.instance === 'tts-primary' ? { ...s, instance: nasty } : s));
    report.marks = [...report.marks, { at: 5_000, kind: 'event', label: `</text><script>alert("x")</script>` }];
    report.samples[3] = { ...report.samples[3]!, ok: false, error: 'bad \u0001 byte & <html>' };
    const svg = renderTimelineSvg(report);
    parseXml(svg);
    expect(svg).not.toContain('<script');
    expect(svg).not.toContain('\u0001');
    expect(svg).toContain('a&lt;b&amp;&quot;c&quot;&apos;');
    expect(svg).toContain('svc &amp; &lt;co&gt;: kill on a&lt;b&amp;&quot;c&quot;&apos;');
    expect(textsOf(svg, 'lane-label')).toContain('a&lt;b&amp;&quot;c&quot;&apos;');
  });

  it('cuts a long instance name in its lane but keeps it whole in the tooltip', () => {
    const report = killReport();
    const long = 'tts-primary-on-the-gpu-box-in-the-basement-rack-3';
    report.spans = report.spans.map((s) => (s.instance === 'tts-primary' ? { ...s, instance: long } : s));
    const svg = renderTimelineSvg(report);
    parseXml(svg);
    const label = textsOf(svg, 'lane-label')[0]!;
    expect(label.endsWith('…')).toBe(true);
    expect(long.startsWith(label.slice(0, -1))).toBe(true);
    expect(svg).toContain(`<title>${long}</title>`);
  });

  it('draws an empty drill (no spans, samples or marks, zero long) without failing', () => {
    const svg = renderTimelineSvg(emptyReport());
    const elements = parseXml(svg);
    expect(byClass(elements, 'span')).toHaveLength(0);
    expect(byClass(elements, 'ok')).toHaveLength(0);
    expect(svg).toContain('no probe requests');
    expect(svg).toContain('no instance states recorded');
    expect(svg).toContain('never recovered');
    expect(svg).toContain('no job');
    expect(byClass(elements, 'grid').length).toBeGreaterThanOrEqual(2);
  });

  it('draws a single sample, and samples past the recorded duration', () => {
    const report = emptyReport();
    report.samples = [{ sentAt: 0, endedAt: 0, status: 200, instance: 'x', ok: true, error: null }];
    parseXml(renderTimelineSvg(report));

    report.durationMs = 1_000;
    report.samples = [{ sentAt: 2_500, endedAt: 2_600, status: 503, instance: 'x', ok: false, error: 'HTTP 503' }];
    report.marks = [{ at: 2_500, kind: 'fault', label: 'late' }];
    const elements = parseXml(renderTimelineSvg(report));
    const cross = byClass(elements, 'failed')[0]!;
    const mark = byClass(elements, 'mark')[0]!;
    // The axis stretched to 2.5 s, so both sit at the right edge rather than past it.
    expect(cross.attrs.d).toContain(`M${Number(mark.attrs.x1) - 4} `);
    expect(Number(mark.attrs.x1)).toBeLessThanOrEqual(960);
  });

  it('chooses between 5 and 12 readable ticks for any length', () => {
    for (const durationMs of [7, 300, 999, 1_000, 2_345, 14_000, 61_000, 600_000, 7_200_000]) {
      const report = { ...emptyReport(), durationMs };
      const ticks = byClass(parseXml(renderTimelineSvg(report)), 'grid');
      expect(ticks.length, `${durationMs} ms`).toBeGreaterThanOrEqual(5);
      expect(ticks.length, `${durationMs} ms`).toBeLessThanOrEqual(12);
    }
  });

  it('grows taller with more instances', () => {
    const one = { ...killReport(), spans: killReport().spans.filter((s) => s.instance === 'tts-cold') };
    const height = (r: DrillReport): number => Number(parseXml(renderTimelineSvg(r))[0]!.attrs.height);
    expect(height(killReport())).toBeGreaterThan(height(one));
  });
});

describe('report markdown', () => {
  const files = { svg: 'timeline.svg', json: 'report.json' };

  it('gives the verdict, the figures, the states, the notes and the timeline', () => {
    const md = renderReportMarkdown(killReport(), files);
    expect(md).toMatch(/^# Drill: tts, kill on tts-primary\n/);
    expect(md).toContain('2025-03-01T10:00:00.000Z (manual)');
    expect(md).toContain('**PASSED**: no request failed, the job lost nothing, tts-primary active again after 8200 ms');
    expect(md).toContain('| Detected (fault → taken out of service) | 620 ms |');
    expect(md).toContain('| Recovered (fault → first good answer from another instance) | 640 ms |');
    expect(md).toContain('| Restored (fault → back as before) | 4200 ms |');
    expect(md).toContain('| Requests sent / ok / failed | 140 / 140 / 0 |');
    expect(md).toContain('| Latency p99 before / during | 44.6 ms / 640 ms |');
    expect(md).toContain('| Job job-7: items / succeeded / lost / unfinished / redone | 40 / 40 / 0 / 0 / 2 |');
    expect(md).not.toContain('First failures');
    expect(md).toContain('Active instance: tts-primary before, tts-primary after.');
    expect(md).toContain('| tts-primary | ready (active) | ready (active) |');
    expect(md).toContain('| tts-cold | stopped | stopped |');
    expect(md).toContain('- tts-primary took 2.8 s to start again');
    expect(md).toContain('- `+4.000 s`  fault: kill tts-primary (pid 4242)');
    expect(md).toContain('- `+8.200 s`  restored: tts-primary active again');
    expect(md).toContain('![timeline](timeline.svg)');
    expect(md).toContain('report.json');
    // Marks come in time order.
    expect(md.indexOf('+4.620 s')).toBeLessThan(md.indexOf('+4.640 s'));
  });

  it('lists the failures, says never, and points out a state the drill did not give back', () => {
    const md = renderReportMarkdown(failingReport(), files);
    expect(md).toContain('**FAILED**: 2 requests failed');
    expect(md).toContain('| Restored (fault → back as before) | never |');
    expect(md).toContain('| Requests sent / ok / failed | 140 / 138 / 2 |');
    expect(md).toContain('## First failures\n\n- +4.100 s: connect ECONNREFUSED 127.0.0.1:9001\n- +4.200 s: connect');
    expect(md).toContain('| tts-primary | ready (active) | **down** |');
    expect(md).toContain('Active instance: tts-primary before, tts-hot after.');
  });

  it('says how many failures are not listed', () => {
    const report = failingReport();
    report.requests.failed = 12;
    expect(renderReportMarkdown(report, files)).toContain('- … and 10 more');
  });

  it('handles an empty drill: dashes for latencies, never, no job', () => {
    const md = renderReportMarkdown(emptyReport(), files);
    expect(md).toContain('| Detected (fault → taken out of service) | never |');
    expect(md).toContain('| Latency p50 before / during | — / — |');
    expect(md).toContain('| Job | no job |');
    expect(md).toContain('Nothing marked.');
    expect(md).not.toContain('## Notes');
  });

  it('keeps text from the report literal', () => {
    const report = failingReport();
    report.service = 'svc|x';
    report.requests.failures = ['<img src=x onerror=alert(1)> *boom*\nsecond line'];
    report.notes = ['- not a nested list', '1. not a numbered list'];
    const md = renderReportMarkdown(report, { svg: 'my timeline (1).svg', json: 'report.json' });
    expect(md).toContain('# Drill: svc\\|x, kill');
    expect(md).toContain('- \\<img src=x onerror=alert(1)\\> \\*boom\\* second line');
    expect(md).toContain('- \\- not a nested list');
    expect(md).toContain('- 1\\. not a numbered list');
    expect(md).toContain('![timeline](my%20timeline%20%281%29.svg)');
  });
});
