/** What the gateway tells the dashboard about one answered request (a slice of the proxy's report). */
export interface TrafficReport {
  service: string;
  instance: string | null;
  method: string;
  path: string;
  requestId: string;
  status: number;
  outcome: 'ok' | 'error' | 'cut' | 'client-abort';
  ms: number;
}

/** One second of one instance's traffic: requests, failed ones, latency quantiles in ms. */
export interface TrafficSecond {
  /** The second, in epoch seconds. */
  t: number;
  n: number;
  errors: number;
  p50: number | null;
  p95: number | null;
}

export interface RecentRequest {
  time: number;
  requestId: string;
  instance: string | null;
  method: string;
  path: string;
  status: number;
  outcome: TrafficReport['outcome'];
  ms: number;
}

/** Seconds of traffic kept for the dashboard's charts. */
const KEEP_SECONDS = 300;
/** Latencies kept per instance and second for the quantiles: beyond this, a reservoir sample. */
const SAMPLES_PER_SECOND = 512;
/** The last requests shown per service ("who answered"). */
const LAST_REQUESTS = 20;
/** A request answered by the gateway itself (no instance reached). */
export const NO_INSTANCE = '(gateway)';

interface OpenSecond {
  t: number;
  n: number;
  errors: number;
  samples: number[];
}

/**
 * The gateway's own recent figures per service and instance, one bucket per second,
 * for the dashboard's small charts: cheap to record (an array push on the request
 * path), quantiles computed once per closed second.
 */
export class RecentTraffic {
  private readonly open = new Map<string, Map<string, OpenSecond>>();
  private readonly closed = new Map<string, Map<string, TrafficSecond[]>>();
  private readonly last = new Map<string, RecentRequest[]>();
  /** Seconds closed since the last tick (by it, by a request in a later second, or by settle), for the next tick to hand out. */
  private unsent: { service: string; instance: string; second: TrafficSecond }[] = [];

  constructor(private readonly now: () => number = Date.now) {}

  record(report: TrafficReport): void {
    const time = this.now();
    const t = Math.floor(time / 1000);
    const instance = report.instance ?? NO_INSTANCE;
    let byInstance = this.open.get(report.service);
    if (!byInstance) this.open.set(report.service, (byInstance = new Map()));
    let second = byInstance.get(instance);
    if (second && second.t !== t) {
      this.unsent.push({ service: report.service, instance, second: this.close(report.service, instance, second) });
      second = undefined;
    }
    if (!second) byInstance.set(instance, (second = { t, n: 0, errors: 0, samples: [] }));
    second.n += 1;
    if (isError(report)) second.errors += 1;
    if (second.samples.length < SAMPLES_PER_SECOND) second.samples.push(report.ms);
    else {
      const slot = Math.floor(Math.random() * second.n);
      if (slot < SAMPLES_PER_SECOND) second.samples[slot] = report.ms;
    }
    let list = this.last.get(report.service);
    if (!list) this.last.set(report.service, (list = []));
    list.push({ time, requestId: report.requestId, instance: report.instance, method: report.method, path: report.path, status: report.status, outcome: report.outcome, ms: Math.round(report.ms * 100) / 100 });
    if (list.length > LAST_REQUESTS) list.splice(0, list.length - LAST_REQUESTS);
  }

  /**
   * Closes every second before the current one and returns each second closed since
   * the last tick (by this tick, or earlier by a request that began a new second), so
   * that every second is handed out by exactly one tick. Seconds are by service and
   * instance; two of one instance in one tick (a tick was late) keep the newer.
   */
  tick(): Record<string, Record<string, TrafficSecond>> {
    this.settle();
    const out: Record<string, Record<string, TrafficSecond>> = {};
    for (const { service, instance, second } of this.unsent) (out[service] ??= {})[instance] = second;
    this.unsent = [];
    return out;
  }

  /** Closes every second before the current one, keeping them for the next tick, and forgets seconds past the window. */
  settle(): void {
    const t = Math.floor(this.now() / 1000);
    for (const [service, byInstance] of this.open) {
      for (const [instance, second] of byInstance) {
        if (second.t >= t) continue;
        this.unsent.push({ service, instance, second: this.close(service, instance, second) });
        byInstance.delete(instance);
      }
    }
    // An instance that no longer gets traffic (the old primary after a failover) ages out too.
    for (const byInstance of this.closed.values()) {
      for (const [instance, seconds] of byInstance) {
        // The window is the KEEP_SECONDS seconds before the current one, as close() keeps them.
        trimBefore(seconds, t - 1 - KEEP_SECONDS);
        if (seconds.length === 0) byInstance.delete(instance);
      }
    }
  }

  /** Every kept second, by service and instance, oldest first (seconds without traffic are absent); call settle() first for the newest. */
  series(): Record<string, Record<string, TrafficSecond[]>> {
    const out: Record<string, Record<string, TrafficSecond[]>> = {};
    for (const [service, byInstance] of this.closed) {
      if (byInstance.size === 0) continue;
      out[service] = Object.fromEntries([...byInstance].map(([instance, seconds]) => [instance, [...seconds]]));
    }
    return out;
  }

  /** The last requests of each service, oldest first. */
  lastRequests(): Record<string, RecentRequest[]> {
    return Object.fromEntries([...this.last].map(([service, list]) => [service, [...list]]));
  }

  private close(service: string, instance: string, second: OpenSecond): TrafficSecond {
    const sorted = second.samples.sort((a, b) => a - b);
    const closed: TrafficSecond = { t: second.t, n: second.n, errors: second.errors, p50: quantile(sorted, 0.5), p95: quantile(sorted, 0.95) };
    let byInstance = this.closed.get(service);
    if (!byInstance) this.closed.set(service, (byInstance = new Map()));
    let seconds = byInstance.get(instance);
    if (!seconds) byInstance.set(instance, (seconds = []));
    seconds.push(closed);
    trimBefore(seconds, second.t - KEEP_SECONDS);
    return closed;
  }
}

/** Drops the seconds at or before `oldest` (the list is oldest first). */
function trimBefore(seconds: TrafficSecond[], oldest: number): void {
  let drop = 0;
  while (drop < seconds.length && seconds[drop]!.t <= oldest) drop += 1;
  if (drop > 0) seconds.splice(0, drop);
}

function isError(report: TrafficReport): boolean {
  return report.outcome === 'error' || report.outcome === 'cut' || report.status >= 500;
}

/** The nearest-rank quantile: the smallest value with at least q of the samples at or below it. */
function quantile(sorted: number[], q: number): number | null {
  if (sorted.length === 0) return null;
  const value = sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)]!;
  return Math.round(value * 100) / 100;
}
