import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, symlinkSync, writeFileSync, chmodSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/index.js';
import { SnapshotStore, type Manifest, type RestoreProgress } from '../../src/backup/index.js';
import { bytes, fingerprint, flipByte, readTree, setMtime, tempDir, writeTree } from './support.js';

async function setup() {
  const root = tempDir();
  const model = path.join(root, 'srv', 'model');
  const config = path.join(root, 'etc', 'tts.yaml');
  writeTree(model, {
    'weights.bin': bytes(200_000, 1),
    'run.sh': { mode: 0o750, content: '#!/bin/sh\n' },
    'secret.key': { mode: 0o600, content: 'k' },
    current: { link: 'weights.bin' },
    dangling: { link: '../nowhere' },
    empty: {},
    locked: { 'inside.txt': 'in' },
    deep: { a: { b: { 'c.txt': 'c' } } },
  });
  chmodSync(path.join(model, 'locked'), 0o555);
  setMtime(path.join(model, 'weights.bin'), 1_700_000_000);
  setMtime(path.join(model, 'deep', 'a'), 1_600_000_000);
  writeTree(path.dirname(config), { 'tts.yaml': 'voice: alto\n' });
  const clock = new ManualClock(Date.parse('2025-06-02T03:00:00Z'));
  const store = new SnapshotStore(path.join(root, 'store'), { clock });
  await store.open();
  const snapshot = await store.create({ service: 'tts', paths: [model, config], trigger: 'manual' });
  return { root, model, config, clock, store, snapshot, tree: readTree(model), dirMtime: lstatSync(path.join(model, 'deep', 'a')).mtimeMs };
}

/** Changes the model directory and config after the snapshot: new, changed and removed files, a changed mode, a retargeted link. */
function changeEverything(model: string, config: string): void {
  writeFileSync(path.join(model, 'weights.bin'), bytes(250_000, 2));
  writeFileSync(path.join(model, 'new-file.bin'), 'new');
  rmSync(path.join(model, 'empty'), { recursive: true });
  rmSync(path.join(model, 'current'));
  symlinkSync('run.sh', path.join(model, 'current'));
  chmodSync(path.join(model, 'run.sh'), 0o644);
  mkdirSync(path.join(model, 'extra', 'dir'), { recursive: true });
  writeFileSync(config, 'voice: bass\n');
}

function leftovers(dir: string): string[] {
  return readdirSync(dir).filter((n) => n.includes('.understudy-'));
}

