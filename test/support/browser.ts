import { accessSync, constants } from 'node:fs';
import { chromium, type Browser, type Page, type ViewportSize } from 'playwright-core';

/* A real headless Chromium for the dashboard tests: Debian's chromium package driven
   through playwright-core, so nothing is downloaded (no `playwright install`). */

/** The browser binary: $UNDERSTUDY_CHROMIUM, else Debian's (scripts/browser.sh installs it). */
export const CHROMIUM_PATH = process.env.UNDERSTUDY_CHROMIUM ?? '/usr/bin/chromium';

/**
 * The tests run as root in containers and VMs, where Chromium's sandbox cannot start.
 * Playwright passes both flags by default already; they are named here so the helper
 * does not depend on that. /dev/shm is 64 MB in a default Docker container, too small
 * for Chromium's shared memory, hence /tmp instead.
 */
export const CHROMIUM_ARGS: readonly string[] = ['--no-sandbox', '--disable-dev-shm-usage'];

/** Why a browser cannot be launched here, or undefined when the binary is there. */
export function browserMissing(): string | undefined {
  try {
    accessSync(CHROMIUM_PATH, constants.X_OK);
    return undefined;
  } catch {
    return `no Chromium at ${CHROMIUM_PATH}; run scripts/browser.sh (or set UNDERSTUDY_CHROMIUM)`;
  }
}

/** Launches a headless Chromium; close it in afterAll (`await browser.close()`). */
export async function launchBrowser(): Promise<Browser> {
  const missing = browserMissing();
  if (missing !== undefined) throw new Error(missing);
  try {
    return await chromium.launch({
      executablePath: CHROMIUM_PATH,
      headless: true,
      chromiumSandbox: false,
      args: [...CHROMIUM_ARGS],
    });
  } catch (error) {
    throw new Error(`could not launch ${CHROMIUM_PATH} (scripts/browser.sh installs it): ${(error as Error).message}`, { cause: error });
  }
}

export interface NewPageOptions {
  /** CSS pixels. @default { width: 1280, height: 800 } */
  viewport?: ViewportSize;
}

/**
 * A page in its own browser context, so cookies and storage never leak between
 * tests; closing the page closes the context.
 */
export async function newPage(browser: Browser, options: NewPageOptions = {}): Promise<Page> {
  return browser.newPage({ viewport: options.viewport ?? { width: 1280, height: 800 }, deviceScaleFactor: 1 });
}
