import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

/* Real small disks for full-disk tests: a tmpfs mounted on a fresh directory (needs root). */

const mounts: string[] = [];

/** A tmpfs of `size` (e.g. "8m") on a fresh directory; undefined when mounting is not permitted. */
export function mountTmpfs(size: string): string | undefined {
  const dir = mkdtempSync(path.join(tmpdir(), 'understudy-disk-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'pipe' });
    mounts.push(dir);
    return dir;
  } catch {
    rmSync(dir, { recursive: true, force: true });
    return undefined;
  }
}

/** Unmounts and removes every tmpfs mounted so far; call it after each test. */
export function unmountAll(): void {
  for (const dir of mounts.splice(0)) {
    execFileSync('umount', [dir], { stdio: 'pipe' });
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Whether this machine lets the tests mount a tmpfs (root, no sandbox in the way). */
export const canMount = (() => {
  if (!mountTmpfs('64k')) return false;
  unmountAll();
  return true;
})();
