import { Agent, request } from 'undici';
import type { SmokeConfig } from '../config/index.js';
import type { ProbeSample } from './types.js';

export interface ProbeTarget {
  /** The gateway's listener for the service, e.g. http://127.0.0.1:8080. */
  origin: string;
  /** The path a client sends (route prefix included). */
  path: string;
  /** Extra headers, e.g. Host for a service routed by host name. */
  headers: Record<string, string>;
  request: SmokeConfig;
}

/**
 * A drill's probe traffic: requests sent through the gateway, as a client would, at
 * `rate` per second until `stop()` or `max` requests. Each is recorded as its client
 * saw it: status, the instance that answered, latency, and whether it was good.
 */
export class ProbeTraffic {
  readonly samples: ProbeSample[] = [];
  private readonly inflight = new Set<Promise<void>>();
  /** Aborts the requests in flight when the drill must end now (a shutdown). */
  private readonly cut = new AbortController();
  // Enough connections that a slow fault (rate × delay requests open at once) queues in the gateway, never here.
  private readonly agent = new Agent({ connections: 1024, keepAliveTimeout: 10_000 });
  private timer: NodeJS.Timeout | undefined;
  private sent = 0;
  private stopped = false;

  constructor(
    private readonly target: ProbeTarget,
    private readonly options: { rate: number; max: number; now: () => number },
  ) {}

  /** Begins sending; returns at once. */
  start(): void {
    const interval = 1000 / this.options.rate;
    const begun = performance.now();
    // Paced by elapsed time rather than by a fixed interval, so a busy event loop catches up instead of drifting.
    const tick = () => {
      if (this.stopped) return;
      const due = Math.floor((performance.now() - begun) / interval) + 1;
      while (this.sent < due && this.sent < this.options.max) this.send();
      if (this.sent >= this.options.max) return;
      this.timer = setTimeout(tick, Math.max(1, interval / 2));
    };
    tick();
  }

  /** Whether every request allowed has been sent. */
  get exhausted(): boolean {
    return this.sent >= this.options.max;
  }

  /**
   * Stops sending and waits for the requests in flight (each bounded by the request's
   * timeout); with `now`, cuts them instead (they are recorded as failed).
   */
  async stop(now = false): Promise<ProbeSample[]> {
    this.stopped = true;
    clearTimeout(this.timer);
    if (now) this.cut.abort(new Error('the drill was cut short'));
    while (this.inflight.size > 0) await Promise.all([...this.inflight]);
    await (now ? this.agent.destroy() : this.agent.close());
    return this.samples.sort((a, b) => a.sentAt - b.sentAt);
  }

  private send(): void {
    this.sent += 1;
    const done = this.probe().finally(() => this.inflight.delete(done));
    this.inflight.add(done);
  }

  private async probe(): Promise<void> {
    const { request: spec, origin, path, headers } = this.target;
    const sentAt = this.options.now();
    const body = spec.body === undefined ? undefined : typeof spec.body === 'string' ? spec.body : JSON.stringify(spec.body);
    const contentType: Record<string, string> = body !== undefined && typeof spec.body !== 'string' ? { 'content-type': 'application/json' } : {};
    let status: number | null = null;
    let instance: string | null = null;
    let error: string | null = null;
    try {
      const answer = await request(new URL(path, origin), {
        method: spec.method,
        headers: { ...contentType, ...spec.headers, ...headers, 'x-understudy-drill': '1' },
        body,
        dispatcher: this.agent,
        signal: AbortSignal.any([this.cut.signal, AbortSignal.timeout(spec.timeout)]),
      });
      status = answer.statusCode;
      const header = answer.headers['x-understudy-instance'];
      instance = typeof header === 'string' ? header : null;
      const text = await answer.body.text();
      error = judge(spec, status, text);
    } catch (caught) {
      error = (caught as Error).name === 'TimeoutError' ? `no answer within ${spec.timeout}ms` : (caught as Error).message;
    }
    this.samples.push({ sentAt, endedAt: this.options.now(), status, instance, ok: error === null, error });
  }
}

/** Why an answer is not a good one, or null when it is (the same rules as a deploy's smoke request). */
export function judge(spec: SmokeConfig, status: number, text: string): string | null {
  const statuses = spec.status === undefined ? undefined : [spec.status].flat();
  const statusOk = statuses ? statuses.includes(status) : status >= 200 && status < 300;
  if (!statusOk) return `answered ${status}: ${text.slice(0, 160)}`;
  if (spec.contains !== undefined && !text.includes(spec.contains)) return `answered ${status} without ${JSON.stringify(spec.contains)}`;
  return null;
}
