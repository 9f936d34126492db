import { mkdirSync } from 'node:fs';
import { open, readdir, readFile, rename, rm, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { UnderstudyEvent } from '../core/index.js';

type Listener = (event: UnderstudyEvent) => void;

/** When the file is rotated: past `maxFileSize` bytes it becomes FILE.1, the older ones move up, and past `keepFiles` they go. */
export interface Rotation {
  maxFileSize: number;
  keepFiles: number;
}

/** 32 MiB × (1 + 4) files: about half a million events on disk at most. */
export const DEFAULT_ROTATION: Rotation = { maxFileSize: 32 * 1024 * 1024, keepFiles: 4 };

/**
 * The event log: every change of state, appended to `events.jsonl` and fsynced in
 * batches off the request path; listeners (metrics, logs) see each event at once.
 * `flushed()` resolves once everything published so far is on disk. The file is
 * rotated by size (events.1.jsonl is the newest rotated one); the newest `keep` events,
 * from the rotated files too, are read back at a restart.
 */
export class EventLog {
  private readonly listeners = new Set<Listener>();
  private readonly recent: UnderstudyEvent[] = [];
  private pending: string[] = [];
  private writing: Promise<void> = Promise.resolve();
  private handle: Promise<FileHandle> | undefined;
  /** Bytes in the open file; known once it is open. */
  private size = 0;
  private rotationFailed = false;
  private closed = false;

  constructor(
    readonly file: string,
    /** Told when a write fails (a full disk): the event stays in memory and later writes go on. */
    private readonly onWriteError: (error: unknown) => void = () => {},
    private readonly keep = 10_000,
    private readonly rotation: Rotation = DEFAULT_ROTATION,
  ) {
    mkdirSync(path.dirname(file), { recursive: true });
  }

  /** The n-th rotated file: events.1.jsonl is the newest. */
  rotated(n: number): string {
    const { dir, name, ext } = path.parse(this.file);
    return path.join(dir, `${name}.${n}${ext}`);
  }

  /** Events from earlier runs, so the timeline survives a restart (and a rotation). */
  async loadHistory(): Promise<void> {
    // Newest file first, until `keep` events are found; then remembered oldest first.
    const files: string[][] = [];
    let found = 0;
    for (let n = 0; n <= this.rotation.keepFiles && found < this.keep; n++) {
      let text: string;
      try {
        text = await readFile(n === 0 ? this.file : this.rotated(n), 'utf8');
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw error;
      }
      const lines = text.split('\n').filter((line) => line !== '');
      const wanted = lines.slice(Math.max(0, lines.length - (this.keep - found)));
      files.unshift(wanted);
      found += wanted.length;
    }
    for (const line of files.flat()) {
      try {
        this.remember(JSON.parse(line) as UnderstudyEvent);
      } catch {
        // A torn last line from a crash mid-write is skipped; the rest of the log is intact.
      }
    }
  }

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  publish(event: UnderstudyEvent): void {
    this.remember(event);
    for (const listener of this.listeners) listener(event);
    if (this.closed) return;
    this.pending.push(`${JSON.stringify(event)}\n`);
    if (this.pending.length === 1) {
      this.writing = this.writing.then(() => this.flushPending()).catch((error: unknown) => this.onWriteError(error));
    }
  }

  /** Events oldest first, filtered. */
  list(filter: { service?: string; since?: number; type?: string; limit?: number } = {}): UnderstudyEvent[] {
    const matching = this.recent.filter(
      (e) =>
        (filter.service === undefined || e.service === filter.service) &&
        (filter.since === undefined || e.time >= filter.since) &&
        (filter.type === undefined || e.type === filter.type),
    );
    return filter.limit === undefined ? matching : matching.slice(-filter.limit);
  }

  flushed(): Promise<void> {
    return this.writing;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.writing;
    if (this.handle) await (await this.handle).close();
  }

  private remember(event: UnderstudyEvent): void {
    this.recent.push(event);
    if (this.recent.length > this.keep) this.recent.splice(0, this.recent.length - this.keep);
  }

  private async flushPending(): Promise<void> {
    const batch = this.pending.join('');
    this.pending = [];
    this.handle ??= this.openFile();
    try {
      const handle = await this.handle;
      await handle.appendFile(batch);
      await handle.datasync();
      this.size += Buffer.byteLength(batch);
    } catch (error) {
      // Open the file afresh next time: the disk may have room again by then.
      const broken = this.handle;
      this.handle = undefined;
      await broken?.then((h) => h.close()).catch(() => {});
      throw error;
    }
    // The batch is on disk: a rotation that fails is told once, and appending goes on in the full file.
    if (this.rotation.maxFileSize > 0 && this.size >= this.rotation.maxFileSize && !this.rotationFailed) {
      try {
        await this.rotate();
      } catch (error) {
        this.rotationFailed = true;
        this.onWriteError(new Error(`could not rotate ${this.file} (events are still written to it; rotation is tried again after a restart): ${(error as Error).message}`));
      }
    }
  }

  private async openFile(): Promise<FileHandle> {
    const handle = await open(this.file, 'a');
    try {
      this.size = (await handle.stat()).size;
    } catch (error) {
      await handle.close().catch(() => {});
      throw error;
    }
    return handle;
  }

  /** events.jsonl → events.1.jsonl, events.1.jsonl → events.2.jsonl, ...; the one past keepFiles is removed. The next write opens a new file. */
  private async rotate(): Promise<void> {
    const handle = this.handle;
    this.handle = undefined;
    await (await handle)?.close();
    const { keepFiles } = this.rotation;
    await rm(keepFiles === 0 ? this.file : this.rotated(keepFiles), { force: true });
    for (let n = keepFiles - 1; n >= 1; n--) {
      await rename(this.rotated(n), this.rotated(n + 1)).catch((error: NodeJS.ErrnoException) => {
        if (error.code !== 'ENOENT') throw error;
      });
    }
    if (keepFiles > 0) await rename(this.file, this.rotated(1));
    this.size = 0;
    // Rotated files past keepFiles (kept when it was larger) go too.
    const { dir, name, ext } = path.parse(this.file);
    const pattern = new RegExp(`^${escapeRegExp(name)}\\.(\\d+)${escapeRegExp(ext)}$`);
    for (const entry of await readdir(dir)) {
      const n = Number(pattern.exec(entry)?.[1] ?? 0);
      if (n > keepFiles) await rm(path.join(dir, entry), { force: true });
    }
  }
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
