import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync, readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { Browser, Page } from 'playwright-core';
import { browserMissing, launchBrowser } from '../../test/support/browser.js';
import { percentile, runLoad } from '../../test/support/load.js';
import { readyProbe, startUnderstudy, type UnderstudyGateway } from '../proxies/understudy.js';
import { freshDir, inferRequest, progress, startBackends } from '../workload.js';
import { median } from './jobs.js';

/*
 * The dashboard's figures: how long a change of state takes to show on an open page,
 * what ten open pages cost the data plane, and what the page weighs. Understudy runs
 * as `understudy up` (its own process) in front of two instant model servers; the
 * pages are real Chromium tabs on the same machine.
 */

export const SHOW_GOAL_MS = 1000;
export const WEIGHT_GOAL_BYTES = 300 * 1024;
const PAGES_SCRIPT = fileURLToPath(new URL('dashboard-pages.ts', import.meta.url));
const SWITCHOVERS = 10;
const PAGES = 10;
const ROUNDS = 4;
const ROUND_MS = 5000;
const RATE = 100;

export interface DashboardResult {
  /** From the active-changed event's time (Understudy's clock) to the page's DOM showing it (same machine, same clock). */
  showMs: number[];
  weight: { files: { name: string; transferred: number; decoded: number }[]; transferred: number; decoded: number };
  /** Data-plane latency, rounds alternated: no page open, ten Chromium pages open, ten live feeds read without a browser. */
  latency: { setting: string; p50Ms: number; p99Ms: number; failed: number; requests: number; cpuMsPerS: number; browserCpuMsPerS: number }[];
}

/** CPU time (user + system) the process has used so far, in ms, from /proc (Linux clock ticks of 10 ms). */
function cpuMs(pid: number | string): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '').split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/** CPU time of each Chromium process on the machine so far, in ms, by pid. */
function chromiumCpu(): Map<string, number> {
  const byPid = new Map<string, number>();
  for (const pid of readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('chromium')) byPid.set(pid, cpuMs(pid));
    } catch {
      // gone meanwhile
    }
  }
  return byPid;
}

/** What the Chromium processes alive at the end spent since `before` (a process new since then, all of its time). */
function chromiumSpentSince(before: Map<string, number>): number {
  let total = 0;
  for (const [pid, ms] of chromiumCpu()) total += ms - (before.get(pid) ?? 0);
  return total;
}

async function openDashboard(browser: Browser, gw: UnderstudyGateway): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  await page.goto(`${gw.adminUrl}/ui/`);
  await page.getByLabel('Admin token').fill(gw.token);
  await page.getByRole('button', { name: 'Open the dashboard' }).click();
  await page.getByTestId('service-infer').waitFor();
  await page.locator('[data-testid="live"]', { hasText: 'live' }).waitFor();
  return page;
}

