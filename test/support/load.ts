import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, request, type Dispatcher } from 'undici';

export interface RequestResult {
  /** Epoch ms (fractional) when the request was issued; comparable with Date.now(). */
  start: number;
  end: number;
  /** null when no response head arrived. */
  status: number | null;
  /** 'timeout', 'outstanding-cap' or the client error code; null when a response was read completely. */
  error: string | null;
  bytes: number;
  /** The value of the tagHeader response header, if asked for. */
  tag: string | null;
}

export interface LoadOptions {
  url: string;
  method?: Dispatcher.HttpMethod;
  body?: string | Buffer;
  headers?: Record<string, string>;
  /** Open loop: requests per second, started on schedule however slow the answers are. */
  rate?: number;
  /** Closed loop: this many requests in flight at all times. */
  concurrency?: number;
  durationMs: number;
  maxRequests?: number;
  /** Per-request client timeout covering the whole exchange. */
  timeoutMs?: number;
  /** Open loop only: a scheduled request that would exceed this many in flight fails as 'outstanding-cap'. */
  maxOutstanding?: number;
  /** Stops issuing requests; those in flight finish or time out. */
  signal?: AbortSignal;
  /** A response header to record in each result's tag (e.g. which server answered). */
  tagHeader?: string;
  onResult?: (result: RequestResult) => void;
}

export interface LoadSummary {
  total: number;
  ok: number;
  failed: number;
  /** Failures by cause: an error name or an HTTP status. */
  failures: Record<string, number>;
  /** Latency percentiles in ms over every request, failed ones included. */
  p50: number;
  p90: number;
  p99: number;
  disruptionMs: number;
  /** From the first request's start to the last one's end. */
  spanMs: number;
  /** Successful requests per second over that span. */
  okPerSecond: number;
}

export interface LoadRun {
  results: RequestResult[];
  ok: number;
  failed: number;
  summary(): LoadSummary;
}

const DEFAULT_MAX_REQUESTS = 1_000_000;

export const epochNow = (): number => performance.timeOrigin + performance.now();

export function isFailure(result: RequestResult): boolean {
  return result.error !== null || result.status === null || result.status < 200 || result.status >= 300;
}

function percentileOfSorted(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(rank, 1)) - 1]!;
}

/** Nearest-rank percentile (p in 0..100); NaN for no values. */
export function percentile(values: number[], p: number): number {
  return percentileOfSorted([...values].sort((a, b) => a - b), p);
}

/** From the first failed request's start to the last failed request's end; 0 if none failed. */
export function disruptionWindow(results: RequestResult[]): number {
  let first = Infinity;
  let last = -Infinity;
  for (const result of results) {
    if (!isFailure(result)) continue;
    first = Math.min(first, result.start);
    last = Math.max(last, result.end);
  }
  return last < first ? 0 : last - first;
}

export function summarize(results: RequestResult[]): LoadSummary {
  const latencies = results.map((r) => r.end - r.start).sort((a, b) => a - b);
  const failures: Record<string, number> = {};
  let ok = 0;
  let first = Infinity;
  let last = -Infinity;
  for (const result of results) {
    first = Math.min(first, result.start);
    last = Math.max(last, result.end);
    if (!isFailure(result)) ok++;
    else {
      const cause = result.error ?? String(result.status);
      failures[cause] = (failures[cause] ?? 0) + 1;
    }
  }
  return {
    total: results.length,
    ok,
    failed: results.length - ok,
    failures,
    p50: percentileOfSorted(latencies, 50),
    p90: percentileOfSorted(latencies, 90),
    p99: percentileOfSorted(latencies, 99),
    disruptionMs: disruptionWindow(results),
    spanMs: last > first ? last - first : 0,
    okPerSecond: last > first ? ok / ((last - first) / 1000) : 0,
  };
}

function errorName(error: unknown): string {
  if (error instanceof Error) {
    const { code } = error as { code?: unknown };
    return typeof code === 'string' ? code : error.name;
  }
  return String(error);
}

function headerValue(value: string | string[] | undefined): string | null {
  return (Array.isArray(value) ? value[0] : value) ?? null;
}

