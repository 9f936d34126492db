import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { Metrics } from '../../src/observe/index.js';

/* The Prometheus rules and the Grafana dashboard in examples/monitoring/ against the metrics Understudy exports. */

const DIR = path.resolve('examples/monitoring');
const RULES = path.join(DIR, 'understudy.rules.yml');
const RULE_TESTS = path.join(DIR, 'understudy.rules.test.yml');
const DASHBOARD = path.join(DIR, 'grafana-dashboard.json');

/** Labels Prometheus adds to every scraped series: the scrape target's. */
const TARGET_LABELS = ['job', 'instance'];

interface Exported {
  type: string;
  /** As Prometheus stores them: the metrics' own `instance` becomes `exported_instance` (honor_labels: false). */
  labels: Set<string>;
}

/** Every metric `new Metrics()` registers, with its label names. */
function exportedMetrics(): Map<string, Exported> {
  const exported = new Map<string, Exported>();
  for (const metric of new Metrics().registry.getMetricsAsArray()) {
    // prom-client keeps the label names on the metric object; its types leave them out.
    const own = (metric as unknown as { labelNames?: readonly string[] }).labelNames ?? [];
    const labels = new Set([...TARGET_LABELS, ...own.map((l) => (l === 'instance' ? 'exported_instance' : l))]);
    const type = String(metric.type);
    if (type === 'histogram') labels.add('le');
    exported.set(metric.name, { type, labels });
  }
  return exported;
}

/**
 * What is wrong with the Understudy metrics an expression uses: names `new Metrics()`
 * does not register (a histogram's _bucket, _sum and _count series count as the
 * histogram), and label matchers on labels such a metric does not have.
 */
function metricProblems(expr: string, exported: Map<string, Exported>): string[] {
  const problems: string[] = [];
  const known = (name: string): Exported | undefined => {
    const direct = exported.get(name);
    if (direct) return direct;
    const base = /^(.*)_(bucket|sum|count)$/.exec(name)?.[1];
    const histogram = base === undefined ? undefined : exported.get(base);
    return histogram && (histogram.type === 'histogram' || histogram.type === 'summary') ? histogram : undefined;
  };
  for (const [name] of expr.matchAll(/understudy_[a-z_]+/g)) {
    if (!known(name)) problems.push(`${name} is not a metric Understudy exports`);
  }
  for (const [, name, matchers] of expr.matchAll(/(understudy_[a-z_]+)\s*\{([^}]*)\}/g)) {
    const metric = known(name!);
    if (!metric) continue;
    for (const [, label] of matchers!.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)/g)) {
      if (!metric.labels.has(label!)) problems.push(`${name} has no label ${label} (it has ${[...metric.labels].join(', ')})`);
    }
  }
  return problems;
}

interface Rule {
  alert?: string;
  record?: string;
  expr?: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
interface RuleFile {
  groups: { name: string; rules: Rule[] }[];
}

const rules = parse(readFileSync(RULES, 'utf8')) as RuleFile;
const allRules = rules.groups.flatMap((g) => g.rules);

describe('examples/monitoring/understudy.rules.yml', () => {
  it('has alerts, each with expr, for, a severity, a summary and a description, and a unique name', () => {
    expect(rules.groups.length).toBeGreaterThan(0);
    expect(allRules.length).toBeGreaterThan(10);
    for (const rule of allRules) {
      const where = rule.alert ?? JSON.stringify(rule);
      expect(rule.alert, where).toMatch(/^Understudy[A-Za-z0-9]+$/);
      expect(rule.expr, where).toEqual(expect.any(String));
      expect(rule.for, where).toMatch(/^\d+[smh]$/);
      expect(['critical', 'warning', 'info'], where).toContain(rule.labels?.severity);
      expect(rule.annotations?.summary, where).toEqual(expect.any(String));
      expect(rule.annotations?.description, where).toEqual(expect.any(String));
    }
    const names = allRules.map((r) => r.alert);
    expect(new Set(names).size).toBe(names.length);
  });

  it('uses only metrics, and labels of them, that Understudy exports', () => {
    const exported = exportedMetrics();
    const problems = allRules.flatMap((r) => metricProblems(r.expr ?? '', exported).map((p) => `${r.alert}: ${p}`));
    expect(problems).toEqual([]);
    // The check itself sees a typo, a histogram series of a counter and a wrong label.
    expect(metricProblems('understudy_request_total', exported)).toHaveLength(1);
    expect(metricProblems('understudy_requests_total_bucket', exported)).toHaveLength(1);
    expect(metricProblems('understudy_request_duration_seconds_bucket{service="a", le="1"}', exported)).toEqual([]);
    expect(metricProblems('understudy_stream_breaks_total{outcome="cut"}', exported)).toHaveLength(1);
    expect(metricProblems('understudy_instance_state{instance="n:9901", exported_instance="gpu-a"}', exported)).toEqual([]);
  });

  it('covers the alerts operators need', () => {
    const names = allRules.map((r) => r.alert);
    for (const alert of ['UnderstudyNoReadyInstance', 'UnderstudyFailover', 'UnderstudyStandbyNotReady', 'UnderstudyHighErrorRatio', 'UnderstudyNoLeader', 'UnderstudyTwoLeaders', 'UnderstudyDown']) {
      expect(names).toContain(alert);
    }
  });
});

const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as {
  __inputs?: { name: string; type: string; pluginId: string }[];
  schemaVersion: number;
  uid: string;
  panels: { id: number; type: string; title: string; gridPos: { x: number; y: number; w: number; h: number }; datasource?: { uid: string }; targets?: { expr: string; refId: string; datasource?: { uid: string } }[] }[];
  templating: { list: { name: string; type: string; query: unknown; definition?: string }[] };
  annotations: { list: { expr?: string }[] };
};
const dashboardExprs = [
  ...dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => ({ where: `panel ${p.id} (${p.title}) ${t.refId}`, expr: t.expr }))),
  ...dashboard.annotations.list.flatMap((a, i) => (a.expr ? [{ where: `annotation ${i}`, expr: a.expr }] : [])),
];

