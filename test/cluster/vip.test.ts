import { execFileSync } from 'node:child_process';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { IP, kill, removeLeftovers } from '../support/netns.js';
import { waitUntil } from '../support/wait.js';
import {
  TAKEOVER_LIMIT_MS,
  skipReason,
  sites,
  clients,
  type Client,
  type Site,
  type Failover,
  readySite,
  startNode,
  transitions,
  holds,
  waitForHolder,
  waitForBackup,
  startClient,
  answered,
  analyse,
  destroySite,
  killAll,
} from './vip-site.js';

/* keepalived moving one virtual IP between two real Understudy nodes: see vip-site.ts for the network. */

if (skipReason) console.warn(`test/cluster/vip.test.ts skipped: ${skipReason}`);

function expectBoundedFailover(f: Failover, killAt: number): void {
  expect(f.summary).toMatch(/answered again \+\d+ ms after the kill/);
  expect(f.takeoverMs).toBeLessThanOrEqual(TAKEOVER_LIMIT_MS);
  // Nothing failed before the kill, and nothing sent after the address had moved.
  expect(f.failed.filter((r) => r.endAt < killAt)).toEqual([]);
  expect(f.failed.filter((r) => r.sentAt >= f.recoveredAt)).toEqual([]);
  expect(f.failed.length).toBeLessThanOrEqual(f.inFlightAtKill + f.sentInGap);
}

describe.skipIf(skipReason !== undefined)(`keepalived moves the virtual IP between Understudy nodes${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let site: Site | undefined;

  beforeAll(() => removeLeftovers(['br', 'n1', 'n2', 'cl']));
  afterEach(async () => {
    for (const proc of clients) kill(proc.pid);
    clients.clear();
    if (site) await destroySite(site);
    site = undefined;
  });
  afterAll(async () => {
    for (const s of [...sites]) await destroySite(s);
  });

  /** Both nodes up, n1 holding the VIP, n2 in BACKUP, the client answered by n1. */
  async function ready(): Promise<{ site: Site; client: Client }> {
    const made = await readySite();
    site = made.site;
    return made;
  }

  async function afterKill(s: Site, client: Client, killAt: number, label: string): Promise<Failover> {
    await waitForHolder(s, 'n2', 5000);
    await answered(client, 'n2', 20);
    const results = await client.stop();
    const failover = analyse(label, results, killAt, 'n2');
    console.log(failover.summary);
    // notify.sh runs in the background of keepalived: its line may come a moment after the address.
    await waitUntil(() => / INSTANCE understudy MASTER priority=100$/.test(transitions(s.nodes.n2).at(-1) ?? ''), { timeoutMs: 3000, intervalMs: 20, what: "notify.sh's MASTER line for n2" });
    console.log(`n2 transitions:\n  ${transitions(s.nodes.n2).join('\n  ')}`);
    expectBoundedFailover(failover, killAt);
    return failover;
  }

  it('the holder machine dies (its link down, every process SIGKILLed): n2 answers within 2 s', async () => {
    const { site: s, client } = await ready();
    const killAt = Date.now();
    execFileSync(IP!, ['-n', s.nodes.n1.ns, 'link', 'set', 'eth0', 'down']);
    killAll(s.nodes.n1, { model: true });
    await afterKill(s, client, killAt, 'machine dies');
  });

  it("keepalived and Understudy SIGKILLed on the holder: n2 takes over, and n1's return does not move the address back", async () => {
    const { site: s, client } = await ready();
    const n1 = s.nodes.n1;
    const killAt = Date.now();
    killAll(n1, { model: false });
    await afterKill(s, client, killAt, 'keepalived + understudy killed');
    // A SIGKILLed keepalived leaves its address on the interface (only a clean stop removes it):
    // harmless while clients' ARP caches point at n2, removed when keepalived starts again.
    expect(await holds(n1)).toBe(true);

    // n1 comes back (its model server kept running): nopreempt keeps the address on n2.
    const during = startClient(s);
    const backups = transitions(n1).filter((line) => / BACKUP /.test(line)).length;
    await startNode(s, 'n1', { model: false });
    await waitForBackup(s, 'n1', backups + 1);
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const results = await during.stop();
    console.log(`n1 back: ${results.length} requests while it returned, ${results.filter((r) => !r.ok).length} failed; n1 transitions:\n  ${transitions(n1).join('\n  ')}`);
    expect(await holds(s.nodes.n2)).toBe(true);
    expect(await holds(n1)).toBe(false);
    expect(transitions(s.nodes.n2).at(-1)).toMatch(/ MASTER /);
    expect(results.length).toBeGreaterThan(50);
    expect(results.filter((r) => !r.ok || r.servedBy !== 'n2')).toEqual([]);
  });

  it('only Understudy dies on the holder: its check fails, keepalived gives the address up, n2 answers within 2 s', async () => {
    const { site: s, client } = await ready();
    const killAt = Date.now();
    kill(s.nodes.n1.understudy?.pid);
    await afterKill(s, client, killAt, 'understudy killed');
    expect(await holds(s.nodes.n1)).toBe(false);
    expect(transitions(s.nodes.n1).at(-1)).toMatch(/ INSTANCE understudy FAULT /);
  });
});
