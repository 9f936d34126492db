import { rmSync, statfsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startModelServer, stopAll } from '../support/fixture.js';
import { closeAllGateways, startGateway } from '../support/gateway.js';
import { canMount, mountTmpfs, unmountAll } from '../support/tmpfs.js';
import { waitUntil } from '../support/wait.js';
import { inferJob } from './support.js';

/* The disk under the state directory fills up mid-job: a real tmpfs, mounted for the test (needs root). */

afterEach(async () => {
  await closeAllGateways();
  await stopAll();
  unmountAll();
});

describe('a full disk', () => {
  const name = 'pauses the job with the reason, loses and rewrites no finished item, and finishes once there is room';
  it.skipIf(!canMount)(canMount ? name : `${name} (skipped: cannot mount a tmpfs here, needs root)`, async () => {
    const disk = mountTmpfs('16m')!;
    const model = await startModelServer({ name: 'model', latencyMs: 1 });
    const gateway = await startGateway(
      `stateDir: ${path.join(disk, 'state')}\ngateway: { listen: "127.0.0.1:0" }\njobs: { inlineLimit: 256B, retryDelay: 50ms }\n` +
        `services:\n  infer:\n    route: { pathPrefix: / }\n    instances:\n      model: { tier: primary, url: "${model.url}" }\n`,
    );
    await gateway.event((e) => e.type === 'active-changed', 10_000, 'a ready instance');
    // Leave about 200 KiB: room for some results (each its own file, a page or more), not for 300.
    const { bavail, bsize } = statfsSync(disk);
    const filler = path.join(disk, 'filler');
    writeFileSync(filler, Buffer.alloc(Math.max(0, bavail * bsize - 200 * 1024)));

    const { job } = await gateway.app.jobs.submit(inferJob(300, { concurrency: 4 }), null);
    const paused = await gateway.event((e) => e.type === 'job-state' && e.job === job.id && e.to === 'paused', 30_000, 'the job to pause');
    expect(paused.reason).toMatch(/paused because the job store failed: .*(full|ENOSPC)/);
    const view = await gateway.app.jobs.view(job.id);
    expect(view.state).toBe('paused');
    expect(view.done).toBeGreaterThan(0);
    expect(view.done).toBeLessThan(300);

    // What was recorded before the disk filled stays as it was.
    const before = (await gateway.app.jobStore().items(job.id, 0, 300)).filter((item) => item.result);
    expect(before.length).toBe(view.done);

    rmSync(filler);
    // Items in flight at the pause finish (or fail on the full disk) before the job goes on.
    await waitUntil(async () => (await gateway.app.jobs.view(job.id)).running === 0, { what: 'items in flight to end' });
    await gateway.app.jobs.resume(job.id);
    await gateway.event((e) => e.type === 'job-state' && e.job === job.id && e.to === 'succeeded', 30_000, 'the job to succeed');
    const after = await gateway.app.jobStore().items(job.id, 0, 300);
    expect(after.every((item) => item.state === 'succeeded')).toBe(true);
    for (const item of before) {
      expect(after[item.index]!.result).toEqual(item.result);
    }
  });
});
