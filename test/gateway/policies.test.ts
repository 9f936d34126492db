import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { MODEL_SERVER_PATH, startModelServer, stopAll } from '../support/fixture.js';
import { closeAllGateways, inferService, on, startGateway } from '../support/gateway.js';
import { runLoad } from '../support/load.js';
import { freePort } from '../support/ports.js';

afterEach(async () => {
  await closeAllGateways();
  await stopAll();
});

const processInstance = (port: number, name: string, extra = '') =>
  `runtime: { type: process, command: [node, "${MODEL_SERVER_PATH}", --port, "${port}", --name, ${name}${extra}], restartDelay: 50ms }`;

describe('a cold standby', () => {
  it('is started when nothing else can serve, and requests wait for it instead of failing', async () => {
    const [primary, hot, hot2] = await Promise.all([
      startModelServer({ name: 'primary', latencyMs: 10, waitFor: 'ready' }),
      startModelServer({ name: 'hot', latencyMs: 10, waitFor: 'ready' }),
      startModelServer({ name: 'hot2', latencyMs: 10, waitFor: 'ready' }),
    ]);
    const coldPort = await freePort();
    const gateway = await startGateway(inferService(`
instances:
  primary: { tier: primary, url: "${primary.url}" }
  hot: { tier: hot, url: "${hot.url}" }
  hot2: { tier: hot, url: "${hot2.url}" }
  cold:
    tier: cold
    url: "http://127.0.0.1:${coldPort}"
    ${processInstance(coldPort, 'cold', ', --load-delay, "1500"')}
    probes: { startup: { http: { path: /health }, interval: 50ms, budget: 30s } }
`));
    await gateway.event(on.active('primary'));
    await gateway.event(on.state('hot', 'ready'));
    await gateway.event(on.state('hot2', 'ready'));
    expect(gateway.app.service('infer')!.view().instances[3]!.state).toBe('stopped');

    let answered = 0;
    const run = await runLoad({
      url: `${gateway.url}/v1/infer`,
      rate: 50,
      durationMs: 4000,
      timeoutMs: 10_000,
      tagHeader: 'x-understudy-instance',
      onResult: () => {
        if (++answered !== 20) return;
        // Every running instance at once, more of them than retry.attempts: only the cold standby is left.
        for (const server of [primary, hot, hot2]) server.kill('SIGKILL');
      },
    });
    expect(run.results.filter((r) => r.status !== 200).map((r) => `${r.status} ${r.error}`)).toEqual([]);
    expect(run.results.some((r) => r.tag === 'cold')).toBe(true);
    const noReady = await gateway.event(on.type('no-ready-instance'));
    const coldActive = await gateway.event(on.active('cold', 'recovered'));
    // It really waited for the model to load (1.5s), it did not answer early.
    expect(coldActive.time - noReady.time).toBeGreaterThanOrEqual(1500);
  });

  it('answers 503 with Retry-After and a JSON reason once the queue timeout passes', async () => {
    const primary = await startModelServer({ name: 'primary', waitFor: 'ready' });
    const gateway = await startGateway(inferService(`
queue: { timeout: 300ms }
instances:
  primary: { tier: primary, url: "${primary.url}" }
`));
    await gateway.event(on.active('primary'));
    primary.kill('SIGKILL');
    const response = await request(`${gateway.url}/v1/infer`);
    expect(response.statusCode).toBe(503);
    expect(response.headers['retry-after']).toBe('5');
    const body = (await response.body.json()) as { error: { code: string; service: string; reason: string; message: string } };
    expect(body.error.code).toBe('NO_READY_INSTANCE');
    expect(body.error.service).toBe('infer');
    expect(body.error.message).toBe('no instance of infer became ready within 300ms');
    expect(body.error.reason).toMatch(/^primary is down: /);
  });
});

describe('timeouts.total', () => {
  it('bounds the wait in the queue too: 504 naming the timeout', async () => {
    const gateway = await startGateway(inferService(`
timeouts: { total: 300ms }
instances:
  primary: { tier: primary, url: "http://127.0.0.1:${await freePort()}" }
`));
    const response = await request(`${gateway.url}/v1/infer`);
    expect(response.statusCode).toBe(504);
    expect(await response.body.json()).toMatchObject({
      error: { code: 'UPSTREAM_TIMEOUT', message: 'the request took longer than timeouts.total (300ms)' },
    });
  });
});

