import { execFileSync } from 'node:child_process';
import { IP, removeLeftovers } from '../../test/support/netns.js';
import { analyse, answered, destroySite, killAll, readySite, skipReason, waitForHolder, type Site } from '../../test/cluster/vip-site.js';
import { progress } from '../workload.js';
import { median } from './jobs.js';

/*
 * The virtual IP's take-over: two Understudy nodes in network namespaces with the
 * keepalived config of examples/cluster/ (advert_int 0.2 s), a client in a third
 * sending 50 requests a second to the VIP, and the holder's machine dying (its link
 * down, every process SIGKILLed). The same network as test/cluster/vip.test.ts.
 */

export const VIP_RUNS = 5;
export const VIP_GOAL_MS = 1000;

export interface VipRun {
  run: number;
  takeoverMs: number;
  failed: number;
  inFlightAtKill: number;
  sentInGap: number;
  sent: number;
}

export interface VipResult {
  runs: VipRun[];
}

export async function runVip(skipped: string[], runs = VIP_RUNS): Promise<VipResult | null> {
  if (skipReason) {
    skipped.push(`cluster: the virtual IP not measured: ${skipReason}`);
    return null;
  }
  await removeLeftovers(['br', 'n1', 'n2', 'cl']);
  const result: VipResult = { runs: [] };
  for (let run = 1; run <= runs; run++) {
    let site: Site | undefined;
    try {
      const made = await readySite();
      site = made.site;
      const client = made.client;
      const killAt = Date.now();
      execFileSync(IP!, ['-n', site.nodes.n1.ns, 'link', 'set', 'eth0', 'down']);
      killAll(site.nodes.n1, { model: true });
      await waitForHolder(site, 'n2', 5000);
      await answered(client, 'n2', 20);
      const results = await client.stop();
      const f = analyse(`run ${run}`, results, killAt, 'n2');
      result.runs.push({ run, takeoverMs: f.takeoverMs, failed: f.failed.length, inFlightAtKill: f.inFlightAtKill, sentInGap: f.sentInGap, sent: results.length });
      progress(`vip run ${run}: ${f.summary}`);
    } finally {
      if (site) await destroySite(site);
    }
  }
  return result;
}

export function vipSection(r: VipResult): string {
  const takeovers = r.runs.map((x) => x.takeoverMs);
  const within = takeovers.filter((ms) => ms <= VIP_GOAL_MS).length;
  const failedBeyond = r.runs.filter((x) => x.failed > x.inFlightAtKill + x.sentInGap).length;
  const rows = r.runs.map((x) => `| ${x.run} | ${Math.round(x.takeoverMs)} ms | ${x.failed} of ${x.sent} | ${x.inFlightAtKill} | ${x.sentInGap} |`);
  return `## Cluster: the virtual IP moves (keepalived)

Two nodes in network namespaces with \`examples/cluster/keepalived.conf\` (VRRPv3, advert_int 0.2 s), a client
sending 50 requests a second to the VIP, each on a new connection with a 1 s timeout; the holder's machine dies
(its link set down, keepalived, Understudy and the model server SIGKILLed). Take-over: from the kill to the first
answer through the VIP from the other node. ${r.runs.length} runs.

| Figure | Result | Goal | |
|---|---|---|---|
| VIP take-over, min / median / max | ${Math.round(Math.min(...takeovers))} / ${Math.round(median(takeovers))} / ${Math.round(Math.max(...takeovers))} ms | ≤ ${VIP_GOAL_MS} ms | ${within === r.runs.length ? 'met' : 'NOT met'} (${within} of ${r.runs.length}) |
| Failed requests, of those in flight at the kill or sent before the VIP moved | ${r.runs.map((x) => `${x.failed} of ${x.inFlightAtKill + x.sentInGap}`).join(', ')} | only those | ${failedBeyond === 0 ? 'met' : 'NOT met'} |

| Run | Take-over | Failed | In flight at the kill | Sent before the VIP moved |
|---|---|---|---|---|
${rows.join('\n')}`;
}
