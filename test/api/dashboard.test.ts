import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminServer } from '../../src/api/index.js';
import type { Understudy } from '../../src/controller/index.js';
import type { UnderstudyEvent } from '../../src/core/index.js';
import { browserMissing, launchBrowser, newPage } from '../support/browser.js';
import { demo, demoReady } from '../support/demo.js';

/** Screenshots of the main views, taken here so the ones in docs/ and the README never go stale. */
const SHOTS = path.resolve('docs/screenshots');
const TOKEN = 'dashboard-test-token-0123456789';

const missing = browserMissing();
if (missing && process.env.CI) throw new Error(missing);

describe.skipIf(missing !== undefined)('the dashboard in a real Chromium, on the bundled demo', () => {
  let app: Understudy;
  let admin: AdminServer;
  let base: string;
  let browser: Browser;
  let page: Page;
  let stateDir: string;

  const events = (type: string, since: number): UnderstudyEvent[] => app.events.list({ type, since });

  async function logIn(target: Page, token = TOKEN, name = 'alice'): Promise<void> {
    await target.goto(`${base}/ui/`);
    await target.getByLabel('Admin token').fill(token);
    await target.getByLabel(/Your name/).fill(name);
    await target.getByRole('button', { name: 'Open the dashboard' }).click();
  }

  beforeAll(async () => {
    stateDir = mkdtempSync(path.join(tmpdir(), 'understudy-dashboard-'));
    app = await demo(stateDir);
    admin = new AdminServer(app, TOKEN);
    const address = await admin.start();
    base = `http://127.0.0.1:${address.port}`;
    [browser] = await Promise.all([launchBrowser(), app.start()]);
    await demoReady(app);
    // A context of its own (not newPage's), so a second tab can share its storage: the cross-site test.
    page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await admin?.close();
    await app?.close(2000);
    rmSync(stateDir, { recursive: true, force: true });
  });

  it('a wrong token sees nothing and can do nothing', async () => {
    const since = Date.now();
    await page.goto(`${base}/ui/`);
    await page.screenshot({ path: path.join(SHOTS, 'login.png') });
    await logIn(page, 'not-the-token-at-all');
    await expect(page.getByTestId('login-error').textContent()).resolves.toMatch(/not this Understudy's admin token/);
    expect(await page.locator('[data-testid^="service-"]').count()).toBe(0);
    expect(await page.evaluate(() => sessionStorage.getItem('understudy.token'))).toBeNull();
    // From the page itself, with the wrong token: every read and every action is refused.
    const answers = await page.evaluate(async () => {
      const headers = { authorization: 'Bearer not-the-token-at-all', 'content-type': 'application/json' };
      const read = await fetch('/v1/status', { headers });
      const live = await fetch('/v1/live', { headers });
      const act = await fetch('/v1/services/tts/switchover', { method: 'POST', headers, body: '{"to":"hot"}' });
      return [read.status, live.status, act.status, await act.text()];
    });
    expect(answers.slice(0, 3)).toEqual([401, 401, 401]);
    expect(answers[3]).not.toContain('primary');
    expect(app.service('tts')!.view().active).toBe('primary');
    expect(events('operator-action', since)).toEqual([]);
  });

  it('logs in and shows both services, each instance with its state, and the cluster view says it runs alone', async () => {
    await logIn(page);
    const tts = page.getByTestId('service-tts');
    await tts.waitFor();
    await page.getByTestId('service-asr').waitFor();
    await expect(tts.getByTestId('service-state').textContent()).resolves.toBe('serving on primary');
    expect(await tts.getAttribute('data-active')).toBe('primary');
    expect(await page.getByTestId('instance-tts-hot').getAttribute('data-state')).toBe('ready');
    expect(await page.getByTestId('instance-tts-cold').getAttribute('data-state')).toBe('stopped');
    await expect(page.getByTestId('live').textContent()).resolves.toContain('live');
    // Traffic through the gateway shows on the charts and in "who answered".
    const gateway = app.gatewayAddresses()[0]!;
    for (let i = 0; i < 6; i += 1) {
      const response = await fetch(`http://127.0.0.1:${gateway.port}/v1/audio/speech`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"input":"Hello."}' });
      expect(response.status).toBe(200);
      await response.arrayBuffer();
    }
    await tts.getByText(/req\/s · p50/).first().waitFor({ timeout: 5000 });
    await tts.getByText('Who answered the last 6 requests').waitFor();
    await page.screenshot({ path: path.join(SHOTS, 'services.png'), fullPage: true });
    await page.getByRole('link', { name: 'Cluster' }).click();
    await page.getByTestId('no-cluster').waitFor();
    await page.getByRole('link', { name: 'Services' }).click();
  });

  it('shows the failover and the new active instance within 2 s of a SIGKILL of the primary, without a reload', async () => {
    await page.evaluate(() => ((window as unknown as { loadedOnce: boolean }).loadedOnce = true));
    const pid = app.service('tts')!.view().instances.find((i) => i.name === 'primary')!.pid!;
    const killedAt = Date.now();
    process.kill(pid, 'SIGKILL');
    // The figure for this test: on the page within 2 s.
    await page.locator('[data-testid="service-tts"][data-active="hot"]').waitFor({ timeout: 2000 });
    const shownMs = Date.now() - killedAt;
    await expect(page.getByTestId('service-tts').getByTestId('service-state').textContent()).resolves.toBe('failed over to hot');
    expect(await page.evaluate(() => (window as unknown as { loadedOnce?: boolean }).loadedOnce)).toBe(true);
    expect(shownMs).toBeLessThan(2000);
    await page.getByRole('link', { name: 'Events' }).click();
    await page.getByTestId('filter-kind').selectOption('active-changed');
    await page.getByTestId('timeline').getByText('active primary → hot (failover)').waitFor();
  });

  it('follows a submitted job to 100 %, and its page says where each item ran', async () => {
    const items = Array.from({ length: 12 }, (_, i) => ({ json: { input: `Sentence number ${i + 1}.` } }));
    const response = await fetch(`${base}/v1/jobs`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ service: 'tts', name: 'twelve sentences', defaults: { method: 'POST', path: '/v1/audio/speech' }, items, concurrency: 2 }),
    });
    expect(response.status).toBe(201);
    const { job } = (await response.json()) as { job: { id: string } };
    await page.getByRole('link', { name: 'Jobs' }).click();
    const row = page.getByTestId(`job-${job.id}`);
    await row.waitFor();
    await page.locator(`[data-testid="job-${job.id}"][data-state="succeeded"]`).waitFor({ timeout: 60_000 });
    await expect(row.getByTestId('percent').textContent()).resolves.toBe('12 / 12 · 100 %');
    expect(await row.getByTestId('progress').evaluate((p: HTMLProgressElement) => p.value / p.max)).toBe(1);
    await page.screenshot({ path: path.join(SHOTS, 'jobs.png') });
    await row.getByRole('link').click();
    await page.locator('[data-testid="job-page"][data-state="succeeded"]').waitFor();
    await page.getByTestId('per-instance').getByText(/(primary|hot): \d+/).waitFor();
    expect(await page.locator('table.results tbody tr').count()).toBe(12);
  });

  it('switches over from the page, asking first, and the timeline records who asked', async () => {
    const tts = app.service('tts')!;
    await tts.waitFor((s) => s.instances.primary!.state === 'ready' && s.instances.hot!.state === 'ready', 60_000, undefined, 'primary back');
    const from = tts.view().active!;
    const to = from === 'primary' ? 'hot' : 'primary';
    const since = Date.now();
    await page.getByRole('link', { name: 'Services' }).click();
    // Keyboard: the button is reached and pressed without a mouse; Escape cancels and changes nothing.
    await page.getByTestId('service-tts').getByRole('button', { name: 'Switch over…' }).focus();
    await page.keyboard.press('Enter');
    await page.getByTestId('confirm').getByText('Switch tts over?').waitFor();
    await page.keyboard.press('Escape');
    await page.getByTestId('confirm').getByText('Switch tts over?').waitFor({ state: 'detached' });
    expect(tts.view().active).toBe(from);

    await page.getByTestId('service-tts').getByRole('button', { name: 'Switch over…' }).click();
    await page.getByTestId('confirm').getByLabel('To').selectOption(to);
    await page.getByTestId('confirm').getByRole('button', { name: 'Switch over' }).click();
    await page.locator(`[data-testid="service-tts"][data-active="${to}"]`).waitFor({ timeout: 5000 });
    await page.getByRole('link', { name: 'Events' }).click();
    await page.getByTestId('filter-kind').selectOption('operator-action');
    await page.getByTestId('timeline').getByText(/alice .* via dashboard: switchover tts accepted/).waitFor();
    await page.getByTestId('filter-kind').selectOption('');
    await page.screenshot({ path: path.join(SHOTS, 'events.png') });
    const [action] = events('operator-action', since);
    expect(action).toMatchObject({ action: 'switchover', target: 'tts', via: 'dashboard', outcome: 'accepted', service: 'tts' });
    expect((action as { by: string }).by).toMatch(/^alice \(/);
    const [moved] = events('active-changed', since);
    expect(moved).toMatchObject({ from, to, kind: 'switchover' });
    expect(moved!.reason).toMatch(/requested by alice .* via dashboard/);
  });

  it('runs a drill from the page and shows its report and timeline picture under Recovery', async () => {
    const since = Date.now();
    await page.getByRole('link', { name: 'Services' }).click();
    await page.getByTestId('service-tts').getByRole('button', { name: 'Drill…' }).click();
    await page.getByTestId('confirm').getByLabel('Fault').selectOption('kill');
    await page.getByTestId('confirm').getByRole('button', { name: 'Run drill' }).click();
    await page.getByRole('link', { name: 'Recovery' }).click();
    await page.getByTestId('drills').getByText(/^passed$/).waitFor({ timeout: 90_000 });
    await page.getByTestId('drills').getByRole('button', { name: 'Timeline' }).first().click();
    await page.locator('.drill-picture img').waitFor();
    expect(await page.locator('.drill-picture img').evaluate((img: HTMLImageElement) => img.complete && img.naturalWidth > 0)).toBe(true);
    await page.getByTestId('releases-tts').getByText('running 1.0').waitFor();
    await page.screenshot({ path: path.join(SHOTS, 'recovery.png'), fullPage: true });
    expect(events('operator-action', since)).toMatchObject([{ action: 'drill', target: 'tts', outcome: 'accepted' }]);
  }, 120_000);

  it('takes no action from a page on another site, and refuses a Host that is not this one', async () => {
    const since = Date.now();
    const active = app.service('tts')!.view().active;
    // A page on another origin, opened in the same browser as the logged-in dashboard.
    const evil: Server = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html' }).end(`<!doctype html><form id=f method=post action="${base}/v1/services/tts/switchover" enctype="text/plain"><input name='{"to":"cold","x":"' value='"}'></form>
<script>
Promise.allSettled([
  fetch('${base}/v1/services/tts/switchover', { method: 'POST', mode: 'no-cors', credentials: 'include', headers: { 'content-type': 'text/plain' }, body: '{"to":"cold"}' }),
  fetch('${base}/v1/services/tts/switchover', { method: 'POST', credentials: 'include', headers: { 'content-type': 'application/json', authorization: 'Bearer guess' }, body: '{"to":"cold"}' }),
  fetch('${base}/v1/status', { credentials: 'include' }).then((r) => r.text()),
]).then((results) => { document.title = JSON.stringify(results.map((r) => r.status + ':' + (r.reason ? 'blocked' : typeof r.value === 'string' ? r.value.slice(0, 40) : 'opaque'))); document.getElementById('f').submit(); });
</script>`);
    });
    await new Promise<void>((resolve) => evil.listen(0, '127.0.0.2', resolve));
    const port = (evil.address() as { port: number }).port;
    const other = await page.context().newPage();
    try {
      const submitted = other.waitForURL(/\/v1\/services\/tts\/switchover/, { timeout: 10_000 });
      await other.goto(`http://127.0.0.2:${port}/`);
      await submitted;
      expect(await other.textContent('body')).toContain('UNAUTHORIZED');
    } finally {
      await other.close();
      evil.close();
    }
    expect(app.service('tts')!.view().active).toBe(active);
    expect(events('active-changed', since)).toEqual([]);
    expect(events('operator-action', since)).toEqual([]);
    // DNS rebinding: a name that points at 127.0.0.1 but is not this API's gets nothing, token or not.
    const rebound = await new Promise<number>((resolve, reject) => {
      import('node:http').then(({ request }) =>
        request(`${base}/v1/status`, { headers: { host: `attacker.example:${new URL(base).port}`, authorization: `Bearer ${TOKEN}` } }, (res) => {
          res.resume();
          resolve(res.statusCode!);
        })
          .on('error', reject)
          .end(),
      );
    });
    expect(rebound).toBe(403);
  });

  it('is readable on a phone: no sideways scrolling, every state in words', async () => {
    const phone = await newPage(browser, { viewport: { width: 390, height: 844 } });
    try {
      await logIn(phone, TOKEN, 'bob');
      await phone.getByTestId('service-tts').waitFor();
      await phone.getByTestId('service-asr').waitFor();
      expect(await phone.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(390);
      const words = await phone.locator('.badge').allTextContents();
      expect(words.every((w) => w.trim().length > 0)).toBe(true);
      await phone.screenshot({ path: path.join(SHOTS, 'phone.png') });
    } finally {
      await phone.close();
    }
  });
});