async function send(dispatcher: Dispatcher, options: LoadOptions, timeoutMs: number): Promise<RequestResult> {
  const start = epochNow();
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  let status: number | null = null;
  let tag: string | null = null;
  let bytes = 0;
  try {
    const response = await request(options.url, {
      dispatcher,
      method: options.method ?? 'POST',
      headers: options.headers,
      body: options.body,
      signal: controller.signal,
    });
    status = response.statusCode;
    if (options.tagHeader) tag = headerValue(response.headers[options.tagHeader.toLowerCase()]);
    for await (const chunk of response.body) bytes += (chunk as Buffer).length;
    return { start, end: epochNow(), status, error: null, bytes, tag };
  } catch (error) {
    const name = controller.signal.aborted ? 'timeout' : errorName(error);
    return { start, end: epochNow(), status, error: name, bytes, tag };
  } finally {
    clearTimeout(timer);
  }
}

/** What the two loop shapes share: how to send, how to record a refused slot, when to stop. */
interface Driver {
  issue(): Promise<void>;
  refuse(): void;
  shouldStop(index: number, elapsedMs: number): boolean;
  signal?: AbortSignal;
}

async function openLoop(rate: number, maxOutstanding: number, driver: Driver): Promise<void> {
  const intervalMs = 1000 / rate;
  const t0 = performance.now();
  const outstanding = new Set<Promise<void>>();
  // Each request's due time comes from its index, so late timers never shift the schedule.
  for (let i = 0; !driver.shouldStop(i, i * intervalMs); i++) {
    const waitMs = t0 + i * intervalMs - performance.now();
    if (waitMs > 0) await sleep(waitMs, undefined, { signal: driver.signal }).catch(() => undefined);
    if (driver.signal?.aborted) break;
    if (outstanding.size >= maxOutstanding) {
      driver.refuse();
      continue;
    }
    const pending: Promise<void> = driver.issue().finally(() => outstanding.delete(pending));
    outstanding.add(pending);
  }
  await Promise.all(outstanding);
}

async function closedLoop(concurrency: number, driver: Driver): Promise<void> {
  const t0 = performance.now();
  let issued = 0;
  const worker = async () => {
    while (!driver.shouldStop(issued, performance.now() - t0)) {
      issued++;
      await driver.issue();
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
}

/**
 * Sends requests open loop (rate) or closed loop (concurrency) until durationMs or
 * maxRequests, whichever comes first. Each request is bounded by timeoutMs, so the
 * run ends by itself within durationMs + timeoutMs.
 */
export async function runLoad(options: LoadOptions): Promise<LoadRun> {
  const { rate, concurrency, durationMs, signal } = options;
  if ((rate === undefined) === (concurrency === undefined)) throw new Error('runLoad needs exactly one of rate and concurrency');
  if ((rate ?? concurrency!) <= 0) throw new Error('runLoad needs a positive rate or concurrency');
  if (!(durationMs > 0 && Number.isFinite(durationMs))) throw new Error('runLoad needs a finite positive durationMs');
  const maxRequests = options.maxRequests ?? DEFAULT_MAX_REQUESTS;
  const timeoutMs = options.timeoutMs ?? 2000;

  const agent = new Agent({ keepAliveTimeout: 30_000 });
  const results: RequestResult[] = [];
  const record = (result: RequestResult) => {
    results.push(result);
    options.onResult?.(result);
  };
  const driver: Driver = {
    issue: async () => record(await send(agent, options, timeoutMs)),
    refuse: () => {
      const now = epochNow();
      record({ start: now, end: now, status: null, error: 'outstanding-cap', bytes: 0, tag: null });
    },
    shouldStop: (index, elapsedMs) => index >= maxRequests || elapsedMs >= durationMs || signal?.aborted === true,
    signal,
  };

  try {
    if (rate !== undefined) await openLoop(rate, options.maxOutstanding ?? 1000, driver);
    else await closedLoop(concurrency!, driver);
  } finally {
    await agent.close();
  }

  results.sort((a, b) => a.start - b.start);
  const ok = results.filter((r) => !isFailure(r)).length;
  return { results, ok, failed: results.length - ok, summary: () => summarize(results) };
}
