import { appendFileSync, chmodSync, existsSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/index.js';
import { BackupError, SnapshotStore, type CreateProgress } from '../../src/backup/index.js';
import { bytes, listFiles, sha256, tempDir, writeTree } from './support.js';

const T0 = Date.parse('2025-06-02T03:00:00.000Z');

async function setup(spec = defaultTree()) {
  const root = tempDir();
  const model = path.join(root, 'models', 'tts');
  const config = path.join(root, 'etc', 'tts.yaml');
  writeTree(model, spec);
  writeTree(path.dirname(config), { 'tts.yaml': 'voice: alto\n' });
  const clock = new ManualClock(T0);
  const store = new SnapshotStore(path.join(root, 'store'), { clock, timeZone: 'UTC' });
  await store.open();
  return { root, model, config, clock, store, paths: [model, config] };
}

function defaultTree() {
  return {
    'weights.bin': bytes(300_000, 1),
    'tokenizer.json': '{"vocab": 1}',
    'run.sh': { mode: 0o755, content: '#!/bin/sh\necho hi\n' },
    current: { link: 'weights.bin' },
    empty: {},
    sub: { 'a.txt': 'a', 'b.txt': 'b' },
  };
}

describe('SnapshotStore.create', () => {
  it('stores every file once by content and writes a manifest that verifies', async () => {
    const { store, model, config, paths, clock } = await setup();
    const m = await store.create({ service: 'tts', paths, trigger: 'manual', version: 'v1' });
    expect(m.id).toMatch(/^tts-20250602T030000000Z-[0-9a-f]{6}$/);
    expect(m).toMatchObject({ format: 1, service: 'tts', version: 'v1', trigger: 'manual', createdAt: T0, images: [] });
    expect(m.roots).toEqual([
      { source: model, kind: 'dir' },
      { source: config, kind: 'file' },
    ]);
    const byPath = Object.fromEntries(m.entries.map((e) => [`${e.root}:${e.path}`, e]));
    expect(Object.keys(byPath)).toEqual(['0:', '0:current', '0:empty', '0:run.sh', '0:sub', '0:sub/a.txt', '0:sub/b.txt', '0:tokenizer.json', '0:weights.bin', '1:']);
    expect(byPath['0:current']).toMatchObject({ type: 'symlink', target: 'weights.bin' });
    expect(byPath['0:run.sh']).toMatchObject({ type: 'file', mode: 0o755 });
    expect(byPath['0:weights.bin']!.sha256).toBe(sha256(readFileSync(path.join(model, 'weights.bin'))));
    const total = 300_000 + 12 + 18 + 1 + 1 + 'voice: alto\n'.length;
    expect(m.totals).toEqual({ files: 6, bytes: total, newBytes: total, reusedBytes: 0, readBytes: total });

    const blobs = listFiles(path.join(store.dir, 'blobs', 'sha256')).filter((f) => f.includes('/'));
    expect(blobs).toHaveLength(6);
    for (const blob of blobs) expect(blob).toMatch(/^([0-9a-f]{2})\/\1[0-9a-f]{62}$/);
    expect(readdirSync(path.join(store.dir, 'tmp'))).toEqual([]);

    expect(await store.verify()).toMatchObject({ ok: true, problems: [], blobs: 6, snapshots: [{ id: m.id, ok: true }] });
    expect((await store.get(m.id)).manifest).toEqual(m);

    clock.advance(60_000);
    const m2 = await store.create({ service: 'tts', paths, trigger: 'schedule' });
    expect(m2.totals).toMatchObject({ newBytes: 0, reusedBytes: total, readBytes: 0 });
    expect(listFiles(path.join(store.dir, 'blobs', 'sha256')).filter((f) => f.includes('/'))).toHaveLength(6);
  });

  it('writes and reads only the changed file for the next snapshot', async () => {
    const { store, model, paths, clock } = await setup();
    const first = await store.create({ service: 'tts', paths, trigger: 'manual' });
    clock.advance(1000);
    const changed = bytes(123_457, 2);
    writeFileSync(path.join(model, 'tokenizer.json'), changed);
    const second = await store.create({ service: 'tts', paths, trigger: 'config-change' });
    expect(second.totals.newBytes).toBe(changed.length);
    expect(second.totals.readBytes).toBe(changed.length);
    expect(second.totals.reusedBytes).toBe(second.totals.bytes - changed.length);
    // Both snapshots stay whole, and share every other blob.
    expect((await store.verify()).ok).toBe(true);
    const weights = (m: typeof first) => m.entries.find((e) => e.path === 'weights.bin')!.sha256;
    expect(weights(second)).toBe(weights(first));
  });

  it('takes a file whose size, times, inode and mode are unchanged without reading it; rehash reads everything', async () => {
    const { store, model, paths, clock } = await setup();
    const first = await store.create({ service: 'tts', paths, trigger: 'manual' });
    // Unreadable to the store (as root, permissions do not stop a read, so a file that is not read
    // is proven by the count of bytes read instead).
    chmodSync(path.join(model, 'weights.bin'), 0o755);
    chmodSync(path.join(model, 'weights.bin'), 0o644);
    clock.advance(1000);
    const touched = await store.create({ service: 'tts', paths, trigger: 'manual' });
    // chmod changed the ctime: read again (300 kB), found the same, nothing written.
    expect(touched.totals).toMatchObject({ newBytes: 0, readBytes: 300_000 });
    clock.advance(1000);
    const untouched = await store.create({ service: 'tts', paths, trigger: 'manual' });
    expect(untouched.totals).toMatchObject({ newBytes: 0, readBytes: 0 });
    clock.advance(1000);
    const rehashed = await store.create({ service: 'tts', paths, trigger: 'manual', rehash: true });
    expect(rehashed.totals).toMatchObject({ newBytes: 0, readBytes: first.totals.bytes });
  });

  it('sees a same-size rewrite that keeps the mtime (by its ctime), and a different file at the path (by its inode)', async () => {
    const { store, model, paths, clock } = await setup();
    await store.create({ service: 'tts', paths, trigger: 'manual' });
    const file = path.join(model, 'weights.bin');
    const { atime, mtime } = statSync(file);
    writeFileSync(file, bytes(300_000, 99));
    utimesSync(file, atime, mtime);
    clock.advance(1000);
    const second = await store.create({ service: 'tts', paths, trigger: 'manual' });
    expect(second.entries.find((e) => e.path === 'weights.bin')!.sha256).toBe(sha256(bytes(300_000, 99)));
    expect(second.totals.newBytes).toBe(300_000);
  });

  it('reads a file again when it changes while copied, and fails with SOURCE_CHANGED when it changes again', async () => {
    const { store, root, clock } = await setup();
    const dir = path.join(root, 'busy');
    const file = path.join(dir, 'state.bin');
    writeTree(dir, { 'state.bin': bytes(100_000, 1) });
    // Progress comes after each chunk is read and before the copy is checked: a write there lands mid-copy.
    let writes = 0;
    const writeDuringCopy = (times: number) => (p: CreateProgress) => {
      clock.advance(100);
      if (p.phase === 'copy' && p.bytesDone > 0 && writes < times) {
        writes++;
        appendFileSync(file, 'more');
      }
    };
    const m = await store.create({ service: 'busy', paths: [dir], trigger: 'manual', onProgress: writeDuringCopy(1) });
    expect(writes).toBe(1);
    expect(m.entries.find((e) => e.path === 'state.bin')).toMatchObject({ size: 100_004, sha256: sha256(readFileSync(file)) });
    expect(m.totals.newBytes).toBe(100_004);
    // Read twice (the first read may or may not have caught the 4 bytes written during it).
    expect(m.totals.readBytes).toBeGreaterThanOrEqual(100_000 + 100_004);
    expect(m.totals.readBytes).toBeLessThanOrEqual(2 * 100_004);

    writes = 0;
    writeFileSync(file, bytes(200_000, 2));
    const before = listFiles(store.dir);
    const error = await store.create({ service: 'busy', paths: [dir], trigger: 'manual', onProgress: writeDuringCopy(2) }).catch((e: unknown) => e);
    expect(writes).toBe(2);
    expect(error).toMatchObject({
      code: 'SOURCE_CHANGED',
      retryable: true,
      message: `${file} changed while it was copied, twice; no snapshot was taken (try again when it is not being written)`,
    });
    expect(listFiles(store.dir)).toEqual(before);
  });

  it('copies files larger than one read chunk', async () => {
    const { store, root } = await setup();
    const dir = path.join(root, 'large');
    const content = bytes(10 * 1024 * 1024 + 1, 3);
    writeTree(dir, { 'big.bin': content });
    const m = await store.create({ service: 'large', paths: [dir], trigger: 'manual' });
    const sha = sha256(content);
    expect(m.entries.find((e) => e.path === 'big.bin')!.sha256).toBe(sha);
    expect(sha256(readFileSync(path.join(store.dir, 'blobs', 'sha256', sha.slice(0, 2), sha)))).toBe(sha);
    expect(await store.verify(m.id)).toMatchObject({ ok: true, bytes: content.length });
  });

  it('stores one blob for the same content under several paths and services', async () => {
    const { store, root } = await setup();
    const a = path.join(root, 'a');
    const b = path.join(root, 'b');
    writeTree(a, { 'x.bin': bytes(5000, 7), 'y.bin': bytes(5000, 7) });
    writeTree(b, { 'z.bin': bytes(5000, 7) });
    const ma = await store.create({ service: 'asr', paths: [a], trigger: 'manual' });
    expect(ma.totals).toMatchObject({ bytes: 10_000, newBytes: 5000, reusedBytes: 5000 });
    const mb = await store.create({ service: 'llm', paths: [b], trigger: 'manual' });
    expect(mb.totals).toMatchObject({ newBytes: 0, reusedBytes: 5000, readBytes: 5000 });
  });

  it('fails with SOURCE_MISSING naming the paths, and writes nothing', async () => {
    const { store, model, root } = await setup();
    const before = listFiles(store.dir);
    const missing = path.join(root, 'nope');
    const error = await store.create({ service: 'tts', paths: [model, missing, `${missing}2`], trigger: 'manual' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BackupError);
    expect(error).toMatchObject({ code: 'SOURCE_MISSING', details: { paths: [missing, `${missing}2`] } });
    expect((error as Error).message).toBe(`backup paths of service tts not found: ${missing}, ${missing}2; no snapshot was taken`);
    expect(listFiles(store.dir)).toEqual(before);
  });

  it('refuses bad input by name', async () => {
    const { store, model } = await setup();
    const fail = (options: Parameters<SnapshotStore['create']>[0]) => store.create(options).catch((e: BackupError) => `${e.code}: ${e.message}`);
    expect(await fail({ service: 'tts', paths: ['models/tts'], trigger: 'manual' })).toBe('INVALID_INPUT: backup path "models/tts" of service tts must be absolute');
    expect(await fail({ service: 'bad name', paths: [model], trigger: 'manual' })).toBe('INVALID_INPUT: service "bad name" is not a service name (letters, digits, - and _)');
    expect(await fail({ service: 'tts', paths: [model, path.join(model, 'sub')], trigger: 'manual' })).toBe(
      `INVALID_INPUT: backup path ${path.join(model, 'sub')} of service tts lies inside ${model}, also given`,
    );
    expect(await fail({ service: 'tts', paths: [], trigger: 'manual' })).toBe('INVALID_INPUT: nothing to back up for service tts: no paths and no images');
    expect(await store.list()).toEqual([]);
  });

  it('adds the image step’s entries, and fails cleanly when it fails', async () => {
    const { store, paths, clock } = await setup();
    const ids: string[] = [];
    const m = await store.create({
      service: 'tts',
      paths,
      trigger: 'deploy',
      images: async ({ id }) => {
        ids.push(id);
        // The files are stored before the image step runs.
        expect(listFiles(path.join(store.dir, 'blobs', 'sha256')).filter((f) => f.includes('/'))).toHaveLength(6);
        return [{ instance: 'primary', ref: `127.0.0.1:5000/tts:${id}`, digest: `sha256:${'a'.repeat(64)}`, size: 1234 }];
      },
    });
    expect(ids).toEqual([m.id]);
    expect(m.images).toEqual([{ instance: 'primary', ref: `127.0.0.1:5000/tts:${m.id}`, digest: `sha256:${'a'.repeat(64)}`, size: 1234 }]);
    expect((await store.list())[0]).toMatchObject({ id: m.id, images: 1 });

    const root = path.dirname(path.dirname(paths[0]!));
    const fresh = path.join(root, 'fresh');
    writeTree(fresh, { 'new.bin': bytes(4096, 5) });
    const blobsBefore = listFiles(path.join(store.dir, 'blobs'));
    clock.advance(1000);
    const error = await store
      .create({ service: 'tts', paths: [fresh], trigger: 'deploy', images: () => Promise.reject(new Error('registry unreachable')) })
      .catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'IMAGES_FAILED' });
    expect((error as Error).message).toMatch(/^the image step of snapshot tts-\S+ failed: registry unreachable; no snapshot was written$/);
    expect((await store.list()).map((s) => s.id)).toEqual([m.id]);
    // The blob written for it is gone again, and no temp file is left.
    expect(listFiles(path.join(store.dir, 'blobs'))).toEqual(blobsBefore);
    expect(readdirSync(path.join(store.dir, 'tmp'))).toEqual([]);

    const bad = await store
      .create({ service: 'tts', paths: [fresh], trigger: 'deploy', images: async () => [{ instance: 'p', ref: 'r', digest: '', size: 1 }] })
      .catch((e: BackupError) => e.message);
    expect(bad).toMatch(/returned a bad entry: images\[0\] \.digest must be a non-empty string/);
  });

  it('stops on abort with ABORTED and leaves the store as it was', async () => {
    const { store, paths, clock } = await setup();
    const before = listFiles(store.dir);
    const controller = new AbortController();
    const progress: CreateProgress[] = [];
    const error = await store
      .create({
        service: 'tts',
        paths,
        trigger: 'manual',
        signal: controller.signal,
        onProgress: (p) => {
          progress.push(p);
          clock.advance(100);
          // Mid-copy: some blobs are in place by now, and must go again.
          if (p.phase === 'copy' && p.files > 2) controller.abort();
        },
      })
      .catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'ABORTED', message: 'the snapshot of tts was cancelled; nothing was changed' });
    expect(progress.at(-1)).toMatchObject({ phase: 'copy', files: 3 });
    expect(listFiles(store.dir)).toEqual(before);
  });

  it('reports progress at most every 100 ms and at each phase', async () => {
    const { store, paths } = await setup();
    const seen: CreateProgress[] = [];
    await store.create({ service: 'tts', paths, trigger: 'manual', onProgress: (p) => seen.push(p) });
    // The clock does not move: the first call, then one per phase.
    expect(seen.map((p) => p.phase)).toEqual(['scan', 'copy', 'images', 'manifest', 'done']);
    expect(seen.at(-1)).toMatchObject({ bytesDone: seen.at(-1)!.bytesTotal, files: 6 });
  });

  it('lists newest first with known-good flags; get and setKnownGood refuse unknown ids', async () => {
    const { store, paths, clock, root } = await setup();
    const a = await store.create({ service: 'tts', paths, trigger: 'manual' });
    clock.advance(1000);
    const other = path.join(root, 'other');
    writeTree(other, { 'w.bin': 'w' });
    const b = await store.create({ service: 'tts-large', paths: [other], trigger: 'manual' });
    clock.advance(1000);
    const c = await store.create({ service: 'tts', paths, trigger: 'schedule' });
    await store.setKnownGood(a.id);
    await store.setKnownGood(a.id);
    expect((await store.list()).map((s) => [s.id, s.knownGood])).toEqual([
      [c.id, false],
      [b.id, false],
      [a.id, true],
    ]);
    // "tts" is a prefix of "tts-large": the filter goes by service, not by prefix.
    expect((await store.list({ service: 'tts' })).map((s) => s.id)).toEqual([c.id, a.id]);
    expect((await store.newestKnownGood('tts'))?.id).toBe(a.id);
    expect(await store.newestKnownGood('tts-large')).toBeNull();
    await store.setKnownGood(c.id);
    expect((await store.newestKnownGood('tts'))?.id).toBe(c.id);
    expect((await store.get(c.id)).knownGood).toBe(true);

    await expect(store.get('tts-20250101T000000000Z-abcdef')).rejects.toMatchObject({ code: 'SNAPSHOT_NOT_FOUND', message: 'no snapshot tts-20250101T000000000Z-abcdef' });
    await expect(store.get('../../etc/passwd')).rejects.toMatchObject({ code: 'SNAPSHOT_NOT_FOUND' });
    await expect(store.setKnownGood('tts-20250101T000000000Z-abcdef')).rejects.toMatchObject({ code: 'SNAPSHOT_NOT_FOUND' });
  });

  it('needs open() for changes, not for reads; reads of a missing store say so', async () => {
    const root = tempDir();
    const store = new SnapshotStore(path.join(root, 'store'));
    await expect(store.list()).rejects.toMatchObject({ code: 'STORE_NOT_FOUND' });
    await expect(store.verify()).rejects.toMatchObject({ code: 'STORE_NOT_FOUND' });
    await expect(store.create({ service: 'x', paths: [root], trigger: 'manual' })).rejects.toMatchObject({ code: 'NOT_OPEN' });
    expect(existsSync(path.join(root, 'store'))).toBe(false);
    expect(await store.open()).toEqual({ tempsRemoved: 0, restore: null });
    expect(await store.list()).toEqual([]);
  });

  it('open() removes temp files of an interrupted write and marks of deleted snapshots', async () => {
    const { store, paths } = await setup();
    const m = await store.create({ service: 'tts', paths, trigger: 'manual' });
    await store.setKnownGood(m.id);
    writeFileSync(path.join(store.dir, 'tmp', 'abc.blob'), 'partial');
    rmSync(path.join(store.dir, 'snapshots', `${m.id}.json`));
    const again = new SnapshotStore(store.dir);
    expect(await again.open()).toEqual({ tempsRemoved: 1, restore: null });
    expect(readdirSync(path.join(store.dir, 'tmp'))).toEqual([]);
    expect(readdirSync(path.join(store.dir, 'snapshots'))).toEqual([]);
  });

  it('runs changes one at a time: a prune started during a create keeps its blobs', async () => {
    const { store, paths, clock } = await setup();
    const first = store.create({ service: 'tts', paths, trigger: 'manual' });
    const prune = store.prune({ last: 1, daily: 0, weekly: 0 });
    clock.advance(1000);
    const [m, pruned] = await Promise.all([first, prune]);
    expect(pruned).toMatchObject({ deleted: [], kept: [m.id], blobsRemoved: 0 });
    expect((await store.verify()).ok).toBe(true);
  });
});