describe('SnapshotStore.restore', () => {
  it('puts back the exact old content: hashes, modes, mtimes, symlinks, empty directories; no leftovers', async () => {
    const { model, config, store, snapshot, tree, dirMtime } = await setup();
    changeEverything(model, config);
    const progress: RestoreProgress[] = [];
    const result = await store.restore(snapshot.id, { onProgress: (p) => progress.push(p) });
    expect(result).toMatchObject({
      id: snapshot.id,
      service: 'tts',
      roots: [
        { source: model, target: model, kind: 'dir', swap: 'exchange' },
        { source: config, target: config, kind: 'file', swap: 'replace' },
      ],
      files: 6,
    });
    expect(readTree(model)).toEqual(tree);
    expect(readTree(model)['weights.bin']!.mtimeMs).toBe(1_700_000_000_000);
    expect(lstatSync(path.join(model, 'deep', 'a')).mtimeMs).toBe(dirMtime);
    expect(readFileSync(config, 'utf8')).toBe('voice: alto\n');
    expect(leftovers(path.dirname(model))).toEqual([]);
    expect(leftovers(path.dirname(config))).toEqual([]);
    expect(existsSync(path.join(store.dir, 'restore.journal'))).toBe(false);
    expect(progress.at(-1)).toMatchObject({ phase: 'done' });
  });

  it('restores into other targets, creating missing parents', async () => {
    const { model, config, root, store, snapshot, tree } = await setup();
    const targetDir = path.join(root, 'elsewhere', 'a', 'model');
    const targetFile = path.join(root, 'elsewhere', 'tts.yaml');
    await store.restore(snapshot.id, {
      into: new Map([
        [model, targetDir],
        [config, targetFile],
      ]),
    });
    expect(readTree(targetDir)).toEqual(tree);
    expect(readFileSync(targetFile, 'utf8')).toBe('voice: alto\n');
    await expect(store.restore(snapshot.id, { into: new Map([['/not/a/root', '/tmp/x']]) })).rejects.toMatchObject({
      code: 'INVALID_INPUT',
      message: `restore into: /not/a/root is not a path of snapshot ${snapshot.id} (it has ${model}, ${config})`,
    });
  });

  it('swaps a symlinked target by renaming a new symlink over it, and removes its own earlier copy', async () => {
    const { model, config, root, store, snapshot, tree, clock } = await setup();
    // The service reads /srv/current → a release directory.
    const release = path.join(root, 'srv', 'release-7');
    renameSync(model, release);
    symlinkSync('release-7', model);
    changeEverything(release, config);
    const changed = readTree(release);
    const first = await store.restore(snapshot.id);
    expect(first.roots[0]!.swap).toBe('link');
    expect(readlinkSync(model)).toBe(`model.understudy-${snapshot.id}`);
    expect(readTree(path.join(path.dirname(model), readlinkSync(model)))).toEqual(tree);
    // The release it pointed at is not ours: left alone.
    expect(readTree(release)).toEqual(changed);

    // A later snapshot restored over it: the earlier copy (ours) goes.
    clock.advance(1000);
    writeFileSync(path.join(model, 'weights.bin'), 'tiny');
    const later = await store.create({ service: 'tts', paths: [model, config], trigger: 'manual' });
    await store.restore(snapshot.id);
    await store.restore(later.id);
    expect(readlinkSync(model)).toBe(`model.understudy-${later.id}`);
    expect(readdirSync(path.dirname(model)).sort()).toEqual(['model', `model.understudy-${later.id}`, 'release-7']);
    expect(readFileSync(path.join(model, 'weights.bin'), 'utf8')).toBe('tiny');
  });

  it('swaps a symlinked config file the same way, leaving the file it pointed at alone', async () => {
    const { config, root, store, snapshot } = await setup();
    const shared = path.join(root, 'shared.yaml');
    writeFileSync(shared, 'voice: bass\n');
    rmSync(config);
    symlinkSync(shared, config);
    const result = await store.restore(snapshot.id);
    expect(result.roots[1]).toMatchObject({ target: config, kind: 'file', swap: 'link' });
    expect(readlinkSync(config)).toBe(`tts.yaml.understudy-${snapshot.id}`);
    expect(readFileSync(config, 'utf8')).toBe('voice: alto\n');
    expect(readFileSync(shared, 'utf8')).toBe('voice: bass\n');
    expect(readdirSync(path.dirname(config)).sort()).toEqual(['tts.yaml', `tts.yaml.understudy-${snapshot.id}`]);
  });

  it('refuses a corrupt snapshot naming the file, and changes nothing on the target side', async () => {
    const { model, config, store, snapshot } = await setup();
    changeEverything(model, config);
    const sha = snapshot.entries.find((e) => e.path === 'run.sh')!.sha256!;
    flipByte(path.join(store.dir, 'blobs', 'sha256', sha.slice(0, 2), sha));
    const before = fingerprint(path.dirname(path.dirname(model)));
    const error = await store.restore(snapshot.id).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'SNAPSHOT_CORRUPT', details: { snapshot: snapshot.id, paths: [path.join(model, 'run.sh')] } });
    expect((error as Error).message).toContain(`snapshot ${snapshot.id} cannot be restored: it is damaged; nothing was changed:\n  ${snapshot.id}: ${path.join(model, 'run.sh')}: its blob`);
    expect(fingerprint(path.dirname(path.dirname(model)))).toBe(before);
  });

  it('refuses a snapshot whose manifest is damaged, or that does not exist', async () => {
    const { store, snapshot } = await setup();
    const file = path.join(store.dir, 'snapshots', `${snapshot.id}.json`);
    writeFileSync(file, readFileSync(file, 'utf8').slice(0, 100));
    await expect(store.restore(snapshot.id)).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT', message: expect.stringContaining('its manifest is damaged') });
    await expect(store.restore('tts-20200101T000000000Z-000000')).rejects.toMatchObject({ code: 'SNAPSHOT_NOT_FOUND' });
  });

  it('an abort before the swap removes the copies and leaves the targets as they were', async () => {
    const { model, config, store, snapshot, clock } = await setup();
    changeEverything(model, config);
    const before = { model: readTree(model), config: readFileSync(config, 'utf8') };
    const controller = new AbortController();
    const error = await store
      .restore(snapshot.id, {
        signal: controller.signal,
        onProgress: (p) => {
          clock.advance(100);
          if (p.phase === 'stage' && p.files > 1) controller.abort();
        },
      })
      .catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'ABORTED' });
    expect((error as Error).message).toBe(`restore of ${snapshot.id} was cancelled; the copies were removed and ${model}, ${config} are as before`);
    // The copies were made next to the targets and removed again: their directories' mtimes moved, nothing else.
    expect({ model: readTree(model), config: readFileSync(config, 'utf8') }).toEqual(before);
    expect(leftovers(path.dirname(model))).toEqual([]);
    expect(leftovers(path.dirname(config))).toEqual([]);
    expect(existsSync(path.join(store.dir, 'restore.journal'))).toBe(false);
  });

  it('a failed swap (a target that cannot be renamed) is undone', async () => {
    const { model, config, root, store, snapshot, clock } = await setup();
    changeEverything(model, config);
    const blocker = path.join(root, 'blocked');
    mkdirSync(blocker);
    const into = new Map([[config, path.join(blocker, 'tts.yaml')]]);
    const modelBefore = readTree(model);
    const error = await store
      .restore(snapshot.id, {
        into,
        onProgress: (p) => {
          clock.advance(100);
          if (p.phase === 'swap') {
            // The config's staged copy is in place; a directory where the file must go makes rename fail (EISDIR).
            mkdirSync(path.join(blocker, 'tts.yaml'));
            writeFileSync(path.join(blocker, 'tts.yaml', 'x'), 'x');
          }
        },
      })
      .catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'IO' });
    expect((error as Error).message).toMatch(/the copies were removed and .* are as before$/);
    expect(readTree(model)).toEqual(modelBefore);
    expect(leftovers(path.dirname(model))).toEqual([]);
    expect(readdirSync(blocker)).toEqual(['tts.yaml']);
    expect(existsSync(path.join(store.dir, 'restore.journal'))).toBe(false);
  });
});

