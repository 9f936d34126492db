import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { UnderstudyEvent } from '../../src/core/index.js';
import type { JobView } from '../../src/jobs/index.js';
import { freePorts } from '../support/ports.js';
import { waitForExit } from '../support/process.js';
import { waitUntil } from '../support/wait.js';
import { inferJob, runsPerItem, twoInstanceConfig } from './support.js';
import { startUp, stopUp, type UpProcess } from './up-process.js';

/*
 * Durable jobs across the failures the issue names: the primary model server SIGKILLed
 * mid-job, and Understudy itself SIGKILLed and started again. Real processes throughout.
 */

let ups: UpProcess[] = [];
const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(ups.map(stopUp));
  ups = [];
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

async function setup(latencyMs: number, concurrency: number): Promise<{ configFile: string; stateDir: string; record: string }> {
  const dir = mkdtempSync(path.join(tmpdir(), 'understudy-restart-'));
  dirs.push(dir);
  const stateDir = path.join(dir, 'state');
  const record = path.join(dir, 'requests.log');
  const ports = (await freePorts(2)) as [number, number];
  const configFile = path.join(dir, 'understudy.yaml');
  const yaml = twoInstanceConfig(ports, record, {
    latencyMs,
    jobs: `jobs: { retryDelay: 100ms, concurrency: ${concurrency} }`,
    extra: 'log: { level: warn }',
  }).replace('STATE', stateDir);
  writeFileSync(configFile, yaml);
  return { configFile, stateDir, record };
}

async function up(configFile: string, stateDir: string): Promise<UpProcess> {
  const started = await startUp(configFile, stateDir);
  ups.push(started);
  return started;
}

async function killUp(target: UpProcess): Promise<void> {
  target.proc.kill('SIGKILL');
  await waitForExit(target.proc, 5000);
  ups = ups.filter((u) => u !== target);
}

async function events(target: UpProcess, type: string): Promise<UnderstudyEvent[]> {
  return (await target.api<{ events: UnderstudyEvent[] }>('GET', `/v1/events?type=${type}&limit=1000`)).events;
}

/** Every item has exactly one result, and the job says so. */
async function checkResults(target: UpProcess, job: JobView): Promise<void> {
  const lines = (await target.text(`/v1/jobs/${job.id}/results`))
    .trim().split('\n').map((line) => JSON.parse(line) as { index: number; state: string; status: number });
  expect(lines.map((line) => line.index)).toEqual(Array.from({ length: job.total }, (_, i) => i));
  expect(lines.every((line) => line.state === 'succeeded' && line.status === 200)).toBe(true);
}

describe('jobs survive failures', () => {
  it('a 240-item job: primary SIGKILLed at a third, Understudy SIGKILLed at two thirds and restarted; every item has one result', async () => {
    const concurrency = 4;
    const { configFile, stateDir, record } = await setup(25, concurrency);
    const first = await up(configFile, stateDir);
    const { job } = await first.api<{ job: JobView }>('POST', '/v1/jobs', inferJob(240));

    await waitUntil(async () => (await first.job(job.id)).done >= 80, { timeoutMs: 30_000, what: 'a third of the job' });
    const status = await first.api<{ services: { infer: { instances: { name: string; pid: number }[] } } }>('GET', '/v1/status');
    process.kill(status.services.infer.instances.find((i) => i.name === 'primary')!.pid, 'SIGKILL');

    await waitUntil(async () => (await first.job(job.id)).done >= 160, { timeoutMs: 30_000, what: 'two thirds of the job' });
    await killUp(first);

    const second = await up(configFile, stateDir);
    await waitUntil(async () => ['succeeded', 'failed'].includes((await second.job(job.id)).state), { timeoutMs: 60_000, what: 'the job to end' });
    const done = await second.job(job.id);
    expect(done).toMatchObject({ state: 'succeeded', succeeded: 240, failed: 0 });
    await checkResults(second, done);

    // Work lost: an item reaches a model server twice only if it was in flight at a kill: on the
    // primary (at most `concurrency`), or in Understudy, on a model server or being committed
    // (at most `concurrency` each: an item gives up its slot while its result is committed).
    const runs = runsPerItem(record, job.id);
    expect(runs.size).toBe(240);
    const twice = [...runs.values()].filter((n) => n > 1).length;
    expect(twice).toBeLessThanOrEqual(concurrency + 2 * concurrency);

    const resumed = await events(second, 'job-resumed');
    expect(resumed).toHaveLength(1);
    expect(resumed[0]).toMatchObject({ job: job.id, total: 240 });
    expect((resumed[0] as { done: number }).done).toBeGreaterThanOrEqual(160);
    // The model servers the killed Understudy left running were stopped, not left holding their ports
    // (the primary too, if its restart after the SIGKILL came before Understudy's own kill).
    const orphans = (await events(second, 'orphan-stopped')).map((e) => (e as { instance: string }).instance);
    expect(orphans).toContain('hot');
  });

  it('crash consistency: Understudy SIGKILLed at random moments, over several short runs', async () => {
    const concurrency = 3;
    const { configFile, stateDir, record } = await setup(10, concurrency);
    let current = await up(configFile, stateDir);
    const { job } = await current.api<{ job: JobView }>('POST', '/v1/jobs', inferJob(60));
    let kills = 0;
    const deadline = Date.now() + 60_000;
    for (let round = 0; round < 10 && Date.now() < deadline; round++) {
      const view = await current.job(job.id);
      if (view.state !== 'running') break;
      // A random moment: anywhere from at once to a few items in.
      await new Promise((resolve) => setTimeout(resolve, Math.floor(Math.random() * 250)));
      await killUp(current);
      kills += 1;
      current = await up(configFile, stateDir);
    }
    await waitUntil(async () => (await current.job(job.id)).state !== 'running', { timeoutMs: 60_000, what: 'the job to end' });
    const done = await current.job(job.id);
    expect(done).toMatchObject({ state: 'succeeded', succeeded: 60, failed: 0 });
    await checkResults(current, done);
    const runs = runsPerItem(record, job.id);
    expect(runs.size).toBe(60);
    const extra = [...runs.values()].reduce((sum, n) => sum + n - 1, 0);
    expect(extra).toBeLessThanOrEqual(kills * 2 * concurrency);
  });
});
