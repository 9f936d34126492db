import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { ServiceView } from '../../src/controller/index.js';
import type { UnderstudyEvent } from '../../src/core/index.js';
import { etcdAvailable, startEtcd, type EtcdCluster } from '../support/etcd.js';
import { MODEL_SERVER_PATH, startModelServer, stopAll, type ModelServer } from '../support/fixture.js';
import { freePorts } from '../support/ports.js';
import { waitUntil } from '../support/wait.js';
import { externalInstance, makeCluster, type TestCluster } from './support.js';

/* Cold standbys in a cluster: started on the leader's word through a desired-state key, by the node that runs them. */

let etcd: EtcdCluster;
let primary: ModelServer | undefined;
let cluster: TestCluster | undefined;

/** A cold standby run by `node` (a process: the fixture model server on `port`). */
function coldInstance(node: string, port: number): string {
  return `
      cold:
        tier: cold
        node: ${node}
        url: http://127.0.0.1:${port}
        runtime:
          type: process
          command: [${process.execPath}, ${MODEL_SERVER_PATH}, --port, "${port}", --name, cold]
          stopGrace: 2s
        probes:
          startup: { http: { path: /health }, interval: 50ms, budget: 60s }
          ready: { http: { path: /health }, interval: 200ms, fall: 2 }`;
}

async function answers(url: string): Promise<boolean> {
  return fetch(`${url}/health`, { signal: AbortSignal.timeout(500) }).then(
    (r) => r.ok,
    () => false,
  );
}

const statusOf = async (c: TestCluster, node: string) => (await c.nodes.get(node)!.api<{ services: Record<string, ServiceView> }>('GET', '/v1/status')).services.infer!;
const desiredEvents = async (c: TestCluster, node: string) =>
  (await c.nodes.get(node)!.api<{ events: UnderstudyEvent[] }>('GET', '/v1/events?type=desired-state')).events;

/** n1 leads (started first), then n2 and n3 join; all three seen as members. */
async function startLedByN1(c: TestCluster): Promise<void> {
  await c.start('n1');
  expect(await c.leader()).toBe('n1');
  await Promise.all(['n2', 'n3'].map((node) => c.start(node)));
  await waitUntil(async () => (await c.view('n1')).members.length === 3, { what: 'three live members' });
}

describe.skipIf(!etcdAvailable())('cold standbys on the leader\'s word', () => {
  beforeAll(async () => {
    etcd = await startEtcd();
  }, 60_000);
  afterAll(async () => {
    await stopAll();
    await etcd?.stop();
  });
  afterEach(async () => {
    await cluster?.stop();
    cluster = undefined;
    await primary?.stop();
    primary = undefined;
  });

  it('the primary dies: the leader (n1) has n2 start its cold standby, once, and every node sends traffic to it', async () => {
    primary = await startModelServer({ name: 'primary' });
    const [port] = await freePorts(1);
    const coldUrl = `http://127.0.0.1:${port}`;
    const c = (cluster = await makeCluster({ etcd: etcd.endpoints, instances: `${externalInstance('primary', 'primary', primary.url)}${coldInstance('n2', port!)}` }));
    await startLedByN1(c);
    for (const node of c.nodes.keys()) await waitUntil(async () => (await statusOf(c, node)).active === 'primary', { what: `${node} on primary` });
    expect(await answers(coldUrl)).toBe(false);

    primary.kill('SIGKILL');
    for (const node of c.nodes.keys()) {
      await waitUntil(async () => (await statusOf(c, node)).active === 'cold', { timeoutMs: 30_000, what: `${node} to send traffic to the cold standby` });
    }
    for (const node of c.nodes.keys()) {
      const response = await fetch(`${c.gateways.get(node)}/v1/infer`, { method: 'POST', body: '{}' });
      expect(response.status).toBe(200);
      expect(response.headers.get('x-served-by')).toBe('cold');
    }
    // n2 ran it, on n1's word, once; n1 and n3 ran nothing.
    const events = await desiredEvents(c, 'n2');
    expect(events.map((e) => e.type === 'desired-state' && [e.instance, e.state, e.leader])).toEqual([['cold', 'running', 'n1']]);
    expect(await desiredEvents(c, 'n1')).toEqual([]);
    expect(await desiredEvents(c, 'n3')).toEqual([]);
    const cold = (view: ServiceView) => view.instances.find((i) => i.name === 'cold')!;
    expect(cold(await statusOf(c, 'n2')).pid).toBeGreaterThan(0);
    expect(cold(await statusOf(c, 'n1')).pid).toBeNull();
  }, 90_000);

  it('with etcd\'s quorum lost no node starts the cold standby; once etcd is back the leader has it started', async () => {
    primary = await startModelServer({ name: 'primary' });
    const [port] = await freePorts(1);
    const coldUrl = `http://127.0.0.1:${port}`;
    const c = (cluster = await makeCluster({ etcd: etcd.endpoints, instances: `${externalInstance('primary', 'primary', primary.url)}${coldInstance('n2', port!)}` }));
    await startLedByN1(c);
    for (const node of c.nodes.keys()) await waitUntil(async () => (await statusOf(c, node)).active === 'primary', { what: `${node} on primary` });

    await Promise.all([etcd.kill('m2'), etcd.kill('m3')]);
    try {
      await waitUntil(async () => !(await c.view('n1')).acting, { timeoutMs: 10_000, what: 'n1 to stop acting without etcd' });
      primary.kill('SIGKILL');
      for (const node of c.nodes.keys()) {
        await waitUntil(async () => (await statusOf(c, node)).instances.find((i) => i.name === 'primary')!.state === 'down', { timeoutMs: 15_000, what: `${node} to see the primary down` });
      }
      // A bounded window in which nothing may start it: every node wants it, none may act.
      const until = Date.now() + 3000;
      while (Date.now() < until) {
        expect(await answers(coldUrl), 'the cold standby started without a leader').toBe(false);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      expect(await desiredEvents(c, 'n2')).toEqual([]);
    } finally {
      await Promise.all([etcd.start('m2'), etcd.start('m3')]);
    }
    for (const node of c.nodes.keys()) {
      await waitUntil(async () => (await statusOf(c, node)).active === 'cold', { timeoutMs: 30_000, what: `${node} to send traffic to the cold standby once etcd is back` });
    }
    const events = await desiredEvents(c, 'n2');
    expect(events.map((e) => e.type === 'desired-state' && e.state)).toEqual(['running']);
  }, 120_000);
});
