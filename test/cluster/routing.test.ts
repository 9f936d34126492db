import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { ServiceView } from '../../src/controller/index.js';
import { etcdAvailable, startEtcd, type EtcdCluster } from '../support/etcd.js';
import { startModelServer, stopAll, type ModelServer } from '../support/fixture.js';
import { waitUntil } from '../support/wait.js';
import { externalInstance, makeCluster, type TestCluster } from './support.js';

/* The leader's routing carried to every node: three `understudy up --node` processes on a real etcd. */

let etcd: EtcdCluster;
let primary: ModelServer;
let hot: ModelServer;
let cluster: TestCluster | undefined;

describe.skipIf(!etcdAvailable())('routing from the leader', () => {
  beforeAll(async () => {
    etcd = await startEtcd();
    [primary, hot] = await Promise.all([startModelServer({ name: 'primary' }), startModelServer({ name: 'hot' })]);
  }, 60_000);
  afterAll(async () => {
    await stopAll();
    await etcd?.stop();
  });
  afterEach(async () => {
    await cluster?.stop();
    cluster = undefined;
  });

  const active = async (c: TestCluster, node: string) =>
    (await c.nodes.get(node)!.api<{ services: Record<string, ServiceView> }>('GET', '/v1/status')).services.infer!.active;

  it('a switchover on the leader moves every node; on another node it is refused, naming the leader', async () => {
    const c = (cluster = await makeCluster({ etcd: etcd.endpoints, instances: `${externalInstance('primary', 'primary', primary.url)}${externalInstance('hot', 'hot', hot.url)}` }));
    await Promise.all(['n1', 'n2', 'n3'].map((node) => c.start(node)));
    const leader = await c.leader();
    const other = ['n1', 'n2', 'n3'].find((n) => n !== leader)!;
    for (const node of c.nodes.keys()) await waitUntil(async () => (await active(c, node)) === 'primary', { what: `${node} on primary` });

    const refused = await c.nodes.get(other)!.api('POST', '/v1/services/infer/switchover', { to: 'hot' }).then(() => 'accepted', (e: Error) => e.message);
    expect(refused).toMatch(new RegExp(`409.*NOT_LEADER.*${leader} leads the cluster`));

    await c.nodes.get(leader)!.api('POST', '/v1/services/infer/switchover', { to: 'hot' });
    for (const node of c.nodes.keys()) await waitUntil(async () => (await active(c, node)) === 'hot', { timeoutMs: 5000, what: `${node} to follow the leader to hot` });

    await waitUntil(async () => (await c.view(other)).members.length === 3, { what: 'three live members' });
    const view = await c.view(other);
    expect(view).toMatchObject({ leader, acting: false, etcd: 'ok', routing: { infer: { active: 'hot', leader } } });
    expect(view.members.map((m) => m.node)).toEqual(['n1', 'n2', 'n3']);
  }, 60_000);

  it('cluster failover --to hands leadership to the named node', async () => {
    const c = (cluster = await makeCluster({ etcd: etcd.endpoints, instances: `${externalInstance('primary', 'primary', primary.url)}${externalInstance('hot', 'hot', hot.url)}` }));
    await Promise.all(['n1', 'n2', 'n3'].map((node) => c.start(node)));
    const leader = await c.leader();
    const to = ['n1', 'n2', 'n3'].filter((n) => n !== leader)[1]!;
    await waitUntil(async () => (await c.view(leader)).members.length === 3, { what: 'three live members' });
    await c.nodes.get(leader)!.api('POST', '/v1/cluster/failover', { to });
    expect(await c.leader({ besides: leader, timeoutMs: 10_000 })).toBe(to);
    const events = await c.nodes.get(to)!.api<{ events: { type: string; leader: string; self: boolean }[] }>('GET', '/v1/events?type=leader-changed');
    expect(events.events.some((e) => e.leader === to && e.self)).toBe(true);
  }, 60_000);
});
