import { mkdirSync } from 'node:fs';
import { open, readFile, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { UnderstudyEvent } from '../core/index.js';

type Listener = (event: UnderstudyEvent) => void;

/**
 * The event log: every change of state, appended to `events.jsonl` and fsynced in
 * batches off the request path; listeners (metrics, logs) see each event at once.
 * `flushed()` resolves once everything published so far is on disk.
 */
export class EventLog {
  private readonly listeners = new Set<Listener>();
  private readonly recent: UnderstudyEvent[] = [];
  private pending: string[] = [];
  private writing: Promise<void> = Promise.resolve();
  private handle: Promise<FileHandle> | undefined;
  private closed = false;

  constructor(
    readonly file: string,
    /** Told when a write fails (a full disk): the event stays in memory and later writes go on. */
    private readonly onWriteError: (error: unknown) => void = () => {},
    private readonly keep = 10_000,
  ) {
    mkdirSync(path.dirname(file), { recursive: true });
  }

  /** Events from earlier runs, so the timeline survives a restart. */
  async loadHistory(): Promise<void> {
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw error;
    }
    const lines = text.split('\n');
    for (const line of lines.slice(Math.max(0, lines.length - this.keep - 1))) {
      if (!line) continue;
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
    this.handle ??= open(this.file, 'a');
    try {
      const handle = await this.handle;
      await handle.appendFile(batch);
      await handle.datasync();
    } catch (error) {
      // Open the file afresh next time: the disk may have room again by then.
      const broken = this.handle;
      this.handle = undefined;
      await broken.then((h) => h.close()).catch(() => {});
      throw error;
    }
  }
}