describe('a crash during a restore, put right by open()', () => {
  /** Runs a restore up to its swap phase by hand: what a crash between the two renames leaves. */
  async function crashBetweenRenames(store: SnapshotStore, snapshot: Manifest, model: string) {
    const staging = `${model}.understudy-staging-${snapshot.id}`;
    const old = `${model}.understudy-old-${snapshot.id}`;
    // A real restore up to the copies, then the journal and the first rename as a crash leaves them.
    const other = path.join(path.dirname(model), 'scratch');
    await store.restore(snapshot.id, { into: new Map([[snapshot.roots[0]!.source, other], [snapshot.roots[1]!.source, path.join(path.dirname(model), 'scratch.yaml')]]) });
    renameSync(other, staging);
    const journal = {
      format: 1,
      id: snapshot.id,
      phase: 'swap',
      roots: [{ mode: 'exchange', target: model, staging, old }],
    };
    writeFileSync(path.join(store.dir, 'restore.journal'), JSON.stringify(journal));
    renameSync(model, old);
    rmSync(path.join(path.dirname(model), 'scratch.yaml'));
    return { staging, old };
  }

  it('between the two renames of a directory swap: finished', async () => {
    const { model, config, store, snapshot, tree } = await setup();
    changeEverything(model, config);
    await crashBetweenRenames(store, snapshot, model);
    expect(existsSync(model)).toBe(false);
    const reopened = new SnapshotStore(store.dir);
    expect(await reopened.open()).toEqual({ tempsRemoved: 0, restore: { id: snapshot.id, action: 'finished', targets: [model] } });
    expect(readTree(model)).toEqual(tree);
    expect(leftovers(path.dirname(model))).toEqual([]);
    expect(existsSync(path.join(store.dir, 'restore.journal'))).toBe(false);
  });

  it('after both renames, before the old one was removed: finished', async () => {
    const { model, config, store, snapshot, tree } = await setup();
    changeEverything(model, config);
    const { staging } = await crashBetweenRenames(store, snapshot, model);
    renameSync(staging, model);
    expect(await new SnapshotStore(store.dir).open()).toMatchObject({ restore: { action: 'finished' } });
    expect(readTree(model)).toEqual(tree);
    expect(leftovers(path.dirname(model))).toEqual([]);
  });

  it('while copying (journal in its staging phase): the copies removed, the target untouched', async () => {
    const { model, config, store, snapshot } = await setup();
    changeEverything(model, config);
    const changed = readTree(model);
    const staging = `${model}.understudy-staging-${snapshot.id}`;
    mkdirSync(staging);
    writeFileSync(path.join(staging, 'half.bin'), 'half');
    writeFileSync(
      path.join(store.dir, 'restore.journal'),
      JSON.stringify({ format: 1, id: snapshot.id, phase: 'staging', roots: [{ mode: 'exchange', target: model, staging, old: `${model}.understudy-old-${snapshot.id}` }] }),
    );
    expect(await new SnapshotStore(store.dir).open()).toMatchObject({ restore: { id: snapshot.id, action: 'undone', targets: [model] } });
    expect(readTree(model)).toEqual(changed);
    expect(leftovers(path.dirname(model))).toEqual([]);
  });
});
