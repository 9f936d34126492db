import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/index.js';
import { SnapshotStore } from '../../src/backup/index.js';
import { bytes, canMount, listFiles, mountTmpfs, readTree, tempDir, writeTree } from './support.js';

/* A real tmpfs, mounted for the test (needs root), fills up. */

const skipped = (name: string) => (canMount ? name : `${name} (skipped: cannot mount a tmpfs here, needs root)`);

describe('a full disk', () => {
  it.skipIf(!canMount)(skipped('under the store: DISK_FULL, no manifest, nothing left behind, older snapshots whole'), async () => {
    const disk = mountTmpfs('8m')!;
    const root = tempDir();
    const small = path.join(root, 'small');
    writeTree(small, { 'a.bin': bytes(512 * 1024, 1) });
    const clock = new ManualClock(Date.parse('2025-06-02T03:00:00Z'));
    const store = new SnapshotStore(disk, { clock });
    await store.open();
    const first = await store.create({ service: 'tts', paths: [small], trigger: 'manual' });
    const before = listFiles(disk);

    const big = path.join(root, 'big');
    writeTree(big, Object.fromEntries(Array.from({ length: 4 }, (_, i) => [`part${i}.bin`, bytes(3 * 1024 * 1024, 10 + i)])));
    clock.advance(1000);
    const error = await store.create({ service: 'tts', paths: [small, big], trigger: 'manual' }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'DISK_FULL', retryable: true, details: { dir: disk } });
    expect((error as Error).message).toMatch(
      new RegExp(`^the disk of the snapshot store ${disk} is full \\(.* free\\): the snapshot of tts needs more room; no snapshot was written and nothing in the store was changed$`),
    );
    // The blobs it had put in place are gone again, and no temp file is left.
    expect(listFiles(disk)).toEqual(before);
    expect((await store.list()).map((s) => s.id)).toEqual([first.id]);
    expect(await store.verify()).toMatchObject({ ok: true, snapshots: [{ id: first.id, ok: true }] });

    // Room again: the same snapshot succeeds.
    const fits = path.join(root, 'fits');
    writeTree(fits, { 'b.bin': bytes(1024 * 1024, 5) });
    expect((await store.create({ service: 'tts', paths: [small, fits], trigger: 'manual' })).totals.newBytes).toBe(1024 * 1024);
  });

  it.skipIf(!canMount)(skipped('under a restore target: DISK_FULL, the copy removed, the target as it was'), async () => {
    const disk = mountTmpfs('4m')!;
    const root = tempDir();
    const model = path.join(disk, 'model');
    writeTree(model, { 'w.bin': bytes(1536 * 1024, 1), 'x.bin': bytes(1536 * 1024, 2) });
    const store = new SnapshotStore(path.join(root, 'store'), { clock: new ManualClock(0) });
    await store.open();
    const snapshot = await store.create({ service: 'tts', paths: [model], trigger: 'manual' });
    writeFileSync(path.join(model, 'w.bin'), 'now small');
    const before = readTree(model);
    const error = await store.restore(snapshot.id).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'DISK_FULL', details: { dir: disk } });
    expect((error as Error).message).toBe(`the disk of ${disk} is full: no room for a copy of snapshot ${snapshot.id}; the copies were removed and ${model} is as before`);
    expect(readTree(model)).toEqual(before);
    expect(readdirSync(disk)).toEqual(['model']);
    expect(readFileSync(path.join(model, 'w.bin'), 'utf8')).toBe('now small');
  });
});
