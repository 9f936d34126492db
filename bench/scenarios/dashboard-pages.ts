import { launchBrowser } from '../../test/support/browser.js';

/*
 * Holds dashboard pages open in a process of its own, so that the benchmark's load
 * generator does not share an event loop with the browser's protocol traffic:
 * `tsx bench/scenarios/dashboard-pages.ts <admin url> <token> <pages>` prints "open"
 * once every page is live and has settled, and closes the browser when its stdin closes.
 */

const SETTLE_MS = 5000;
const [adminUrl, token, count] = process.argv.slice(2);
if (!adminUrl || !token || !count) {
  process.stderr.write('usage: dashboard-pages.ts <admin url> <token> <pages>\n');
  process.exit(2);
}
const browser = await launchBrowser();
await Promise.all(
  Array.from({ length: Number(count) }, async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    await page.goto(`${adminUrl}/ui/`);
    await page.getByLabel('Admin token').fill(token);
    await page.getByRole('button', { name: 'Open the dashboard' }).click();
    await page.getByTestId('service-infer').waitFor();
    await page.locator('[data-testid="live"]', { hasText: 'live' }).waitFor();
  }),
);
// Opening ten pages at once costs a 2-core machine several seconds of CPU (each page's
// first render and script compile); the figure wanted is the steady state after that.
await new Promise((resolve) => setTimeout(resolve, SETTLE_MS));
process.stdout.write('open\n');
process.stdin.resume();
process.stdin.once('end', () => void browser.close().then(() => process.exit(0)));
