import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Understudy } from '../controller/index.js';
import type { JobView } from '../jobs/index.js';

/** A page that reads slower than this much buffered output is dropped; it reconnects and starts afresh. */
const MAX_BUFFERED = 4 * 1024 * 1024;
/** State changes in one burst (a failover is several events) go out as one status message. */
const STATUS_COALESCE_MS = 25;
/** Job progress is sent at most this often per job. */
const JOB_COALESCE_MS = 200;
const TICK_MS = 1000;

/**
 * The dashboard's live feed, `GET /v1/live` (server-sent events): one `hello` with
 * everything a page draws, then `event` for each event as it is published, `status`
 * right after state changes, `job` as jobs progress, and `traffic` once a second with
 * the second just closed. One set of listeners and one timer serve every open page,
 * and each message is serialised once for all of them.
 */
export class LiveFeed {
  private readonly pages = new Set<ServerResponse>();
  private stopListening: (() => void)[] = [];
  private tickTimer: NodeJS.Timeout | undefined;
  private statusTimer: NodeJS.Timeout | undefined;
  private readonly jobTimers = new Map<string, { view: JobView; timer: NodeJS.Timeout }>();

  constructor(private readonly app: Understudy) {}

  get open(): number {
    return this.pages.size;
  }

  attach(req: IncomingMessage, res: ServerResponse): void {
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-store',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    res.write(`retry: 1000\n\n`);
    // Seconds left open since the last request (no page was watching) are closed first.
    this.app.traffic.settle();
    const hello = {
      time: Date.now(),
      node: this.app.config.cluster?.node ?? null,
      services: this.app.status(),
      traffic: this.app.traffic.series(),
      last: this.app.traffic.lastRequests(),
      live: this.pages.size + 1,
    };
    res.write(frame('hello', hello));
    this.pages.add(res);
    if (this.pages.size === 1) this.listen();
    const leave = () => {
      if (!this.pages.delete(res)) return;
      if (this.pages.size === 0) this.quiet();
    };
    req.once('close', leave);
    res.once('close', leave);
  }

  close(): void {
    for (const page of this.pages) page.end();
    this.pages.clear();
    this.quiet();
  }

  private listen(): void {
    this.stopListening.push(
      this.app.events.subscribe((event) => {
        this.broadcast(frame('event', event));
        this.statusTimer ??= setTimeout(() => {
          this.statusTimer = undefined;
          this.sendStatus();
        }, STATUS_COALESCE_MS);
      }),
    );
    try {
      this.stopListening.push(this.app.jobs.subscribeAll((view) => this.jobChanged(view)));
    } catch {
      // No job runner yet (Understudy still starting): job-state events still reach the page.
    }
    this.tickTimer = setInterval(() => this.tick(), TICK_MS);
    this.tickTimer.unref();
  }

  private quiet(): void {
    for (const stop of this.stopListening) stop();
    this.stopListening = [];
    clearInterval(this.tickTimer);
    clearTimeout(this.statusTimer);
    this.tickTimer = this.statusTimer = undefined;
    for (const { timer } of this.jobTimers.values()) clearTimeout(timer);
    this.jobTimers.clear();
  }

  private jobChanged(view: JobView): void {
    const waiting = this.jobTimers.get(view.id);
    if (waiting) {
      waiting.view = view;
      return;
    }
    const final = view.state !== 'running' && view.state !== 'paused';
    if (final) {
      this.broadcast(frame('job', view));
      return;
    }
    const entry = {
      view,
      timer: setTimeout(() => {
        this.jobTimers.delete(view.id);
        this.broadcast(frame('job', entry.view));
      }, JOB_COALESCE_MS),
    };
    this.jobTimers.set(view.id, entry);
  }

  private tick(): void {
    const closed = this.app.traffic.tick();
    this.broadcast(frame('traffic', { time: Date.now(), seconds: closed, last: this.app.traffic.lastRequests() }));
    this.sendStatus();
  }

  private sendStatus(): void {
    this.broadcast(frame('status', { time: Date.now(), services: this.app.status() }));
  }

  private broadcast(text: string): void {
    for (const page of this.pages) {
      if (page.writableLength > MAX_BUFFERED) {
        page.destroy();
        continue;
      }
      page.write(text);
    }
  }
}

function frame(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}
