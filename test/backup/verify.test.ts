import { readFileSync, rmSync, truncateSync, writeFileSync, appendFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/index.js';
import { SnapshotStore, type Manifest } from '../../src/backup/index.js';
import { bytes, canMount, fingerprint, flipByte, mountTmpfs, remountReadOnly, tempDir, writeTree } from './support.js';

async function twoSnapshots(storeDir?: string) {
  const root = tempDir();
  const model = path.join(root, 'model');
  writeTree(model, { 'weights.bin': bytes(100_000, 1), 'config.json': '{"a":1}', nested: { 'shared.bin': bytes(2000, 3) } });
  const clock = new ManualClock(Date.parse('2025-06-02T03:00:00Z'));
  const store = new SnapshotStore(storeDir ?? path.join(root, 'store'), { clock });
  await store.open();
  const a = await store.create({ service: 'tts', paths: [model], trigger: 'manual' });
  clock.advance(60_000);
  writeFileSync(path.join(model, 'config.json'), '{"a":2,"b":3}');
  const b = await store.create({ service: 'tts', paths: [model], trigger: 'manual' });
  return { root, model, store, a, b };
}

const blobOf = (store: SnapshotStore, m: Manifest, rel: string) => {
  const sha = m.entries.find((e) => e.path === rel)!.sha256!;
  return path.join(store.dir, 'blobs', 'sha256', sha.slice(0, 2), sha);
};

describe('SnapshotStore.verify', () => {
  it('names every snapshot and file path that one corrupt byte in a shared blob affects', async () => {
    const { store, model, a, b } = await twoSnapshots();
    const blob = blobOf(store, a, 'weights.bin');
    flipByte(blob, 5000);
    const report = await store.verify();
    expect(report.ok).toBe(false);
    expect(report.snapshots).toEqual([
      { id: a.id, ok: false },
      { id: b.id, ok: false },
    ]);
    expect(report.problems.map((p) => [p.snapshot, p.kind, p.path, p.blob])).toEqual([
      [a.id, 'changed', path.join(model, 'weights.bin'), blob],
      [b.id, 'changed', path.join(model, 'weights.bin'), blob],
    ]);
    expect(report.problems[0]!.detail).toMatch(/^its blob .* has changed \(its content hashes to [0-9a-f]{12}…\)$/);
    // One snapshot only.
    const one = await store.verify(b.id);
    expect(one.snapshots).toEqual([{ id: b.id, ok: false }]);
    expect(one.problems).toHaveLength(1);
  });

  it('reports a missing blob and a blob of the wrong size', async () => {
    const { store, model, a, b } = await twoSnapshots();
    rmSync(blobOf(store, a, 'config.json'));
    truncateSync(blobOf(store, a, 'nested/shared.bin'), 10);
    const report = await store.verify();
    expect(report.problems.map((p) => [p.snapshot, p.kind, p.path])).toEqual([
      [a.id, 'missing', path.join(model, 'config.json')],
      [a.id, 'size', path.join(model, 'nested', 'shared.bin')],
      [b.id, 'size', path.join(model, 'nested', 'shared.bin')],
    ]);
    expect(report.problems[1]!.detail).toMatch(/has 10 bytes, not 2000$/);
    expect(report.snapshots).toEqual([
      { id: a.id, ok: false },
      { id: b.id, ok: false },
    ]);
  });

  it('reports a truncated, an emptied and an edited manifest, and checks the others', async () => {
    const { store, a, b, model } = await twoSnapshots();
    const file = path.join(store.dir, 'snapshots', `${a.id}.json`);
    const text = readFileSync(file, 'utf8');
    writeFileSync(file, text.slice(0, text.length / 2));
    let report = await store.verify();
    expect(report.snapshots).toEqual([
      { id: a.id, ok: false },
      { id: b.id, ok: true },
    ]);
    expect(report.problems).toEqual([{ snapshot: a.id, kind: 'manifest', path: file, detail: expect.stringMatching(/: not whole JSON \(truncated or damaged\)/) }]);

    writeFileSync(file, '');
    expect((await store.verify()).problems[0]!.detail).toBe(`${file}: empty file`);

    writeFileSync(file, text.replace(JSON.stringify(model), JSON.stringify('/etc')));
    expect((await store.verify()).problems[0]!.detail).toBe(`${file}: checksum does not match its content (damaged or edited)`);
    await expect(store.get(a.id)).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT', message: expect.stringContaining('checksum does not match') });

    // Listed as broken rather than thrown.
    const listed = await store.list();
    expect(listed.map((s) => [s.id, s.broken])).toEqual([
      [b.id, false],
      [a.id, true],
    ]);
    expect(listed[1]).toMatchObject({ service: 'tts', createdAt: a.createdAt, problem: expect.stringContaining('checksum') });

    appendFileSync(path.join(store.dir, 'snapshots', `${b.id}.json`), '   ');
    report = await store.verify(b.id);
    expect(report.ok).toBe(true);
  });

  it('writes nothing: the store is the same, byte for byte and time for time, after a verify', async () => {
    const { store, a } = await twoSnapshots();
    flipByte(blobOf(store, a, 'weights.bin'), 1);
    const before = fingerprint(store.dir);
    const other = new SnapshotStore(store.dir);
    await other.verify();
    await other.list();
    await other.get(a.id);
    expect(fingerprint(store.dir)).toBe(before);
  });

  const roName = 'works on a store mounted read-only';
  it.skipIf(!canMount)(canMount ? roName : `${roName} (skipped: cannot mount a tmpfs here, needs root)`, async () => {
    const disk = mountTmpfs('16m')!;
    const { a, b } = await twoSnapshots(disk);
    remountReadOnly(disk);
    const store = new SnapshotStore(disk);
    const report = await store.verify();
    expect(report).toMatchObject({ ok: true, snapshots: [{ id: a.id, ok: true }, { id: b.id, ok: true }] });
    expect((await store.list()).map((s) => s.id)).toEqual([b.id, a.id]);
  });
});
