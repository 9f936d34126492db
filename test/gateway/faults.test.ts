import { afterEach, describe, expect, it } from 'vitest';
import { startModelServer, stopAll, type ModelServer } from '../support/fixture.js';
import { closeAllGateways, on, startGateway, type RunningGateway } from '../support/gateway.js';
import { runLoad, type RequestResult } from '../support/load.js';

/*
 * The four faults of the primary from the issue, each under a steady stream of
 * requests: the client must not see one failure, because the hot standby was there.
 */

afterEach(async () => {
  await closeAllGateways();
  await stopAll();
});

async function pair(): Promise<{ primary: ModelServer; hot: ModelServer; gateway: RunningGateway }> {
  const [primary, hot] = await Promise.all([
    startModelServer({ name: 'primary', latencyMs: 20, waitFor: 'ready' }),
    startModelServer({ name: 'hot', latencyMs: 20, waitFor: 'ready' }),
  ]);
  const gateway = await startGateway(`
stateDir: STATE
gateway: { listen: "127.0.0.1:0" }
admin: { listen: "127.0.0.1:0" }
services:
  infer:
    route: { pathPrefix: / }
    instances:
      primary: { tier: primary, url: "${primary.url}", probes: { ready: { http: { path: /health }, interval: 1s } } }
      hot: { tier: hot, url: "${hot.url}", probes: { ready: { http: { path: /health }, interval: 1s } } }
`);
  await gateway.event(on.active('primary'), 10_000, 'primary active');
  await gateway.event(on.state('hot', 'ready'), 10_000, 'hot ready');
  return { primary, hot, gateway };
}

/**
 * 100 requests/s for `durationMs`; the fault is applied once `faultAfter` answers have
 * come back (a signal from the traffic itself, not a timer).
 */
async function underLoad(gateway: RunningGateway, fault: () => void | Promise<void>, durationMs = 4000, faultAfter = 100) {
  let answered = 0;
  let faultAt = Infinity;
  const run = await runLoad({
    url: `${gateway.url}/v1/infer`,
    method: 'POST',
    body: JSON.stringify({ input: 'hello' }),
    headers: { 'content-type': 'application/json' },
    rate: 100,
    durationMs,
    timeoutMs: 10_000,
    tagHeader: 'x-understudy-instance',
    onResult: () => {
      if (++answered === faultAfter) {
        faultAt = Date.now();
        void fault();
      }
    },
  });
  expect(faultAt).toBeLessThan(Infinity);
  return { run, faultAt };
}

function failures(results: RequestResult[]): string[] {
  return results.filter((r) => r.error !== null || r.status !== 200).map((r) => `${r.status} ${r.error}`);
}

function servedBy(results: RequestResult[], from: number): Set<string | null> {
  return new Set(results.filter((r) => r.start >= from).map((r) => r.tag));
}

describe('a fault of the primary under steady load', () => {
  it('SIGKILL: no failed request, traffic on the standby', async () => {
    const { primary, gateway } = await pair();
    const { run, faultAt } = await underLoad(gateway, () => primary.kill('SIGKILL'));
    expect(failures(run.results)).toEqual([]);
    expect(run.results.length).toBeGreaterThan(300);
    expect(servedBy(run.results, faultAt + 100)).toEqual(new Set(['hot']));
  });

  it('SIGSTOP (port open, no answers): no failed request, in-flight requests retried on the standby', async () => {
    const { primary, gateway } = await pair();
    const { run, faultAt } = await underLoad(gateway, () => primary.kill('SIGSTOP'));
    expect(failures(run.results)).toEqual([]);
    const down = await gateway.event(on.state('primary', 'down'));
    expect(down.reason).toMatch(/slower than/);
    expect(servedBy(run.results, faultAt + 2000)).toEqual(new Set(['hot']));
    // Requests stuck on the hung primary were moved when it was declared down, not left to time out.
    const retries = (await gateway.app.metrics.retries.get()).values;
    expect(retries.find((v) => v.labels.reason === 'instance-down')?.value).toBeGreaterThan(0);
  });

  it('HTTP 500 from the primary while its health stays fine: no failed request', async () => {
    const { primary, gateway } = await pair();
    const { run, faultAt } = await underLoad(gateway, () => primary.fault('error500'));
    expect(failures(run.results)).toEqual([]);
    const down = await gateway.event(on.state('primary', 'down'));
    expect(down.reason).toMatch(/consecutive failed requests, last: answered 500/);
    expect(servedBy(run.results, faultAt + 1000)).toEqual(new Set(['hot']));
  });

  it('latency jumps to 3s while health stays fine: no failed request, traffic moves within seconds', async () => {
    const { primary, gateway } = await pair();
    const { run, faultAt } = await underLoad(gateway, () => primary.fault('slow', 3000));
    expect(failures(run.results)).toEqual([]);
    const down = await gateway.event(on.state('primary', 'down'));
    expect(down.time - faultAt).toBeLessThan(3000);
    expect(servedBy(run.results, down.time)).toEqual(new Set(['hot']));
    // No answer waited for the full 3s of the slow primary: they were moved.
    const after = run.results.filter((r) => r.start >= faultAt);
    expect(Math.max(...after.map((r) => r.end - r.start))).toBeLessThan(3000);
  });
});
