import { createHash, randomBytes } from 'node:crypto';
import type { BigIntStats } from 'node:fs';
import { lstat, mkdir, open, rename, rm, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { isNotFound } from './errors.js';

/** Read size for hashing and copying: large enough for sequential disk speed, small enough to stay in cache. */
export const CHUNK = 4 * 1024 * 1024;

export function randomHex(bytes: number): string {
  return randomBytes(bytes).toString('hex');
}

export async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export async function syncFile(file: string): Promise<void> {
  const handle = await open(file, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** lstat that answers null for a path that is not there. */
export async function lstatOrNull(p: string): Promise<BigIntStats | null> {
  try {
    return await lstat(p, { bigint: true });
  } catch (error) {
    if (isNotFound(error)) return null;
    throw error;
  }
}

/**
 * Writes `data` so that `target` is either absent or whole, even across a power cut: a temporary
 * file in `tmpDir` (same file system), fsync, rename, fsync of the target's directory.
 */
export async function writeDurable(tmpDir: string, target: string, data: string): Promise<void> {
  const temp = path.join(tmpDir, `${randomHex(8)}.tmp`);
  try {
    const handle = await open(temp, 'wx', 0o644);
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, target);
  } catch (error) {
    await rm(temp, { force: true }).catch(() => {});
    throw error;
  }
  await syncDir(path.dirname(target));
}

/** mkdir -p that returns the directories it made (their parents need an fsync). */
export async function mkdirs(dir: string): Promise<string[]> {
  const first = await mkdir(dir, { recursive: true });
  if (first === undefined) return [];
  const made: string[] = [];
  for (let d = dir; ; d = path.dirname(d)) {
    made.push(d);
    if (d === first || d === path.dirname(d)) break;
  }
  return made;
}

/**
 * Reads a file handle from the start in CHUNK pieces, the next read running while `onChunk` works
 * on the current piece (hashing is on this thread, reading is not). A chunk's buffer is reused
 * once `onChunk` has resolved. Returns the bytes read.
 */
export async function readChunks(
  handle: FileHandle,
  onChunk: (chunk: Buffer) => void | Promise<void>,
  signal?: AbortSignal,
): Promise<number> {
  const buffers = [Buffer.allocUnsafe(CHUNK), Buffer.allocUnsafe(CHUNK)] as const;
  let which = 0;
  let position = 0;
  let pending = handle.read(buffers[0], 0, CHUNK, 0);
  try {
    for (;;) {
      const { bytesRead } = await pending;
      if (bytesRead === 0) return position;
      const chunk = buffers[which]!.subarray(0, bytesRead);
      position += bytesRead;
      which ^= 1;
      pending = handle.read(buffers[which]!, 0, CHUNK, position);
      signal?.throwIfAborted();
      await onChunk(chunk);
    }
  } catch (error) {
    // The read in flight must end before the caller closes the handle.
    await pending.catch(() => {});
    throw error;
  }
}

/** SHA-256 and length of a file's content. */
export async function hashFile(file: string, signal?: AbortSignal, onBytes?: (n: number) => void): Promise<{ sha256: string; size: number }> {
  const handle = await open(file, 'r');
  try {
    const hash = createHash('sha256');
    const size = await readChunks(
      handle,
      (chunk) => {
        hash.update(chunk);
        onBytes?.(chunk.length);
      },
      signal,
    );
    return { sha256: hash.digest('hex'), size };
  } finally {
    await handle.close();
  }
}

export async function writeAll(handle: FileHandle, chunk: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < chunk.length) {
    const { bytesWritten } = await handle.write(chunk, done, chunk.length - done, position + done);
    done += bytesWritten;
  }
}

/** Calls a listener at most every `intervalMs`, and whenever told it must (a new phase, the end). */
export class Throttle<T> {
  private last = -Infinity;
  constructor(
    private readonly listener: ((value: T) => void) | undefined,
    private readonly now: () => number,
    private readonly intervalMs = 100,
  ) {}

  update(value: () => T, now = false): void {
    if (!this.listener) return;
    const time = this.now();
    if (!now && time - this.last < this.intervalMs) return;
    this.last = time;
    try {
      this.listener(value());
    } catch {
      // A failing progress listener must not fail a snapshot or a restore.
    }
  }
}
