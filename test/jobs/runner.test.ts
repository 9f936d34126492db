import { readFileSync } from 'node:fs';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { closeAllGateways, startGateway, type RunningGateway } from '../support/gateway.js';
import { freePorts } from '../support/ports.js';
import { waitUntil } from '../support/wait.js';
import { inferJob, runsPerItem, twoInstanceConfig, waitForJob } from './support.js';

afterEach(closeAllGateways);

async function twoInstances(latencyMs = 20): Promise<{ gateway: RunningGateway; record: string }> {
  const record = path.join(mkdtempSync(path.join(tmpdir(), 'understudy-record-')), 'requests.log');
  const ports = (await freePorts(2)) as [number, number];
  const gateway = await startGateway(twoInstanceConfig(ports, record, { latencyMs }));
  await gateway.event((e) => e.type === 'instance-state' && e.instance === 'hot' && e.to === 'ready', 20_000, 'the hot standby');
  return { gateway, record };
}

describe('jobs', () => {
  it('runs every item once, records the results in item order and writes results.jsonl', async () => {
    const { gateway, record } = await twoInstances();
    const { job, created } = await gateway.app.jobs.submit(inferJob(40, { concurrency: 4 }), null);
    expect(created).toBe(true);
    const done = await waitForJob(gateway, job);
    expect(done).toMatchObject({ state: 'succeeded', total: 40, succeeded: 40, failed: 0 });
    const runs = runsPerItem(record, job.id);
    expect(runs.size).toBe(40);
    expect([...runs.values()].every((n) => n === 1)).toBe(true);
    const lines = readFileSync(done.outputs.results, 'utf8').trim().split('\n').map((line) => JSON.parse(line));
    expect(lines.map((line) => line.index)).toEqual(Array.from({ length: 40 }, (_, i) => i));
    expect(lines[7]).toMatchObject({ index: 7, state: 'succeeded', status: 200, json: { requestId: `${job.id}.7` } });
    // At boot the hot standby may answer until the primary is ready.
    expect(['primary', 'hot']).toContain(lines[7].instance);
  });

  it('records an item the service rejects with a 4xx as failed, without trying it again', async () => {
    const { gateway, record } = await twoInstances();
    const job = inferJob(5);
    (job.items as Record<string, unknown>[])[2] = { json: { n: 2 }, headers: { 'x-answer-status': '422' } };
    const { job: submitted } = await gateway.app.jobs.submit(job, null);
    const done = await waitForJob(gateway, submitted);
    expect(done).toMatchObject({ state: 'failed', succeeded: 4, failed: 1 });
    expect(runsPerItem(record, submitted.id).get(2)).toBe(1);
    const [item] = await gateway.app.jobStore().items(submitted.id, 2, 1);
    expect(item).toMatchObject({ state: 'failed', result: { status: 422, error: 'the service answered 422' } });
  });

  it('finishes on the hot standby when the primary is SIGKILLed mid-job; no finished item is run again', async () => {
    const { gateway, record } = await twoInstances(40);
    const { job } = await gateway.app.jobs.submit(inferJob(120, { concurrency: 4 }), null);
    await waitUntil(async () => (await gateway.app.jobs.view(job.id)).done >= 40, { timeoutMs: 30_000, what: 'a third of the job' });
    const pid = gateway.app.service('infer')!.view().instances.find((i) => i.name === 'primary')!.pid!;
    process.kill(pid, 'SIGKILL');
    const done = await waitForJob(gateway, job);
    expect(done).toMatchObject({ state: 'succeeded', succeeded: 120 });
    const runs = runsPerItem(record, job.id);
    expect(runs.size).toBe(120);
    const twice = [...runs.values()].filter((n) => n > 1).length;
    expect(twice).toBeLessThanOrEqual(4);
    const items = await gateway.app.jobStore().items(job.id, 0, 1000);
    expect(items.filter((item) => item.result?.instance === 'hot').length).toBeGreaterThan(0);
  });

  it('pauses (items in flight finish), resumes and cancels', async () => {
    const { gateway } = await twoInstances(30);
    const { job } = await gateway.app.jobs.submit(inferJob(200, { concurrency: 2 }), null);
    await waitUntil(async () => (await gateway.app.jobs.view(job.id)).done >= 5, { what: 'some items done' });
    const paused = await gateway.app.jobs.pause(job.id);
    expect(paused.state).toBe('paused');
    await waitUntil(async () => (await gateway.app.jobs.view(job.id)).running === 0, { what: 'in-flight items to finish' });
    const still = (await gateway.app.jobs.view(job.id)).done;
    expect((await gateway.app.jobStore().getJob(job.id))!.state).toBe('paused');
    await expect(gateway.app.jobs.pause(job.id)).rejects.toThrow(/cannot pause/);
    const resumed = await gateway.app.jobs.resume(job.id);
    expect(resumed.state).toBe('running');
    await waitUntil(async () => (await gateway.app.jobs.view(job.id)).done >= still + 5, { what: 'progress after resume' });
    const cancelled = await gateway.app.jobs.cancel(job.id);
    expect(cancelled.state).toBe('cancelled');
    expect(cancelled.done).toBeLessThan(200);
    const lines = readFileSync(cancelled.outputs.results, 'utf8').trim().split('\n');
    expect(lines).toHaveLength(200);
    expect(JSON.parse(lines[199]!)).toMatchObject({ index: 199, state: 'pending' });
    await expect(gateway.app.jobs.resume(job.id)).rejects.toThrow(/cancelled; nothing to resume/);
  });

  it('rejects bad submissions with the field at fault, and creates nothing', async () => {
    const { gateway } = await twoInstances();
    await expect(gateway.app.jobs.submit({ service: 'nope', items: [{ path: '/x' }] }, null)).rejects.toThrow('no service named nope');
    await expect(gateway.app.jobs.submit({ service: 'infer', items: [] }, null)).rejects.toThrow('items: a job needs at least one item');
    await expect(gateway.app.jobs.submit({ service: 'infer', items: [{ json: 1 }] }, null)).rejects.toThrow(
      'items[0].path: required (set it on the item or in defaults)',
    );
    await expect(
      gateway.app.jobs.submit({ service: 'infer', defaults: { path: '/v1/infer' }, items: [{ file: '/nonexistent/a.wav' }], concurrency: 0 }, null),
    ).rejects.toThrow('concurrency: Too small');
    await expect(gateway.app.jobs.submit({ service: 'infer', defaults: { path: '/v1/infer' }, items: [{ file: '/nonexistent/a.wav' }] }, null)).rejects.toThrow(
      'items[0].file: /nonexistent/a.wav: no such file',
    );
    await expect(gateway.app.jobs.submit({ service: 'infer', items: [{ path: 'v1', text: 'a', json: 1 }] }, null)).rejects.toThrow(
      /items\[0\]\.path: must start with "\/".*give at most one of json, text, base64 and file/,
    );
    expect(await gateway.app.jobs.list({})).toEqual([]);
  });

  it('gives the same job for a repeated Idempotency-Key, and refuses the key for a different job', async () => {
    const { gateway } = await twoInstances();
    const first = await gateway.app.jobs.submit(inferJob(3), 'nightly-2026-11-21');
    const again = await gateway.app.jobs.submit(inferJob(3), 'nightly-2026-11-21');
    expect(again).toMatchObject({ created: false, job: { id: first.job.id } });
    await expect(gateway.app.jobs.submit(inferJob(4), 'nightly-2026-11-21')).rejects.toThrow(/already used for job .* with a different submission/);
    expect(await gateway.app.jobs.list({})).toHaveLength(1);
  });
});
