import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, utimesSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach } from 'vitest';
import { unmountAll } from '../support/tmpfs.js';

export { canMount, mountTmpfs } from '../support/tmpfs.js';

const dirs: string[] = [];

/** A fresh directory under the system temp dir, removed after the test. */
export function tempDir(prefix = 'understudy-backup-'): string {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  dirs.push(dir);
  return dir;
}

export function remountReadOnly(dir: string): void {
  execFileSync('mount', ['-o', 'remount,ro', dir], { stdio: 'pipe' });
}

afterEach(() => {
  unmountAll();
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

export type TreeSpec = { [name: string]: string | Buffer | TreeSpec | { link: string } | { mode: number; content: string | Buffer } };

/** Writes a tree: strings and Buffers are files, objects directories, { link } symlinks, { mode, content } files with a mode. */
export function writeTree(dir: string, spec: TreeSpec): void {
  mkdirSync(dir, { recursive: true });
  for (const [name, value] of Object.entries(spec)) {
    const p = path.join(dir, name);
    if (typeof value === 'string' || Buffer.isBuffer(value)) writeFileSync(p, value);
    else if ('link' in value && typeof value.link === 'string') symlinkSync(value.link, p);
    else if ('content' in value && typeof value.mode === 'number') {
      writeFileSync(p, value.content as string | Buffer);
      chmodSync(p, value.mode);
    } else writeTree(p, value as TreeSpec);
  }
}

export interface TreeItem {
  type: 'file' | 'dir' | 'symlink';
  mode: number;
  sha256?: string;
  target?: string;
  mtimeMs?: number;
}

/** What a tree holds, by relative path: types, modes, content hashes, link texts, file mtimes. */
export function readTree(dir: string): Record<string, TreeItem> {
  const out: Record<string, TreeItem> = {};
  const walk = (rel: string) => {
    const abs = rel === '' ? dir : path.join(dir, rel);
    const st = lstatSync(abs);
    const mode = st.mode & 0o7777;
    if (st.isSymbolicLink()) out[rel] = { type: 'symlink', mode: 0, target: readlinkSync(abs) };
    else if (st.isFile()) out[rel] = { type: 'file', mode, sha256: sha256(readFileSync(abs)), mtimeMs: Math.floor(st.mtimeMs) };
    else if (st.isDirectory()) {
      out[rel] = { type: 'dir', mode };
      for (const name of readdirSync(abs).sort()) walk(rel === '' ? name : `${rel}/${name}`);
    }
  };
  walk('');
  return out;
}

/** Every path under dir with its size and mtime (ns): proves an operation wrote nothing. */
export function fingerprint(dir: string): string {
  const lines: string[] = [];
  const walk = (abs: string) => {
    const st = lstatSync(abs, { bigint: true });
    lines.push(`${path.relative(dir, abs)} ${st.size} ${st.mtimeNs} ${st.ctimeNs}`);
    if (st.isDirectory()) for (const name of readdirSync(abs).sort()) walk(path.join(abs, name));
  };
  walk(dir);
  return lines.join('\n');
}

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Flips one byte of a file in place. */
export function flipByte(file: string, at = 0): void {
  chmodSync(file, 0o644);
  const data = readFileSync(file);
  data[at] = data[at]! ^ 0xff;
  writeFileSync(file, data);
}

/** Sets a file's mtime to a fixed instant (seconds). */
export function setMtime(file: string, seconds: number): void {
  utimesSync(file, seconds, seconds);
}

export function listFiles(dir: string): string[] {
  try {
    return readdirSync(dir, { recursive: true }).map(String).sort();
  } catch {
    return [];
  }
}

/** Pseudo-random bytes from a seed: content that differs per seed without the cost of crypto. */
export function bytes(size: number, seed: number): Buffer {
  const out = Buffer.allocUnsafe(size);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}