describe('failback', () => {
  it('"after 1s stable" returns traffic to the restarted primary, "never" keeps it on the standby', async () => {
    for (const policy of ['"after 1s stable"', 'never']) {
      const [primaryPort, hot] = [await freePort(), await startModelServer({ name: 'hot', waitFor: 'ready' })];
      const gateway = await startGateway(inferService(`
failback: ${policy}
instances:
  primary:
    tier: primary
    url: "http://127.0.0.1:${primaryPort}"
    ${processInstance(primaryPort, 'primary')}
  hot: { tier: hot, url: "${hot.url}" }
`));
      await gateway.event(on.active('primary'));
      const pid = gateway.app.service('infer')!.view().instances[0]!.pid!;
      process.kill(pid, 'SIGKILL');
      await gateway.event(on.active('hot', 'failover'));
      const back = await gateway.event((e) => e.type === 'instance-state' && e.instance === 'primary' && e.to === 'ready' && e.time > 0 && e.reason.startsWith('startup'), 10_000);
      if (policy === 'never') {
        // Wait as long as the other policy needed, and a second more: nothing moves.
        await new Promise((resolve) => setTimeout(resolve, 2000));
        expect(gateway.app.service('infer')!.view().active).toBe('hot');
      } else {
        const failback = await gateway.event(on.active('primary', 'failback'));
        expect(failback.time - back.time).toBeGreaterThanOrEqual(1000);
      }
      await gateway.close();
      await stopAll();
    }
  });
});

describe('switchover', () => {
  it('moves traffic on purpose under load without failing a request', async () => {
    const [primary, hot] = await Promise.all([
      startModelServer({ name: 'primary', latencyMs: 100, waitFor: 'ready' }),
      startModelServer({ name: 'hot', latencyMs: 100, waitFor: 'ready' }),
    ]);
    const gateway = await startGateway(inferService(`
instances:
  primary: { tier: primary, url: "${primary.url}" }
  hot: { tier: hot, url: "${hot.url}" }
`));
    await gateway.event(on.state('hot', 'ready'));
    await gateway.event(on.active('primary'));
    const service = gateway.app.service('infer')!;
    let answered = 0;
    let movedAt = Infinity;
    const run = await runLoad({
      url: `${gateway.url}/v1/infer`,
      rate: 100,
      durationMs: 2000,
      tagHeader: 'x-understudy-instance',
      onResult: () => {
        if (++answered === 50) {
          movedAt = Date.now();
          expect(service.dispatch({ type: 'drain', instance: 'primary' })).toBeUndefined();
        }
      },
    });
    expect(run.results.filter((r) => r.status !== 200)).toEqual([]);
    expect(new Set(run.results.filter((r) => r.start > movedAt).map((r) => r.tag))).toEqual(new Set(['hot']));
    // In-flight work on the drained primary finished there before it was taken out.
    await gateway.event(on.state('primary', 'stopped'));
    expect((await primary.stats()).aborted).toBe(0);
  });
});

describe('flap damping', () => {
  it('quarantines an instance that keeps crashing, keeps it stopped, and keeps its log', async () => {
    const hot = await startModelServer({ name: 'hot', waitFor: 'ready' });
    const port = await freePort();
    const gateway = await startGateway(inferService(`
quarantine: { failures: 3, within: 1m }
instances:
  primary:
    tier: primary
    url: "http://127.0.0.1:${port}"
    ${processInstance(port, 'primary', ', --exit-after, "300", --exit-code, "3"')}
  hot: { tier: hot, url: "${hot.url}" }
`));
    const quarantined = await gateway.event(on.type('quarantined', 'primary'), 20_000);
    expect(quarantined.reason).toMatch(/^3 failures within 60000ms; kept stopped with its logs until resumed. Last: process exited with code 3/);
    const view = gateway.app.service('infer')!.view();
    expect(view.active).toBe('hot');
    expect(view.instances[0]!.state).toBe('quarantined');
    expect(view.instances[0]!.pid).toBeNull();
    const log = path.join(gateway.stateDir, 'logs', 'infer.primary.log');
    expect(existsSync(log)).toBe(true);
    expect(readFileSync(log, 'utf8').match(/understudy starts/g)).toHaveLength(3);
  });
});

describe('version pinning', () => {
  it('refuses a standby that serves another model version, so a failover cannot change the model', async () => {
    const [primary, hot] = await Promise.all([
      startModelServer({ name: 'primary', modelVersion: '1.0', waitFor: 'ready' }),
      startModelServer({ name: 'hot', modelVersion: '2.0', waitFor: 'ready' }),
    ]);
    const gateway = await startGateway(inferService(`
version: { expect: "1.0" }
queue: { timeout: 500ms }
instances:
  primary: { tier: primary, url: "${primary.url}" }
  hot: { tier: hot, url: "${hot.url}" }
`));
    await gateway.event(on.active('primary'));
    const mismatch = await gateway.event(on.type('version-mismatch', 'hot'));
    expect(mismatch.reason).toBe('serves version 2.0, expected 1.0; not admitted');
    primary.kill('SIGKILL');
    const response = await request(`${gateway.url}/v1/infer`);
    expect(response.statusCode).toBe(503);
    await response.body.dump();
    expect((await hot.stats()).requests).toBe(0);
    expect(gateway.app.service('infer')!.dispatch({ type: 'switchover', to: 'hot' })).toBe(
      'hot cannot take the traffic: it is serving version 2.0',
    );
  });
});
