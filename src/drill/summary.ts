import type { LatencySummary, ProbeSample } from './types.js';

/** p50, p99 and max latency of the good samples among `samples`. */
export function latencies(samples: ProbeSample[]): LatencySummary {
  const ms = samples.filter((s) => s.ok).map((s) => s.endedAt - s.sentAt).sort((a, b) => a - b);
  if (ms.length === 0) return { p50: null, p99: null, max: null };
  const at = (q: number) => ms[Math.min(ms.length - 1, Math.ceil(q * ms.length) - 1)]!;
  return { p50: round(at(0.5)), p99: round(at(0.99)), max: round(ms[ms.length - 1]!) };
}

/**
 * From the fault to the first good answer from an instance the fault did not hit.
 * 0 when the faulted instances carried no traffic at the fault; null when no such answer came.
 */
export function recoveryMs(samples: ProbeSample[], faultAt: number, hit: ReadonlySet<string>, carriedTraffic: boolean): number | null {
  if (!carriedTraffic) return 0;
  let first: number | undefined;
  for (const sample of samples) {
    if (!sample.ok || sample.endedAt < faultAt || sample.instance === null || hit.has(sample.instance)) continue;
    first = first === undefined ? sample.endedAt : Math.min(first, sample.endedAt);
  }
  return first === undefined ? null : round(first - faultAt);
}

export function round(ms: number): number {
  return Math.round(ms * 10) / 10;
}
