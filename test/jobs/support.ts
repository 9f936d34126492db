import { readFileSync } from 'node:fs';
import type { UnderstudyEvent } from '../../src/core/index.js';
import type { JobView } from '../../src/jobs/index.js';
import { MODEL_SERVER_PATH } from '../support/fixture.js';
import type { RunningGateway } from '../support/gateway.js';

/**
 * YAML for one service `infer` with a primary and a hot standby run by Understudy, recording each
 * request to `record`. `jobs` replaces the jobs settings; `extra` is added at the top level.
 */
export function twoInstanceConfig(
  ports: [number, number],
  record: string,
  { extra = '', latencyMs = 20, jobs = 'jobs: { retryDelay: 100ms }' }: { extra?: string; latencyMs?: number; jobs?: string } = {},
): string {
  const instance = (name: string, tier: string, port: number) => `
      ${name}:
        tier: ${tier}
        url: http://127.0.0.1:${port}
        runtime:
          type: process
          command: [${process.execPath}, ${MODEL_SERVER_PATH}, --port, "${port}", --name, ${name}, --latency, "${latencyMs}", --record, ${record}]
          stopGrace: 2s
        probes:
          startup: { http: { path: /health }, interval: 50ms, budget: 20s }
          ready: { http: { path: /health }, interval: 200ms, fall: 2 }`;
  return `stateDir: STATE
gateway: { listen: "127.0.0.1:0" }
admin: { listen: "127.0.0.1:0" }
${jobs}
${extra}
services:
  infer:
    route: { pathPrefix: / }
    failback: never
    instances:${instance('primary', 'primary', ports[0])}${instance('hot', 'hot', ports[1])}
`;
}

/** A job of `count` items to /v1/infer, each with a small JSON body. */
export function inferJob(count: number, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    service: 'infer',
    defaults: { path: '/v1/infer' },
    items: Array.from({ length: count }, (_, i) => ({ json: { n: i } })),
    ...extra,
  };
}

/** How many times each item of `job` reached a model server, from the fixture's --record file. */
export function runsPerItem(record: string, job: string): Map<number, number> {
  const runs = new Map<number, number>();
  let text = '';
  try {
    text = readFileSync(record, 'utf8');
  } catch {
    return runs;
  }
  for (const line of text.split('\n')) {
    const id = line.split(' ')[1];
    if (!id?.startsWith(`${job}.`)) continue;
    const index = Number(id.slice(job.length + 1));
    runs.set(index, (runs.get(index) ?? 0) + 1);
  }
  return runs;
}

export const jobEnded = (job: string) => (e: UnderstudyEvent) =>
  e.type === 'job-state' && e.job === job && ['succeeded', 'failed', 'cancelled'].includes(e.to);

export async function waitForJob(gateway: RunningGateway, job: JobView, timeoutMs = 60_000): Promise<JobView> {
  await gateway.event(jobEnded(job.id), timeoutMs, `the end of ${job.id}`);
  return gateway.app.jobs.view(job.id);
}
