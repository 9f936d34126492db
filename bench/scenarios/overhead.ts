import { percentile, runLoad, type RequestResult } from '../../test/support/load.js';
import type { ProxyLauncher, ProxyName, RunningProxy } from '../proxies/types.js';
import { freshDir, inferRequest, progress, startBackends } from '../workload.js';

const LATENCY_RATE = 100;
const LATENCY_MS = 10_000;
const THROUGHPUT_CONCURRENCY = 32;
const THROUGHPUT_MS = 10_000;
/**
 * Each measurement is split into rounds that visit every target in turn, so that
 * whatever else the machine is doing meanwhile is shared out instead of landing on one.
 */
const ROUNDS = 5;

export type Target = 'direct' | ProxyName;

export interface OverheadResult {
  target: Target;
  p50Ms: number;
  p99Ms: number;
  /** Failed requests over both measurements. */
  failed: number;
  /** Successful requests per second, closed loop. */
  throughput: number;
}

interface Tally {
  target: Target;
  url: string;
  latencies: number[];
  failed: number;
  ok: number;
  spanMs: number;
}

const latency = (r: RequestResult) => r.end - r.start;

async function measureRound(tally: Tally): Promise<void> {
  const request = { ...inferRequest, url: `${tally.url}/v1/infer` };
  const paced = await runLoad({ ...request, rate: LATENCY_RATE, durationMs: LATENCY_MS / ROUNDS });
  const flooded = (await runLoad({ ...request, concurrency: THROUGHPUT_CONCURRENCY, durationMs: THROUGHPUT_MS / ROUNDS })).summary();
  tally.latencies.push(...paced.results.map(latency));
  tally.failed += paced.failed + flooded.failed;
  tally.ok += flooded.ok;
  tally.spanMs += flooded.spanMs;
}

function toResult({ target, latencies, failed, ok, spanMs }: Tally): OverheadResult {
  return { target, p50Ms: percentile(latencies, 50), p99Ms: percentile(latencies, 99), failed, throughput: spanMs > 0 ? ok / (spanMs / 1000) : 0 };
}

/** Latency and throughput straight to a model server that answers at once, and through each proxy. */
export async function runOverhead(launchers: ProxyLauncher[], root: string): Promise<OverheadResult[]> {
  const backends = await startBackends(0);
  const proxies: RunningProxy[] = [];
  try {
    const tallies: Tally[] = [{ target: 'direct', url: backends.primary.url, latencies: [], failed: 0, ok: 0, spanMs: 0 }];
    for (const launcher of launchers) {
      const proxy = await launcher.start(backends.ports, await freshDir(root, launcher.name));
      proxies.push(proxy);
      tallies.push({ target: launcher.name, url: proxy.url, latencies: [], failed: 0, ok: 0, spanMs: 0 });
    }
    for (const { url } of tallies) {
      // Warms up connection pools and the JIT so neither is billed to the first round.
      await runLoad({ ...inferRequest, url: `${url}/v1/infer`, concurrency: 8, durationMs: 1_000 });
    }
    for (let round = 1; round <= ROUNDS; round++) {
      progress(`overhead: round ${round}/${ROUNDS} (${tallies.map((t) => t.target).join(', ')})`);
      for (const tally of tallies) await measureRound(tally);
    }
    const results = tallies.map(toResult);
    for (const r of results) progress(`  ${r.target}: p50 ${r.p50Ms.toFixed(2)} ms, p99 ${r.p99Ms.toFixed(2)} ms, ${Math.round(r.throughput)} req/s`);
    return results;
  } finally {
    await Promise.all(proxies.map((proxy) => proxy.stop()));
    await backends.stop();
  }
}
