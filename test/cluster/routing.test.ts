import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { ServiceView } from '../../src/controller/index.js';
import { etcdAvailable, startEtcd, type EtcdCluster } from '../support/etcd.js';
import { startModelServer, stopAll, type ModelServer } from '../support/fixture.js';
import { runLoad } from '../support/load.js';
import { waitUntil } from '../support/wait.js';
import { CLI } from '../jobs/up-process.js';
import { externalInstance, makeCluster, type TestCluster } from './support.js';

const run = promisify(execFile);

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

  it('a drain on the leader holds the instance out on every node and resume brings it back everywhere; on another node both are refused, naming the leader', async () => {
    const c = (cluster = await makeCluster({ etcd: etcd.endpoints, instances: `${externalInstance('primary', 'primary', primary.url)}${externalInstance('hot', 'hot', hot.url)}` }));
    await Promise.all(['n1', 'n2', 'n3'].map((node) => c.start(node)));
    const leader = await c.leader();
    const other = ['n1', 'n2', 'n3'].find((n) => n !== leader)!;
    for (const node of c.nodes.keys()) await waitUntil(async () => (await active(c, node)) === 'primary', { what: `${node} on primary` });
    const state = async (node: string) =>
      (await c.nodes.get(node)!.api<{ services: Record<string, ServiceView> }>('GET', '/v1/status')).services.infer!.instances.find((i) => i.name === 'primary')!.state;

    const refused = await c.nodes.get(other)!.api('POST', '/v1/services/infer/instances/primary/drain', {}).then(() => 'accepted', (e: Error) => e.message);
    expect(refused).toMatch(new RegExp(`409.*NOT_LEADER.*${leader} leads the cluster`));
    expect(await state(other)).toBe('ready');

    await c.nodes.get(leader)!.api('POST', '/v1/services/infer/instances/primary/drain', {});
    for (const node of c.nodes.keys()) {
      await waitUntil(async () => (await active(c, node)) === 'hot' && (await state(node)) === 'stopped', { timeoutMs: 10_000, what: `${node} to hold primary out, as the leader does` });
    }
    // Held: no failback and no restart brings it back while the leader holds it.
    expect((await c.view(other)).routing.infer).toMatchObject({ active: 'hot', held: ['primary'] });
    const notHere = await c.nodes.get(other)!.api('POST', '/v1/services/infer/instances/primary/resume', {}).then(() => 'accepted', (e: Error) => e.message);
    expect(notHere).toMatch(/409.*NOT_LEADER/);
    expect(await state(other)).toBe('stopped');

    await c.nodes.get(leader)!.api('POST', '/v1/services/infer/instances/primary/resume', {});
    for (const node of c.nodes.keys()) {
      await waitUntil(async () => (await state(node)) === 'ready', { timeoutMs: 10_000, what: `${node} to take primary back, as the leader did` });
    }
    expect((await c.view(other)).routing.infer).toMatchObject({ held: [] });
  }, 60_000);

  it('the CLI sends a leader\'s action given to a follower on to the leader (the same admin token on every node)', async () => {
    const c = (cluster = await makeCluster({ etcd: etcd.endpoints, instances: `${externalInstance('primary', 'primary', primary.url)}${externalInstance('hot', 'hot', hot.url)}` }));
    const token = randomBytes(18).toString('base64url');
    for (const node of ['n1', 'n2', 'n3']) writeFileSync(path.join(c.dir, node, 'admin.token'), `${token}\n`, { mode: 0o600 });
    await Promise.all(['n1', 'n2', 'n3'].map((node) => c.start(node)));
    const leader = await c.leader();
    const other = ['n1', 'n2', 'n3'].find((n) => n !== leader)!;
    for (const node of c.nodes.keys()) await waitUntil(async () => (await active(c, node)) === 'primary', { what: `${node} on primary` });

    const { stdout } = await run(process.execPath, [CLI, 'switchover', 'infer', '--to', 'hot', '-c', c.configFile, '--node', other], { timeout: 30_000 });
    expect(stdout).toContain('infer: active is now hot');
    for (const node of c.nodes.keys()) await waitUntil(async () => (await active(c, node)) === 'hot', { timeoutMs: 5000, what: `${node} on hot` });
    const moved = await c.nodes.get(leader)!.api<{ events: { type: string; kind?: string; reason: string }[] }>('GET', '/v1/events?type=active-changed');
    expect(moved.events.some((e) => e.kind === 'switchover')).toBe(true);
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

  it('SIGKILL of the leader node under 100 req/s: a new leader within the TTL, no failed request through a surviving node', async () => {
    const c = (cluster = await makeCluster({ etcd: etcd.endpoints, instances: `${externalInstance('primary', 'primary', primary.url)}${externalInstance('hot', 'hot', hot.url)}` }));
    await Promise.all(['n1', 'n2', 'n3'].map((node) => c.start(node)));
    const leader = await c.leader();
    const survivor = ['n1', 'n2', 'n3'].find((n) => n !== leader)!;
    const load = runLoad({ url: `${c.gateways.get(survivor)}/v1/infer`, method: 'POST', body: '{}', headers: { 'content-type': 'application/json' }, rate: 100, durationMs: 5000, maxRequests: 500, timeoutMs: 10_000 });
    await new Promise((resolve) => setTimeout(resolve, 1000));

    const killedAt = performance.now();
    await c.kill(leader);
    const next = await c.leader({ besides: leader, timeoutMs: 10_000 });
    const takeOverMs = performance.now() - killedAt;
    console.log(`new leader ${next} ${Math.round(takeOverMs)} ms after the SIGKILL of ${leader} (TTL 2000 ms)`);
    // Generous for a loaded machine; \`npm run bench -- --scenario cluster\` measures it.
    expect(takeOverMs).toBeLessThan(2000 + 3000);
    const run = await load;
    expect(run.failed, JSON.stringify(run.summary().failures)).toBe(0);
    expect(run.ok).toBeGreaterThan(400);
    const events = await c.nodes.get(next)!.api<{ events: { type: string; leader: string | null; self: boolean }[] }>('GET', '/v1/events?type=leader-changed');
    expect(events.events.at(-1)).toMatchObject({ leader: next, self: true });
  }, 60_000);

  it('a leader paused with SIGSTOP for 2 × TTL writes nothing to etcd after it wakes, and no second leader ever acts', async () => {
    const c = (cluster = await makeCluster({ etcd: etcd.endpoints, instances: `${externalInstance('primary', 'primary', primary.url)}${externalInstance('hot', 'hot', hot.url)}` }));
    await Promise.all(['n1', 'n2', 'n3'].map((node) => c.start(node)));
    const leader = await c.leader();
    const up = c.nodes.get(leader)!;
    up.proc.kill('SIGSTOP');
    let resumed = false;
    try {
      const next = await c.leader({ besides: leader, timeoutMs: 10_000 });
      // The new leader moves the traffic while the old one sleeps: its routing is what must survive the wake-up.
      await c.nodes.get(next)!.api('POST', '/v1/services/infer/switchover', { to: 'hot' });
      await new Promise((resolve) => setTimeout(resolve, 2 * 2000));
      const woke = Date.now();
      up.proc.kill('SIGCONT');
      resumed = true;
      await waitUntil(async () => (await c.view(leader)).leader === next, { timeoutMs: 10_000, what: `${leader} to see ${next} lead` });
      // Give the woken node its chance to write (its timers fire first), then read etcd.
      await new Promise((resolve) => setTimeout(resolve, 1000));
      const views = await Promise.all([...c.nodes.keys()].map((node) => c.view(node)));
      expect(views.filter((view) => view.acting).map((view) => view.node)).toEqual([next]);
      const { Etcd3 } = await import('etcd3');
      const client = new Etcd3({ hosts: etcd.endpoints });
      try {
        const routing = JSON.parse((await client.get(`${c.prefix}routing/infer`).string())!) as { leader: string; active: string; at: number };
        expect(routing).toMatchObject({ leader: next, active: 'hot' });
        const written = await client.getAll().prefix(c.prefix).exec();
        for (const kv of written.kvs) {
          const value = kv.value.toString();
          if (kv.key.toString().endsWith(`/members/${leader}`)) continue; // its own entry, on its own lease: not a leader's write
          const parsed = JSON.parse(value) as { leader?: string; at?: number };
          if (parsed.leader === leader) expect(parsed.at!, kv.key.toString()).toBeLessThan(woke);
        }
      } finally {
        client.close();
      }
      for (const node of c.nodes.keys()) await waitUntil(async () => (await active(c, node)) === 'hot', { timeoutMs: 5000, what: `${node} on hot` });
    } finally {
      if (!resumed) up.proc.kill('SIGCONT');
    }
  }, 60_000);

  it('etcd losing one member changes nothing; losing its quorum keeps traffic served and refuses leader actions with a reason, until it is back', async () => {
    const c = (cluster = await makeCluster({ etcd: etcd.endpoints, instances: `${externalInstance('primary', 'primary', primary.url)}${externalInstance('hot', 'hot', hot.url)}` }));
    await Promise.all(['n1', 'n2', 'n3'].map((node) => c.start(node)));
    const leader = await c.leader();
    const other = ['n1', 'n2', 'n3'].find((n) => n !== leader)!;
    const load = runLoad({ url: `${c.gateways.get(other)}/v1/infer`, method: 'POST', body: '{}', headers: { 'content-type': 'application/json' }, rate: 50, durationMs: 8000, maxRequests: 400, timeoutMs: 10_000 });
    const leaderChanges = async () => (await c.nodes.get(leader)!.api<{ events: { leader: string | null; epoch: number | null; reason: string }[] }>('GET', '/v1/events?type=leader-changed')).events;
    const before = (await leaderChanges()).length;
    const epoch = (await c.view(leader)).epoch;

    await etcd.kill('m1');
    // Two members keep a quorum: the same node leads, in the same term, and no other node ever does.
    await new Promise((resolve) => setTimeout(resolve, 2 * 2000));
    await waitUntil(async () => (await c.view(leader)).acting, { timeoutMs: 3000, what: `${leader} acting` });
    const seen = (await leaderChanges()).slice(before);
    expect((await c.view(leader)).epoch).toBe(epoch);
    expect(seen.filter((e) => e.leader !== leader && e.leader !== null)).toEqual([]);
    // On a loaded machine etcd's own election can hold a renewal past the deadline: the leader then
    // stands down and takes its key back (same epoch). Said here, so a run that needed it shows.
    if (seen.length > 0) console.log(`while etcd elected a new leader of its own: ${seen.map((e) => e.reason).join('; ')}`);

    await etcd.kill('m2');
    try {
      await waitUntil(async () => !(await c.view(leader)).acting, { timeoutMs: 8000, what: `${leader} to stop acting without etcd` });
      const view = await c.view(leader);
      expect(view.etcd).toBe('unreachable');
      const refused = await c.nodes.get(leader)!.api('POST', '/v1/services/infer/switchover', { to: 'hot' }).then(() => 'accepted', (e: Error) => e.message);
      expect(refused).toMatch(/409.*NOT_LEADER/);
      const events = await c.nodes.get(leader)!.api<{ events: { type: string }[] }>('GET', '/v1/events?type=coordination-lost');
      expect(events.events.length).toBeGreaterThan(0);
    } finally {
      await Promise.all([etcd.start('m1'), etcd.start('m2')]);
    }
    await c.leader({ timeoutMs: 15_000 });
    const run = await load;
    expect(run.failed, JSON.stringify(run.summary().failures)).toBe(0);
  }, 60_000);
});