async function post(gw: UnderstudyGateway, route: string, body: unknown): Promise<void> {
  const response = await fetch(`${gw.adminUrl}${route}`, { method: 'POST', headers: { authorization: `Bearer ${gw.token}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
  if (!response.ok) throw new Error(`${route}: ${response.status} ${await response.text()}`);
}

/** Pages held open by a child process (bench/scenarios/dashboard-pages.ts) with its own browser. */
async function openPagesElsewhere(gw: UnderstudyGateway, count: number): Promise<{ close(): Promise<void> }> {
  const child = spawn(process.execPath, ['--import', 'tsx', PAGES_SCRIPT, gw.adminUrl, gw.token, String(count)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const [exited] = [once(child, 'exit')];
  const lines = createInterface({ input: child.stdout! });
  const opened = new Promise<void>((resolve, reject) => {
    lines.once('line', (line) => (line === 'open' ? resolve() : reject(new Error(`dashboard pages: ${line}`))));
    void exited.then(([code]) => reject(new Error(`dashboard pages exited (${code}) before they were open`)));
  });
  await opened;
  return {
    async close() {
      child.stdin!.end();
      await exited;
    },
  };
}

/** Ten live feeds read by plain clients: what the feed itself costs Understudy, without a browser beside it. */
function plainFeeds(gw: UnderstudyGateway, count: number): () => void {
  const controllers = Array.from({ length: count }, () => new AbortController());
  for (const controller of controllers) {
    void fetch(`${gw.adminUrl}/v1/live`, { headers: { authorization: `Bearer ${gw.token}` }, signal: controller.signal })
      .then(async (response) => {
        for await (const _chunk of response.body!) {
          // read and drop
        }
      })
      .catch(() => {});
  }
  return () => controllers.forEach((c) => c.abort());
}

export async function runDashboard(root: string, skipped: string[]): Promise<DashboardResult | null> {
  const missing = browserMissing();
  if (missing) {
    skipped.push(`dashboard: ${missing}`);
    return null;
  }
  const backends = await startBackends(0);
  const gw = await startUnderstudy(
    {
      infer: {
        route: { pathPrefix: '/' },
        instances: {
          primary: { tier: 'primary', url: backends.primary.url, probes: readyProbe },
          standby: { tier: 'hot', url: backends.standby.url, probes: readyProbe },
        },
      },
    },
    await freshDir(root, 'dashboard'),
    { service: 'infer', instance: 'primary' },
  );
  const browser = await launchBrowser();
  try {
    const page = await openDashboard(browser, gw);
    // Page weight: what the browser fetched for the page itself (its API calls are data, not weight).
    const files = await page.evaluate(() =>
      (performance.getEntriesByType('navigation') as PerformanceResourceTiming[])
        .concat(performance.getEntriesByType('resource') as PerformanceResourceTiming[])
        .filter((e) => new URL(e.name).pathname.startsWith('/ui/'))
        .map((e) => ({ name: new URL(e.name).pathname, transferred: e.transferSize, decoded: e.decodedBodySize })),
    );
    const weight = { files, transferred: files.reduce((a, f) => a + f.transferred, 0), decoded: files.reduce((a, f) => a + f.decoded, 0) };
    progress(`dashboard: page weight ${weight.transferred} B transferred, ${weight.decoded} B decoded`);

    // State change → page: the page notes when its active instance changes (a MutationObserver, its own clock).
    // A string, not a function: tsx would wrap a function's inner arrows in helpers the page lacks.
    await page.evaluate(`
      window.shownAt = {};
      new MutationObserver(function () {
        var card = document.querySelector('[data-testid="service-infer"]');
        var active = card ? card.getAttribute('data-active') : null;
        if (active !== null && window.shownAt[active] === undefined) window.shownAt[active] = Date.now();
      }).observe(document.body, { subtree: true, attributes: true, attributeFilter: ['data-active'], childList: true });
    `);
    const showMs: number[] = [];
    for (let i = 0; i < SWITCHOVERS; i++) {
      const to = i % 2 === 0 ? 'standby' : 'primary';
      await page.evaluate((name) => delete (window as unknown as { shownAt: Record<string, number> }).shownAt[name], to);
      const since = Date.now();
      await post(gw, '/v1/services/infer/switchover', { to });
      await page.locator(`[data-testid="service-infer"][data-active="${to}"]`).waitFor({ timeout: 10_000 });
      const shownAt = await page.evaluate((name) => (window as unknown as { shownAt: Record<string, number> }).shownAt[name]!, to);
      const events = await gw.admin<{ events: { time: number; type: string; to?: string }[] }>(`/v1/events?service=infer&type=active-changed&since=${since}`);
      const moved = events.events.find((e) => e.to === to);
      if (!moved || shownAt === undefined) throw new Error(`switchover ${i + 1}: no event or no page change`);
      showMs.push(shownAt - moved.time);
    }
    progress(`dashboard: state change → page ${showMs.join(', ')} ms`);
    await page.close();

    // The data plane with and without pages open, rounds alternated so the machine's noise is shared out.
    const tallies = new Map<string, { latencies: number[]; failed: number; requests: number; cpuMs: number; browserMs: number; ms: number }>();
    const measure = async (setting: string) => {
      const [cpuBefore, browserBefore, since] = [cpuMs(gw.pid), chromiumCpu(), performance.now()];
      const load = await runLoad({ ...inferRequest, url: `${gw.url}/v1/infer`, rate: RATE, durationMs: ROUND_MS });
      const tally = tallies.get(setting) ?? { latencies: [], failed: 0, requests: 0, cpuMs: 0, browserMs: 0, ms: 0 };
      tally.cpuMs += cpuMs(gw.pid) - cpuBefore;
      tally.browserMs += chromiumSpentSince(browserBefore);
      tally.ms += performance.now() - since;
      tally.latencies.push(...load.results.map((r) => r.end - r.start));
      tally.failed += load.failed;
      tally.requests += load.results.length;
      tallies.set(setting, tally);
    };
    for (let round = 0; round < ROUNDS; round++) {
      await measure('no page open');
      const pages = await openPagesElsewhere(gw, PAGES);
      await measure(`${PAGES} Chromium pages open (same machine)`);
      await pages.close();
      const stop = plainFeeds(gw, PAGES);
      await measure(`${PAGES} live feeds read, no browser`);
      stop();
      progress(`dashboard: latency round ${round + 1} of ${ROUNDS}`);
    }
    const latency = [...tallies].map(([setting, t]) => ({ setting, p50Ms: percentile(t.latencies, 50), p99Ms: percentile(t.latencies, 99), failed: t.failed, requests: t.requests, cpuMsPerS: (t.cpuMs / t.ms) * 1000, browserCpuMsPerS: (t.browserMs / t.ms) * 1000 }));
    return { showMs, weight, latency };
  } finally {
    await browser.close();
    await gw.stop();
    await backends.stop();
  }
}

export function dashboardSection(r: DashboardResult): string {
  const sorted = [...r.showMs].sort((a, b) => a - b);
  const kib = (n: number) => `${(n / 1024).toFixed(1)} KiB`;
  const lines = [
    '## Dashboard',
    '',
    `State change → page (active-changed event to the DOM, ${r.showMs.length} switchovers): min ${sorted[0]} ms, median ${median(sorted)} ms, max ${sorted.at(-1)} ms (goal < ${SHOW_GOAL_MS} ms: ${sorted.at(-1)! < SHOW_GOAL_MS ? 'met' : 'missed'}).`,
    '',
    `Page weight: ${kib(r.weight.transferred)} transferred (gzip), ${kib(r.weight.decoded)} decoded (goal < ${kib(WEIGHT_GOAL_BYTES)}: ${r.weight.transferred < WEIGHT_GOAL_BYTES && r.weight.decoded < WEIGHT_GOAL_BYTES ? 'met' : 'missed'}).`,
    '',
    '| file | transferred | decoded |',
    '|---|---|---|',
    ...r.weight.files.map((f) => `| ${f.name} | ${kib(f.transferred)} | ${kib(f.decoded)} |`),
    '',
    `Data-plane latency at ${RATE} req/s, ${ROUNDS} rounds of ${ROUND_MS / 1000} s each, alternated:`,
    '',
    '| setting | requests | failed | p50 | p99 | Understudy CPU | Chromium CPU |',
    '|---|---|---|---|---|---|---|',
    ...r.latency.map((l) => `| ${l.setting} | ${l.requests} | ${l.failed} | ${l.p50Ms.toFixed(2)} ms | ${l.p99Ms.toFixed(2)} ms | ${l.cpuMsPerS.toFixed(0)} ms/s | ${l.browserCpuMsPerS.toFixed(0)} ms/s |`),
    '',
    'The pages are measured once open and settled (5 s after the last one went live). Here the browsers share the two cores with Understudy, the model servers and the load generator; an operator\'s browser runs on their own machine. The CPU columns say what Understudy itself spends, and what the browsers take from the same cores.',
  ];
  return lines.join('\n');
}
