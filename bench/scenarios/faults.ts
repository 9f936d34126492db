import type { ModelServer } from '../../test/support/fixture.js';
import { percentile, runLoad, type RequestResult } from '../../test/support/load.js';
import type { ProxyLauncher, ProxyName, RunningProxy } from '../proxies/types.js';
import { freshDir, inferRequest, progress, scheduleFault, startBackends } from '../workload.js';

export const RATE = 100;
export const RUN_MS = 15_000;
export const FAULT_AT_MS = 5_000;
export const AFTER_FAULT_WINDOW_MS = 10_000;
export const BASELINE_MS = 10_000;
export const CLIENT_TIMEOUT_MS = 2_000;

export const FAULTS = {
  none: { label: 'none (baseline)', apply: null },
  sigkill: { label: 'SIGKILL', apply: (p: ModelServer) => p.kill('SIGKILL') },
  // stop() sends SIGCONT before it terminates the primary.
  sigstop: { label: 'SIGSTOP', apply: (p: ModelServer) => p.kill('SIGSTOP') },
  error500: { label: 'HTTP 500s (SIGUSR1)', apply: (p: ModelServer) => p.kill('SIGUSR1') },
  slow: { label: 'slow, 3 s (SIGUSR2)', apply: (p: ModelServer) => p.kill('SIGUSR2') },
} as const;

export type FaultName = keyof typeof FAULTS;

export interface FaultCaseResult {
  proxy: ProxyName;
  fault: FaultName;
  total: number;
  failed: number;
  failures: Record<string, number>;
  disruptionMs: number;
  /** p99 latency of requests started in the window after the fault; of all requests for the baseline. */
  p99Ms: number;
  /** Answers by the model server that gave them. */
  servedBy: Record<string, number>;
}

function countTags(results: RequestResult[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const { tag } of results) if (tag !== null) counts[tag] = (counts[tag] ?? 0) + 1;
  return counts;
}

async function measure(url: string, primary: ModelServer, proxy: ProxyName, fault: FaultName): Promise<FaultCaseResult> {
  const { apply } = FAULTS[fault];
  const scheduled = apply ? scheduleFault(() => apply(primary), FAULT_AT_MS) : null;
  const run = await runLoad({ ...inferRequest, url: `${url}/v1/infer`, rate: RATE, durationMs: apply ? RUN_MS : BASELINE_MS, timeoutMs: CLIENT_TIMEOUT_MS });
  scheduled?.cancel();

  const faultAt = scheduled?.at() ?? null;
  const measured = faultAt === null ? run.results : run.results.filter((r) => r.start >= faultAt && r.start < faultAt + AFTER_FAULT_WINDOW_MS);
  const { total, failed, failures, disruptionMs } = run.summary();
  return {
    proxy,
    fault,
    total,
    failed,
    failures,
    disruptionMs,
    p99Ms: percentile(measured.map((r) => r.end - r.start), 99),
    servedBy: countTags(run.results),
  };
}

async function runCase(launcher: ProxyLauncher, fault: FaultName, root: string): Promise<FaultCaseResult> {
  const backends = await startBackends(50);
  let proxy: RunningProxy | undefined;
  try {
    proxy = await launcher.start(backends.ports, await freshDir(root, launcher.name));
    return await measure(proxy.url, backends.primary, launcher.name, fault);
  } finally {
    await proxy?.stop();
    await backends.stop();
  }
}

/** Each proxy in front of a fresh primary and hot standby, under each fault in turn. */
export async function runFaults(launchers: ProxyLauncher[], root: string): Promise<FaultCaseResult[]> {
  const results: FaultCaseResult[] = [];
  for (const launcher of launchers) {
    for (const fault of Object.keys(FAULTS) as FaultName[]) {
      progress(`faults: ${launcher.name}, ${FAULTS[fault].label}`);
      const result = await runCase(launcher, fault, root);
      progress(`  ${result.failed}/${result.total} failed, disruption ${Math.round(result.disruptionMs)} ms, p99 ${Math.round(result.p99Ms)} ms`);
      results.push(result);
    }
  }
  return results;
}
