import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/index.js';
import { SnapshotStore, type Manifest } from '../../src/backup/index.js';
import { bytes, tempDir, writeTree } from './support.js';

const DAY = 86_400_000;

/** Ten daily snapshots of tts: a shared 50 kB file, and a 1000+i byte file that differs each day. */
async function tenDays() {
  const root = tempDir();
  const model = path.join(root, 'model');
  const clock = new ManualClock(Date.parse('2025-03-03T03:00:00Z'));
  const store = new SnapshotStore(path.join(root, 'store'), { clock, timeZone: 'UTC' });
  await store.open();
  const snaps: Manifest[] = [];
  for (let i = 0; i < 10; i++) {
    writeTree(model, { 'shared.bin': bytes(50_000, 1), 'daily.bin': bytes(1000 + i, 100 + i) });
    snaps.push(await store.create({ service: 'tts', paths: [model], trigger: 'schedule' }));
    clock.advance(DAY);
  }
  return { root, model, store, snaps, clock };
}

const blobPath = (store: SnapshotStore, m: Manifest, rel: string) => {
  const sha = m.entries.find((e) => e.path === rel)!.sha256!;
  return path.join(store.dir, 'blobs', 'sha256', sha.slice(0, 2), sha);
};

describe('SnapshotStore.prune', () => {
  it('deletes what retention does not keep, sweeps their blobs, keeps shared ones and the newest known-good', async () => {
    const { store, snaps } = await tenDays();
    await store.setKnownGood(snaps[0]!.id);
    await store.setKnownGood(snaps[1]!.id);
    const policy = { last: 2, daily: 3, weekly: 0 };
    const ids = (...idx: number[]) => idx.map((i) => snaps[i]!.id);

    const dry = await store.prune(policy, { dryRun: true });
    const expected = {
      deleted: ids(6, 5, 4, 3, 2, 0),
      kept: ids(9, 8, 7, 1),
      broken: [],
      blobsRemoved: 6,
      freedBytes: [6, 5, 4, 3, 2, 0].reduce((sum, i) => sum + 1000 + i, 0),
    };
    expect(dry).toEqual({ dryRun: true, ...expected });
    expect((await store.list()).length).toBe(10);

    const done = await store.prune(policy);
    expect(done).toEqual({ dryRun: false, ...expected });
    expect((await store.list()).map((s) => [s.id, s.knownGood])).toEqual([
      [snaps[9]!.id, false],
      [snaps[8]!.id, false],
      [snaps[7]!.id, false],
      [snaps[1]!.id, true],
    ]);
    expect(existsSync(blobPath(store, snaps[0]!, 'daily.bin'))).toBe(false);
    expect(existsSync(blobPath(store, snaps[1]!, 'daily.bin'))).toBe(true);
    expect(existsSync(blobPath(store, snaps[0]!, 'shared.bin'))).toBe(true);
    expect(readdirSync(path.join(store.dir, 'snapshots')).filter((n) => n.endsWith('.known-good'))).toEqual([`${snaps[1]!.id}.known-good`]);
    expect(await store.verify()).toMatchObject({ ok: true, blobs: 5 });

    // Again: nothing more to do.
    expect(await store.prune(policy)).toMatchObject({ deleted: [], blobsRemoved: 0, freedBytes: 0 });
  });

  it('leaves a damaged manifest and the blobs it still names, and reports it', async () => {
    const { store, snaps } = await tenDays();
    const file = path.join(store.dir, 'snapshots', `${snaps[3]!.id}.json`);
    const text = readFileSync(file, 'utf8');
    // Cut after its entries, so the blob hashes are still in it.
    writeFileSync(file, text.slice(0, text.indexOf('"images"')));
    const result = await store.prune({ last: 1, daily: 0, weekly: 0 });
    expect(result.broken).toEqual([snaps[3]!.id]);
    expect(result.kept).toEqual([snaps[9]!.id]);
    expect(result.deleted).toHaveLength(8);
    expect(existsSync(file)).toBe(true);
    expect(existsSync(blobPath(store, snaps[3]!, 'daily.bin'))).toBe(true);
    expect(existsSync(blobPath(store, snaps[4]!, 'daily.bin'))).toBe(false);
    const report = await store.verify();
    expect(report.problems.map((p) => [p.snapshot, p.kind])).toEqual([[snaps[3]!.id, 'manifest']]);
    expect((await store.list()).map((s) => [s.id, s.broken])).toEqual([
      [snaps[9]!.id, false],
      [snaps[3]!.id, true],
    ]);
  });

  it('applies a per-service policy and leaves other services alone', async () => {
    const { store, snaps, root, clock } = await tenDays();
    const other = path.join(root, 'asr');
    writeTree(other, { 'asr.bin': bytes(3000, 9) });
    const asr1 = await store.create({ service: 'asr', paths: [other], trigger: 'manual' });
    clock.advance(1000);
    const asr2 = await store.create({ service: 'asr', paths: [other], trigger: 'manual' });
    const result = await store.prune({ last: 1, daily: 0, weekly: 0 }, { perService: new Map([['tts', { last: 3, daily: 0, weekly: 0 }]]) });
    expect(result.kept).toEqual([asr2.id, snaps[9]!.id, snaps[8]!.id, snaps[7]!.id]);
    expect(result.deleted).toContain(asr1.id);
    expect(await store.verify()).toMatchObject({ ok: true });
  });
});
