import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { EtcdCoordination } from '../../src/cluster/etcd.js';
import { ClusterNode, type RoutedService } from '../../src/cluster/node.js';
import { etcdAvailable, startEtcd, type EtcdCluster } from '../support/etcd.js';
import { waitUntil } from '../support/wait.js';

/*
 * What a follower takes from the leader's routing, on a real etcd, with services the
 * test drives itself: where traffic goes, the versions admitted, the instances held out.
 */

let etcd: EtcdCluster;
const opened: { node: ClusterNode; coordination: EtcdCoordination }[] = [];
let run = 0;

/** A service as a ClusterNode sees it, whose state the test sets and whose calls it records. */
class FakeService implements RoutedService {
  readonly name = 'infer';
  activeNow: string | null = 'primary';
  versions: string[] = ['1.0'];
  holds = new Set<string>();
  readonly calls: string[] = [];
  private readonly listeners = new Set<() => void>();

  active(): string | null {
    return this.activeNow;
  }
  follow(instance: string): string | undefined {
    this.calls.push(`follow ${instance}`);
    this.activeNow = instance;
    return undefined;
  }
  setFollowing(): void {}
  held(): string[] {
    return [...this.holds];
  }
  hold(instance: string, held: boolean): string | undefined {
    this.calls.push(`${held ? 'drain' : 'resume'} ${instance}`);
    if (held) this.holds.add(instance);
    else this.holds.delete(instance);
    return undefined;
  }
  expected(): string[] {
    return [...this.versions];
  }
  expect(versions: string[]): void {
    this.calls.push(`expect ${versions.join(',')}`);
    this.versions = [...versions];
  }
  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
  /** The leader's own machine changed: its ClusterNode publishes. */
  changed(): void {
    for (const listener of [...this.listeners]) listener();
  }
}

async function member(name: string, prefix: string, service: FakeService): Promise<ClusterNode> {
  const coordination = new EtcdCoordination({ endpoints: etcd.endpoints, timeout: 500 });
  const node = new ClusterNode({
    coordination,
    prefix,
    node: name,
    url: `http://${name}`,
    ttlMs: 2000,
    services: [service],
    duties: { begin: async () => undefined, end: async () => undefined },
    onLeaderChange: () => undefined,
    onError: () => undefined,
  });
  opened.push({ node, coordination });
  await node.start();
  return node;
}

describe.skipIf(!etcdAvailable())("a follower takes the leader's routing", () => {
  beforeAll(async () => {
    etcd = await startEtcd({ members: 1, name: 'node' });
  }, 60_000);
  afterAll(async () => etcd?.stop());
  afterEach(async () => {
    for (const { node, coordination } of opened.splice(0)) {
      await node.close();
      await coordination.close();
    }
  });

  it('the versions a deploy admits, the instances drained and resumed, and where traffic goes', async () => {
    const prefix = `/node-${process.pid}-${++run}/`;
    const leaderService = new FakeService();
    const leader = await member('a', prefix, leaderService);
    await waitUntil(() => leader.leadership.acting(), { what: 'a to lead' });
    const followerService = new FakeService();
    await member('b', prefix, followerService);

    // A deploy on the leader admits 2.0 beside 1.0, drains the primary and moves traffic to the standby.
    leaderService.versions = ['2.0', '1.0'];
    leaderService.holds.add('primary');
    leaderService.activeNow = 'hot';
    leaderService.changed();
    await waitUntil(() => followerService.activeNow === 'hot' && followerService.holds.has('primary'), { what: 'b to follow the deploy' });
    expect(followerService.versions).toEqual(['2.0', '1.0']);
    // Versions before the move: the instance the leader routes to may serve the new one.
    expect(followerService.calls).toEqual(['expect 2.0,1.0', 'drain primary', 'follow hot']);

    // The primary comes back on 2.0, alone.
    leaderService.versions = ['2.0'];
    leaderService.holds.delete('primary');
    leaderService.activeNow = 'primary';
    leaderService.changed();
    await waitUntil(() => followerService.activeNow === 'primary' && followerService.holds.size === 0, { what: 'b to follow the end of the deploy' });
    expect(followerService.versions).toEqual(['2.0']);
    expect(followerService.calls.slice(3)).toEqual(['expect 2.0', 'resume primary', 'follow primary']);
  }, 30_000);

  it('a drain made on the follower alone is not resumed by the leader', async () => {
    const prefix = `/node-${process.pid}-${++run}/`;
    const leaderService = new FakeService();
    const leader = await member('a', prefix, leaderService);
    await waitUntil(() => leader.leadership.acting(), { what: 'a to lead' });
    const followerService = new FakeService();
    followerService.holds.add('hot'); // held here before it joined, by hand
    await member('b', prefix, followerService);
    leaderService.holds.add('primary');
    leaderService.changed();
    await waitUntil(() => followerService.holds.has('primary'), { what: 'b to drain primary' });
    leaderService.holds.clear();
    leaderService.changed();
    await waitUntil(() => !followerService.holds.has('primary'), { what: 'b to resume primary' });
    expect(followerService.held()).toEqual(['hot']);
  }, 30_000);
});