describe('examples/monitoring/grafana-dashboard.json', () => {
  it('imports with a Prometheus data source input and a service variable', () => {
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(36);
    expect(dashboard.__inputs).toContainEqual(expect.objectContaining({ name: 'DS_PROMETHEUS', type: 'datasource', pluginId: 'prometheus' }));
    const service = dashboard.templating.list.find((v) => v.name === 'service');
    expect(service?.type).toBe('query');
    expect(service?.definition).toMatch(/^label_values\(understudy_[a-z_]+, service\)$/);
    for (const panel of dashboard.panels) {
      expect(panel.datasource?.uid, `panel ${panel.id}`).toBe('${DS_PROMETHEUS}');
      for (const target of panel.targets ?? []) expect(target.datasource?.uid, `panel ${panel.id}`).toBe('${DS_PROMETHEUS}');
    }
  });

  it('has panels with unique ids and places on a 24-column grid, none overlapping', () => {
    expect(dashboard.panels.length).toBeGreaterThanOrEqual(10);
    const ids = dashboard.panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of dashboard.panels) {
      expect(p.gridPos.x + p.gridPos.w, `panel ${p.id}`).toBeLessThanOrEqual(24);
      expect(p.targets?.length, `panel ${p.id}`).toBeGreaterThan(0);
    }
    const overlaps = (a: (typeof dashboard.panels)[number], b: (typeof dashboard.panels)[number]): boolean =>
      a.gridPos.x < b.gridPos.x + b.gridPos.w && b.gridPos.x < a.gridPos.x + a.gridPos.w && a.gridPos.y < b.gridPos.y + b.gridPos.h && b.gridPos.y < a.gridPos.y + a.gridPos.h;
    for (const [i, a] of dashboard.panels.entries()) {
      for (const b of dashboard.panels.slice(i + 1)) expect(overlaps(a, b), `panels ${a.id} and ${b.id}`).toBe(false);
    }
  });

  it('queries only metrics, and labels of them, that Understudy exports', () => {
    const exported = exportedMetrics();
    const problems = dashboardExprs.flatMap(({ where, expr }) => metricProblems(expr, exported).map((p) => `${where}: ${p}`));
    expect(problems).toEqual([]);
    for (const { where, expr } of dashboardExprs) expect(expr, where).toMatch(/understudy_/);
  });
});

// promtool comes with Debian's prometheus package (scripts/monitoring-tools.sh installs it).
const promtool = spawnSync('promtool', ['--version'], { encoding: 'utf8' });
const promtoolMissing = promtool.error ? `promtool not found (${promtool.error.message}); bash scripts/monitoring-tools.sh installs it` : undefined;

function run(...args: string[]): { code: number | null; output: string } {
  const result = spawnSync('promtool', args, { encoding: 'utf8', timeout: 30_000 });
  return { code: result.status, output: `${result.stdout}${result.stderr}` };
}

if (promtoolMissing && process.env.CI) {
  describe('promtool', () => {
    it('is installed (CI must run scripts/monitoring-tools.sh)', () => {
      throw new Error(promtoolMissing);
    });
  });
} else {
  if (promtoolMissing) console.warn(`skipping the promtool checks: ${promtoolMissing}`);
  describe.skipIf(promtoolMissing !== undefined)(`promtool${promtoolMissing ? ` (skipped: ${promtoolMissing})` : ''}`, () => {
    let dir: string;
    beforeAll(() => {
      dir = mkdtempSync(path.join(tmpdir(), 'understudy-promtool-'));
    });
    afterAll(() => rmSync(dir, { recursive: true, force: true }));

    it('check rules: the rules file is valid', () => {
      const { code, output } = run('check', 'rules', RULES);
      expect(output).toContain('SUCCESS');
      expect(code, output).toBe(0);
    });

    it('test rules: the no-ready-instance, failover and no-leader alerts fire on cue, and only then', () => {
      const { code, output } = run('test', 'rules', RULE_TESTS);
      expect(output).toContain('SUCCESS');
      expect(code, output).toBe(0);
    });

    it("check rules: every dashboard query parses (each as a recording rule, with Grafana's variables filled in)", () => {
      const fill = (expr: string): string =>
        expr.replaceAll('$__rate_interval', '1m').replaceAll('$__range', '1h').replaceAll('$service', '.*').replaceAll('$node', '.*');
      const records = dashboardExprs.map(({ expr }, i) => ({ record: `dashboard:query_${i}`, expr: fill(expr) }));
      const file = path.join(dir, 'dashboard.rules.yml');
      // YAML takes JSON as it is.
      writeFileSync(file, JSON.stringify({ groups: [{ name: 'dashboard', rules: records }] }));
      const { code, output } = run('check', 'rules', file);
      expect(output).toContain(`SUCCESS: ${records.length} rules found`);
      expect(code, output).toBe(0);
    });

    it('check rules fails on a broken expression, so the checks above can fail', () => {
      const file = path.join(dir, 'broken.rules.yml');
      writeFileSync(file, JSON.stringify({ groups: [{ name: 'broken', rules: [{ alert: 'Broken', expr: 'sum by (service (understudy_queue_depth)' }] }] }));
      const { code, output } = run('check', 'rules', file);
      expect(output).toContain('FAILED');
      expect(code).not.toBe(0);
    });
  });
}
