/** Log lines kept in memory for the dashboard (a request id leads to its lines). */
const KEEP_LINES = 5000;

/**
 * The newest log lines, as pino wrote them: a destination for `pino.multistream`
 * beside stdout. Searching is a substring scan, fine for a few thousand lines.
 */
export class LogRing {
  private readonly lines: string[] = [];

  constructor(private readonly keep = KEEP_LINES) {}

  write(line: string): void {
    this.lines.push(line.endsWith('\n') ? line.slice(0, -1) : line);
    if (this.lines.length > this.keep) this.lines.splice(0, this.lines.length - this.keep);
  }

  /** Lines that mention `text` (a request id), oldest first, parsed. */
  find(text: string, limit = 200): unknown[] {
    if (text === '') return [];
    const found: unknown[] = [];
    for (const line of this.lines) {
      if (!line.includes(text)) continue;
      try {
        found.push(JSON.parse(line));
      } catch {
        found.push({ msg: line });
      }
    }
    return found.slice(-limit);
  }
}
