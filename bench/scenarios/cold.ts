import { fetchStats, MODEL_SERVER_PATH, startModelServer, type ModelServer } from '../../test/support/fixture.js';
import { isFailure, percentile, runLoad } from '../../test/support/load.js';
import { freePort } from '../../test/support/ports.js';
import { readyProbe, startUnderstudy, type UnderstudyGateway } from '../proxies/understudy.js';
import { freshDir, inferRequest, progress, scheduleFault } from '../workload.js';

const RATE = 20;
const RUN_MS = 10_000;
const FAULT_AT_MS = 3_000;
/** Long enough that a request waiting in Understudy's queue for the cold start is not cut off by the client. */
const CLIENT_TIMEOUT_MS = 10_000;
const COLD_LOAD_DELAY_MS = 1_500;

export interface ColdResult {
  total: number;
  failed: number;
  failures: Record<string, number>;
  /** From the SIGKILL to the first successful answer from the cold standby. */
  takeoverMs: number | null;
  /** The part of the cold standby's own start-up (process start to model loaded) that came after the fault. */
  coldStartupMs: number | null;
  /** From the no-ready-instance event to the first answer from the cold standby, less coldStartupMs: what Understudy itself added. */
  addedMs: number | null;
  /** From the SIGKILL to Understudy's no-ready-instance event. */
  detectionMs: number | null;
  p99Ms: number;
}

function services(primaryUrl: string, coldPort: number): Record<string, unknown> {
  const cold = {
    tier: 'cold',
    url: `http://127.0.0.1:${coldPort}`,
    runtime: {
      type: 'process',
      // --latency 0: the first answer times the take-over, not the model's own inference.
      command: [process.execPath, MODEL_SERVER_PATH, '--port', String(coldPort), '--name', 'cold', '--load-delay', String(COLD_LOAD_DELAY_MS), '--latency', '0'],
    },
    probes: { startup: { http: { path: '/health' }, interval: '50ms', budget: '30s' } },
  };
  return {
    infer: {
      route: { pathPrefix: '/' },
      instances: { primary: { tier: 'primary', url: primaryUrl, probes: readyProbe }, cold },
    },
  };
}

async function measure(gateway: UnderstudyGateway, primary: ModelServer, coldPort: number): Promise<ColdResult> {
  const scheduled = scheduleFault(() => primary.kill('SIGKILL'), FAULT_AT_MS);
  const run = await runLoad({ ...inferRequest, url: `${gateway.url}/v1/infer`, rate: RATE, durationMs: RUN_MS, timeoutMs: CLIENT_TIMEOUT_MS });
  scheduled.cancel();
  const faultAt = scheduled.at();
  if (faultAt === null) throw new Error('the fault was never applied');

  const coldAnswers = run.results.filter((r) => r.tag === 'cold' && !isFailure(r)).map((r) => r.end);
  const takeoverMs = coldAnswers.length > 0 ? Math.min(...coldAnswers) - faultAt : null;
  const stats = await fetchStats(`http://127.0.0.1:${coldPort}`).catch(() => null);
  const coldStartupMs = stats?.readyAt ? Math.max(0, stats.readyAt - Math.max(stats.startedAt, faultAt)) : null;
  const events = await gateway.events('infer').catch(() => []);
  const noReady = events.find((e) => e.type === 'no-ready-instance' && e.time >= Math.floor(faultAt));

  const { total, failed, failures } = run.summary();
  return {
    total,
    failed,
    failures,
    takeoverMs,
    coldStartupMs,
    addedMs:
      takeoverMs !== null && coldStartupMs !== null && noReady ? takeoverMs - (noReady.time - faultAt) - coldStartupMs : null,
    detectionMs: noReady ? noReady.time - faultAt : null,
    p99Ms: percentile(run.results.filter((r) => r.start >= faultAt).map((r) => r.end - r.start), 99),
  };
}

/** SIGKILL the only running instance: Understudy must start the cold standby and hold requests until it is ready. */
export async function runCold(root: string): Promise<ColdResult> {
  progress('cold: understudy, SIGKILL with a cold standby');
  const primary = await startModelServer({ name: 'primary', latencyMs: 50 });
  let gateway: UnderstudyGateway | undefined;
  try {
    const coldPort = await freePort();
    gateway = await startUnderstudy(services(primary.url, coldPort), await freshDir(root, 'understudy-cold'), { service: 'infer', instance: 'primary' });
    const result = await measure(gateway, primary, coldPort);
    progress(`  ${result.failed}/${result.total} failed, take-over ${Math.round(result.takeoverMs ?? NaN)} ms, added ${Math.round(result.addedMs ?? NaN)} ms`);
    return result;
  } finally {
    await gateway?.stop();
    await primary.stop();
  }
}
