import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { etcdAvailable, startEtcd, type EtcdCluster, type EtcdMember } from '../support/etcd.js';
import { waitUntil } from '../support/wait.js';

async function healthy(member: EtcdMember): Promise<boolean> {
  const response = await fetch(`${member.clientUrl}/health`, { signal: AbortSignal.timeout(2000) });
  return ((await response.json()) as { health?: string }).health === 'true';
}

/** The member that is raft leader now, as the first member asked reports it. */
async function leaderOf(cluster: EtcdCluster): Promise<EtcdMember> {
  const ids = await Promise.all(
    cluster.members.map(async (member) => {
      const one = new Etcd3({ hosts: [member.clientUrl] });
      try {
        return await one.maintenance.status();
      } finally {
        one.close();
      }
    }),
  );
  const leader = cluster.members.find((_, i) => ids[i]!.header.member_id === ids[0]!.leader);
  if (!leader) throw new Error(`no member has the leader's id ${ids[0]!.leader}`);
  return leader;
}

describe.skipIf(!etcdAvailable())('test/support/etcd.ts (needs etcd: scripts/cluster-parts.sh installs it)', () => {
  let cluster: EtcdCluster;
  let client: Etcd3;

  beforeAll(async () => {
    cluster = await startEtcd({ name: 'etcd-support' });
    client = new Etcd3({ hosts: cluster.endpoints });
  });

  afterAll(async () => {
    client?.close();
    await cluster?.stop();
  });

  it('starts three members that answer on their own ports', async () => {
    expect(cluster.members.map((m) => m.name)).toEqual(['m1', 'm2', 'm3']);
    expect(new Set(cluster.endpoints).size).toBe(3);
    expect(cluster.members.every((m) => m.pid !== undefined)).toBe(true);
    await client.put('understudy/test/a').value('one');
    expect(await client.get('understudy/test/a').string()).toBe('one');
  });

  it('answers writes with its leader killed, and takes the member back', async () => {
    const killed = await leaderOf(cluster);
    await cluster.kill(killed.name);
    expect(killed.pid).toBeUndefined();

    // A write sent before the survivors elect a new leader (~0.6 s with these flags) waits
    // out etcd's request timeout (5 s + 2 election timeouts) before the client retries it.
    const survivors = cluster.members.filter((m) => m !== killed);
    await waitUntil(async () => (await Promise.all(survivors.map(healthy))).every(Boolean), { timeoutMs: 10_000, what: 'a new etcd leader' });
    await client.put('understudy/test/b').value('two');
    expect(await client.get('understudy/test/b').string()).toBe('two');

    await cluster.start(killed.name);
    expect(killed.pid).toBeGreaterThan(0);
    // The restarted member serves the write it missed (a linearizable read through it).
    const restarted = new Etcd3({ hosts: [killed.clientUrl] });
    try {
      expect(await restarted.get('understudy/test/b').string()).toBe('two');
    } finally {
      restarted.close();
    }
  });

  it('stop() is safe twice and leaves no process behind', async () => {
    const pids = cluster.members.map((m) => m.pid!);
    client.close();
    await cluster.stop();
    await cluster.stop();
    for (const pid of pids) expect(() => process.kill(pid, 0)).toThrow();
  });
});
