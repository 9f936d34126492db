import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { EtcdCoordination } from '../../src/cluster/etcd.js';
import { Leadership, type LeaderView } from '../../src/cluster/leadership.js';
import { waitUntil } from '../support/wait.js';
import { etcdAvailable, startEtcd, type EtcdCluster } from '../support/etcd.js';

/* The election on a real three-member etcd, with the clock of each candidate under the test's control. */

const TTL = 2000;
let etcd: EtcdCluster;
let opened: { leadership: Leadership; coordination: EtcdCoordination }[] = [];
let run = 0;

interface Candidate {
  node: string;
  leadership: Leadership;
  coordination: EtcdCoordination;
  changes: { view: LeaderView; reason: string }[];
  /** Waits until `check` holds for this candidate's view, woken by its changes. */
  until(check: (view: LeaderView) => boolean, timeoutMs?: number): Promise<LeaderView>;
}

function candidate(node: string, prefix: string, now?: () => number): Candidate {
  const coordination = new EtcdCoordination({ endpoints: etcd.endpoints, timeout: 500 });
  const changes: Candidate['changes'] = [];
  const waiters = new Set<() => void>();
  const leadership = new Leadership({
    coordination,
    key: `${prefix}leader`,
    handoffKey: `${prefix}handoff`,
    node,
    url: `http://${node}`,
    ttlMs: TTL,
    onChange: (view, reason) => {
      changes.push({ view, reason });
      for (const wake of [...waiters]) wake();
    },
    onError: () => undefined,
    ...(now ? { now } : {}),
  });
  opened.push({ leadership, coordination });
  return {
    node,
    leadership,
    coordination,
    changes,
    until(check, timeoutMs = 10_000) {
      return new Promise((resolve, reject) => {
        const test = () => {
          const view = leadership.view();
          if (!check(view)) return;
          waiters.delete(test);
          clearTimeout(timer);
          resolve(view);
        };
        const timer = setTimeout(() => {
          waiters.delete(test);
          reject(new Error(`${node}: condition not met within ${timeoutMs}ms; view ${JSON.stringify(leadership.view())}`));
        }, timeoutMs);
        waiters.add(test);
        test();
      });
    },
  };
}

describe.skipIf(!etcdAvailable())('leader election on etcd', () => {
  beforeAll(async () => {
    etcd = await startEtcd();
  }, 30_000);
  afterAll(async () => etcd?.stop());
  afterEach(async () => {
    for (const { leadership, coordination } of opened.splice(0)) {
      await leadership.close();
      await coordination.close();
    }
  });
  const prefix = () => `/election-${process.pid}-${++run}/`;

  it('elects exactly one of three candidates, and the others see it with its epoch', async () => {
    const p = prefix();
    const all = ['a', 'b', 'c'].map((n) => candidate(n, p));
    await Promise.all(all.map((c) => c.leadership.start()));
    const leader = await Promise.any(all.map((c) => c.until((v) => v.acting).then(() => c)));
    // All agree on the leader's epoch as it is now: on a loaded machine a leader may stand down for a
    // moment and claim its key again (a new epoch), which the others see a moment later.
    await waitUntil(() => all.every((c) => c.leadership.view().leader === leader.node && c.leadership.view().epoch === leader.leadership.view().epoch), {
      timeoutMs: 10_000,
      what: `every candidate to see ${leader.node} with its epoch`,
    });
    expect(all.filter((c) => c.leadership.acting()).map((c) => c.node)).toEqual([leader.node]);
    expect(new Set(all.map((c) => c.leadership.view().epoch)).size).toBe(1);
  });

  it('a candidate that closes hands over at once (lease revoked), not after the TTL', async () => {
    const p = prefix();
    const [a, b] = [candidate('a', p), candidate('b', p)];
    await a.leadership.start();
    await a.until((v) => v.acting);
    await b.leadership.start();
    const started = performance.now();
    await a.leadership.close();
    await b.until((v) => v.acting);
    expect(performance.now() - started).toBeLessThan(TTL);
  });

  it('a leader whose renewals go unanswered stops acting before its lease can run out, and its fenced writes are refused once another leads', async () => {
    const p = prefix();
    // a's clock can be moved on: as if it had been paused (SIGSTOP) past its TTL.
    let skew = 0;
    const a = candidate('a', p, () => performance.now() + skew);
    await a.leadership.start();
    const { epoch } = await a.until((v) => v.acting);
    expect(await a.coordination.fencedPut(`${p}leader`, epoch!, `${p}routing/x`, 'from a')).toBe(true);

    skew = TTL; // the deadline is past: no renewal can make a act again until it is answered
    expect(a.leadership.acting()).toBe(false);
    expect(() => a.leadership.mustAct('deploy')).toThrow(/cannot deploy on a/);

    // Another takes the key once a's lease is revoked (its lease ran out, in real life).
    await a.coordination.revoke(a.leadership.leaseId()!);
    const b = candidate('b', p);
    await b.leadership.start();
    const bView = await b.until((v) => v.acting);
    expect(bView.epoch).toBeGreaterThan(epoch!);
    // a's write with its old epoch changes nothing.
    expect(await a.coordination.fencedPut(`${p}leader`, epoch!, `${p}routing/x`, 'late from a')).toBe(false);
    expect((await b.coordination.read(`${p}routing/x`))!.value).toBe('from a');
    await a.until((v) => v.leader === 'b' && !v.acting);
  });

  it('says etcd is unreachable, and stops acting, when it loses its quorum; leads again once it is back', async () => {
    const p = prefix();
    const a = candidate('a', p);
    await a.leadership.start();
    await a.until((v) => v.acting);
    await etcd.kill('m2');
    await etcd.kill('m3');
    try {
      const view = await a.until((v) => !v.acting && v.etcd === 'unreachable', 3 * TTL + 2000);
      expect(view.etcdError).toMatch(/etcd/);
    } finally {
      await Promise.all([etcd.start('m2'), etcd.start('m3')]);
    }
    await a.until((v) => v.acting && v.etcd === 'ok', 20_000);
  }, 40_000);
});
