import { afterEach, describe, expect, it } from 'vitest';
import { MODEL_SERVER_PATH } from '../support/fixture.js';
import { closeAllGateways, startGateway } from '../support/gateway.js';
import { freePorts } from '../support/ports.js';

afterEach(closeAllGateways);

function instance(name: string, tier: string, port: number): string {
  return `
      ${name}:
        tier: ${tier}
        url: http://127.0.0.1:${port}
        runtime: { type: process, command: [${process.execPath}, ${MODEL_SERVER_PATH}, --port, "${port}", --name, ${name}, --latency, "5"] }
        probes:
          startup: { http: { path: /health }, interval: 50ms, budget: 20s }`;
}

describe('scheduled drills', () => {
  it('runs a drill on its schedule, taking the fault kinds in turn, and skips one it cannot run, saying why', async () => {
    const [a, b, c, d] = await freePorts(4);
    const gateway = await startGateway(`stateDir: STATE
gateway: { listen: "127.0.0.1:0" }
admin: { listen: "127.0.0.1:0" }
services:
  infer:
    route: { pathPrefix: /infer/, stripPrefix: true }
    drill:
      request: { method: POST, path: /v1/infer, body: {} }
      schedule: "* * * * * *"
      faults: [error, kill]
      hold: 300ms
      jobItems: 2
    instances:${instance('primary', 'primary', a!)}${instance('hot', 'hot', b!)}
  quiet:
    route: { pathPrefix: /quiet/ }
    drill: { schedule: "* * * * * *", request: { path: /health } }
    instances:${instance('primary', 'primary', c!)}
      hot: { tier: hot, url: "http://127.0.0.1:${d}", probes: { ready: { http: { path: /health }, interval: 100ms } } }
`);
    const started = await gateway.event((e) => e.type === 'drill-started' && e.service === 'infer', 30_000, 'a scheduled drill');
    expect(started).toMatchObject({ fault: 'error', trigger: 'schedule', instances: ['primary'] });
    const finished = await gateway.event((e) => e.type === 'drill-finished' && e.service === 'infer', 60_000, 'the drill finished');
    // The probe requests went through the gateway's /infer/ prefix, which is stripped before the instance.
    expect(finished).toMatchObject({ passed: true, failedRequests: 0, lostItems: 0 });
    const next = await gateway.event((e) => e.type === 'drill-finished' && e.service === 'infer' && e.fault === 'kill', 60_000, 'the next kind');
    expect(next).toMatchObject({ passed: true, failedRequests: 0 });

    // `quiet`'s standby never comes up (nothing listens there): each turn is skipped, with the reason, and nothing is touched.
    // (The first turns may come while its primary is still starting too.)
    const skipped = await gateway.event((e) => e.type === 'drill-skipped' && e.service === 'quiet' && !e.reason.includes('primary is'), 30_000, 'a skipped drill');
    expect(skipped.reason).toMatch(/not healthy enough to drill: hot is (starting|down)/);
    // Its standby runs outside Understudy: only the gateway's faults are in its rotation.
    expect(gateway.app.drills.faultsFor(gateway.app.service('quiet')!)).toEqual(['error', 'slow']);
    expect(gateway.app.events.list({ service: 'quiet', type: 'drill-started' })).toEqual([]);
    expect(gateway.app.drills.nextRuns()).toMatchObject({ infer: expect.any(String), quiet: expect.any(String) });
  }, 90_000);
});
