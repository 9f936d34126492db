import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import type { UnderstudyEvent } from '../../src/core/index.js';
import type { JobView } from '../../src/jobs/index.js';
import { freePorts } from '../support/ports.js';
import { waitUntil } from '../support/wait.js';
import { inferJob, twoInstanceConfig } from './support.js';
import { CLI, startUp, stopUp, type UpProcess } from './up-process.js';

/*
 * Retention of finished jobs (jobs.retention, `understudy jobs prune`): what must stay
 * stays (running and paused jobs, the newest finished ones), the rest goes with its
 * files, by command and at a restart. The built CLI and real processes throughout.
 */

const run = promisify(execFile);
let ups: UpProcess[] = [];
const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(ups.map(stopUp));
  ups = [];
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

async function cli(configFile: string, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args, '-c', configFile]);
    return { code: 0, stdout, stderr };
  } catch (error) {
    return error as { code: number; stdout: string; stderr: string };
  }
}

describe('retention of finished jobs', () => {
  it('jobs prune removes what the rule says with its files, a restart applies jobs.retention, running and paused jobs stay', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'understudy-retention-'));
    dirs.push(dir);
    const stateDir = path.join(dir, 'state');
    const configFile = path.join(dir, 'understudy.yaml');
    const [p1, p2, admin] = (await freePorts(3)) as [number, number, number];
    // The CLI finds the admin API by the config, so it listens on a port known in advance.
    const config = (jobs: string) =>
      twoInstanceConfig([p1, p2], path.join(dir, 'requests.log'), { latencyMs: 30, jobs, extra: 'log: { level: info }' })
        .replace('STATE', stateDir)
        .replace('admin: { listen: "127.0.0.1:0" }', `admin: { listen: "127.0.0.1:${admin}" }`);
    // The shipped retention (30 days, 1000 jobs) at first: nothing of this test's is old or many enough to go.
    writeFileSync(configFile, config('jobs: { retryDelay: 100ms }'));
    let up = await startUp(configFile, stateDir);
    ups.push(up);

    const finished: JobView[] = [];
    for (let n = 0; n < 4; n++) {
      const { job } = await up.api<{ job: JobView }>('POST', '/v1/jobs', inferJob(3, { name: `batch ${n}`, join: 'concat' }));
      await waitUntil(async () => (await up.job(job.id)).state === 'succeeded', { timeoutMs: 30_000, what: `job ${n} to finish` });
      finished.push(job);
    }
    // One job left paused with work to do: it must outlive every prune.
    const { job: paused } = await up.api<{ job: JobView }>('POST', '/v1/jobs', inferJob(200, { concurrency: 1 }));
    await up.api('POST', `/v1/jobs/${paused.id}/pause`, {});
    const filesOf = (job: JobView) => path.join(stateDir, 'jobs', job.id);
    for (const job of finished) expect(existsSync(path.join(filesOf(job), 'output.bin'))).toBe(true);

    // A dry run says which would go and removes nothing.
    const preview = await cli(configFile, 'jobs', 'prune', '--keep', '2', '--dry-run');
    expect(preview.stderr).toBe('');
    expect(preview.stdout).toContain(`would remove  ${finished[1]!.id}  infer batch 1  succeeded, 3 items, finished `);
    expect(preview.stdout).toContain(`would remove  ${finished[0]!.id}  infer batch 0`);
    expect(preview.stdout).toMatch(/2 finished jobs to remove \(finished over 30d ago or past the newest 2\)\n$/);
    expect(existsSync(filesOf(finished[0]!))).toBe(true);
    expect((await up.job(finished[0]!.id)).state).toBe('succeeded');

    // Bad input is refused and changes nothing.
    const bad = await cli(configFile, 'jobs', 'prune', '--older-than', 'soon');
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('"maxAge" is a duration with its unit, such as "7d"');
    // A misspelt dryRun is refused, never taken as a real prune; so is a bare number (milliseconds).
    await expect(up.api('POST', '/v1/jobs/prune', { dry_run: true })).rejects.toThrow(/400 .*unknown field \\"dry_run\\"/);
    await expect(up.api('POST', '/v1/jobs/prune', { maxAge: 7 })).rejects.toThrow(/400 .*maxAge/);
    await expect(up.api('POST', '/v1/jobs/prune', [])).rejects.toThrow(/400 .*JSON object/);
    expect(existsSync(filesOf(finished[0]!))).toBe(true);
    // Days, as the docs write them: nothing here is a week old.
    const byAge = await cli(configFile, 'jobs', 'prune', '--older-than', '7d', '--dry-run');
    expect(byAge.stdout).toBe('0 finished jobs to remove (finished over 7d ago or past the newest 1000)\n');

    // Keep the newest three: the oldest goes, from the store and from disk.
    const pruned = await cli(configFile, 'jobs', 'prune', '--keep', '3');
    expect(pruned.stdout).toContain(`removed  ${finished[0]!.id}  infer batch 0`);
    expect(pruned.stdout).toMatch(/1 finished jobs removed/);
    expect(existsSync(filesOf(finished[0]!))).toBe(false);
    await expect(up.job(finished[0]!.id)).rejects.toThrow(/404/);
    const actions = (await up.api<{ events: UnderstudyEvent[] }>('GET', '/v1/events?type=operator-action')).events;
    expect(actions.filter((e) => (e as { action: string }).action === 'prune jobs').map((e) => (e as { outcome: string }).outcome)).toEqual([
      'accepted',
      'refused',
      'refused',
      'refused',
      'refused',
      'accepted',
      'accepted',
    ]);

    // Restarted with a stricter retention: it applies at start, without being asked.
    await stopUp(up);
    ups = [];
    writeFileSync(configFile, config('jobs: { retryDelay: 100ms, retention: { maxAge: null, maxCount: 1 } }'));
    up = await startUp(configFile, stateDir);
    ups.push(up);
    await waitUntil(async () => !existsSync(filesOf(finished[2]!)), { timeoutMs: 10_000, what: 'the prune at start' });
    const left = (await up.api<{ jobs: JobView[] }>('GET', '/v1/jobs')).jobs.map((job) => [job.id, job.state]);
    expect(left).toEqual([
      [paused.id, 'paused'],
      [finished[3]!.id, 'succeeded'],
    ]);
    expect(existsSync(filesOf(finished[1]!))).toBe(false);
    expect(existsSync(path.join(filesOf(finished[3]!), 'output.bin'))).toBe(true);
    expect(up.output()).toContain('removed 2 finished jobs and their files (jobs.retention)');
    // The paused job still resumes where it was.
    const resumed = await up.api<{ job: JobView }>('POST', `/v1/jobs/${paused.id}/resume`, {});
    expect(resumed.job.state).toBe('running');
  });
});
