import { constants, type BigIntStats } from 'node:fs';
import { chmod, copyFile, lchown, link, lutimes, mkdir, readFile, readlink, rename, rm, rmdir, symlink, utimes } from 'node:fs/promises';
import path from 'node:path';
import { loadManifest } from './catalog.js';
import { BackupError, isNoSpace, isNotFound } from './errors.js';
import { hashFile, lstatOrNull, mkdirs, randomHex, syncDir, syncFile, Throttle, writeDurable } from './files.js';
import type { StoreLayout } from './layout.js';
import type { Manifest, ManifestEntry } from './manifest.js';
import { checkManifests, describeProblem } from './verify.js';

export interface RestoreProgress {
  /** verify: the snapshot's blobs; stage: copying next to the targets; check: hashing the copies; swap: putting them in place. */
  phase: 'verify' | 'stage' | 'check' | 'swap' | 'done';
  bytesDone: number;
  bytesTotal: number;
  files: number;
}

export interface RestoreOptions {
  /** Where a root goes instead of its own source path: source → absolute target. */
  into?: ReadonlyMap<string, string>;
  /** Honoured until the swap starts; the swap itself always finishes. */
  signal?: AbortSignal;
  /** Called at most every 100 ms, and at each change of phase. */
  onProgress?: (progress: RestoreProgress) => void;
}

export interface RestoredRoot {
  source: string;
  target: string;
  kind: 'dir' | 'file';
  /**
   * replace: renamed over the target (absent, or a file), atomic. exchange: the target directory
   * renamed aside, the copy renamed in, the old one removed. link: the target was a symlink; the
   * copy sits at `<target>.understudy-<id>` and a new symlink to it was renamed over the target, atomic.
   */
  swap: 'replace' | 'exchange' | 'link';
}

export interface RestoreResult {
  id: string;
  service: string;
  roots: RestoredRoot[];
  files: number;
  bytes: number;
}

/** One root's swap as recorded in restore.journal, with everything needed to finish it or undo it after a crash. */
interface JournalRoot {
  mode: RestoredRoot['swap'];
  target: string;
  staging: string;
  /** replace: a hard link to the file replaced; exchange: where the old directory goes. */
  old?: string;
  /** replace: whether the target existed before. */
  existed?: boolean;
  /** link: where the copy ends up, the temporary link, the link's text before, and a copy of ours it pointed at (removed at the end). */
  final?: string;
  link?: string;
  original?: string;
  previous?: string | null;
}

interface Journal {
  format: 1;
  id: string;
  /** staging: nothing swapped yet (undo: remove the copies); swap: the copies are whole and checked (finish the swaps). */
  phase: 'staging' | 'swap';
  roots: JournalRoot[];
}

interface Context {
  layout: StoreLayout;
  now: () => number;
}

const asRoot = process.getuid?.() === 0;

function planRoots(manifest: Manifest, into: ReadonlyMap<string, string> | undefined): { source: string; target: string; kind: 'dir' | 'file'; index: number }[] {
  const sources = new Set(manifest.roots.map((r) => r.source));
  for (const [source, target] of into ?? []) {
    if (!sources.has(source)) {
      throw new BackupError('INVALID_INPUT', `restore into: ${source} is not a path of snapshot ${manifest.id} (it has ${[...sources].join(', ')})`, {
        snapshot: manifest.id,
      });
    }
    if (typeof target !== 'string' || !path.isAbsolute(target)) {
      throw new BackupError('INVALID_INPUT', `restore into: the target for ${source} must be an absolute path, got ${JSON.stringify(target)}`, { snapshot: manifest.id });
    }
  }
  const plan = manifest.roots.map((root, index) => ({ source: root.source, target: path.resolve(into?.get(root.source) ?? root.source), kind: root.kind, index }));
  for (const a of plan) {
    for (const b of plan) {
      if (a !== b && (a.target === b.target || b.target.startsWith(a.target + path.sep))) {
        throw new BackupError('INVALID_INPUT', `restore targets ${a.target} and ${b.target} overlap`, { snapshot: manifest.id, paths: [a.target, b.target] });
      }
    }
  }
  return plan;
}

async function exists(p: string): Promise<boolean> {
  return (await lstatOrNull(p)) !== null;
}

async function journalRoot(id: string, target: string, kind: 'dir' | 'file'): Promise<JournalRoot> {
  const staging = `${target}.understudy-staging-${id}`;
  const st = await lstatOrNull(target);
  if (st?.isSymbolicLink()) {
    const original = await readlink(target);
    const resolved = path.resolve(path.dirname(target), original);
    const ours = path.dirname(resolved) === path.dirname(target) && path.basename(resolved).startsWith(`${path.basename(target)}.understudy-`);
    let final = `${target}.understudy-${id}`;
    if ((await exists(final)) || final === resolved) final = `${final}-${randomHex(3)}`;
    return { mode: 'link', target, staging, final, link: `${target}.understudy-link-${id}`, original, previous: ours ? resolved : null };
  }
  const old = `${target}.understudy-old-${id}`;
  if (st === null || (!st.isDirectory() && kind === 'file')) return { mode: 'replace', target, staging, old, existed: st !== null };
  return { mode: 'exchange', target, staging, old };
}

/** Finishes one root's swap; safe to call again at any point of a crash. */
async function forward(root: JournalRoot): Promise<void> {
  const { target, staging } = root;
  if (root.mode === 'replace') {
    if (await exists(staging)) {
      if (root.existed && !(await exists(root.old!)) && (await exists(target))) await link(target, root.old!);
      await rename(staging, target);
    }
  } else if (root.mode === 'exchange') {
    if (await exists(staging)) {
      if (await exists(target)) {
        if (await exists(root.old!)) throw new Error(`${target}, ${root.old} and ${staging} all exist`);
        await rename(target, root.old!);
      }
      await rename(staging, target);
    }
  } else {
    const final = root.final!;
    if (await exists(staging)) await rename(staging, final);
    const text = path.basename(final);
    if ((await readlink(target).catch(() => null)) !== text) {
      await rm(root.link!, { force: true });
      await symlink(text, root.link!);
      await rename(root.link!, target);
    }
  }
  await syncDir(path.dirname(target));
}

/** Puts one root back as it was before the restore began; `swapped`: whether forward() may have run for it. */
async function back(root: JournalRoot, swapped: boolean): Promise<void> {
  const { target, staging } = root;
  if (!swapped) {
    // Only the copy was made.
  } else if (root.mode === 'replace') {
    if (await exists(root.old!)) await rename(root.old!, target);
    else if (!root.existed && !(await exists(staging))) await rm(target, { recursive: true, force: true });
  } else if (root.mode === 'exchange') {
    if (await exists(root.old!)) {
      if (await exists(target)) {
        if (await exists(staging)) throw new Error(`${target}, ${root.old} and ${staging} all exist`);
        await rename(target, staging);
      }
      await rename(root.old!, target);
    }
  } else {
    const text = path.basename(root.final!);
    if ((await readlink(target).catch(() => null)) === text) {
      await rm(root.link!, { force: true });
      await symlink(root.original!, root.link!);
      await rename(root.link!, target);
    }
    await rm(root.link!, { force: true });
    await rm(root.final!, { recursive: true, force: true });
  }
  await rm(staging, { recursive: true, force: true });
  await syncDir(path.dirname(target));
}

/** After every root is swapped: removes what was replaced. */
async function finish(root: JournalRoot): Promise<void> {
  if (root.old) await rm(root.old, { recursive: true, force: true });
  if (root.mode === 'link' && root.previous) await rm(root.previous, { recursive: true, force: true });
  await syncDir(path.dirname(root.target));
}

/** Restores a snapshot; see SnapshotStore.restore. Runs inside the store's queue. */
export async function restoreSnapshot(ctx: Context, id: string, options: RestoreOptions = {}): Promise<RestoreResult> {
  const { layout } = ctx;
  const { signal } = options;
  const { manifest } = await loadManifest(layout, id);
  const plan = planRoots(manifest, options.into);
  const files = manifest.entries.filter((e) => e.type === 'file');
  const bytes = files.reduce((sum, e) => sum + e.size, 0);
  const progress: RestoreProgress = { phase: 'verify', bytesDone: 0, bytesTotal: 0, files: 0 };
  const throttle = new Throttle(options.onProgress, ctx.now);
  const report = (final = false) => throttle.update(() => ({ ...progress }), final);

  // Nothing next to a target is touched before the snapshot is known whole.
  const checked = await checkManifests(layout, [manifest], ctx.now, {
    ...(signal ? { signal } : {}),
    onProgress: (p) => {
      Object.assign(progress, { bytesDone: p.bytesDone, bytesTotal: p.bytesTotal, files: p.files });
      report();
    },
  });
  if (checked.problems.length > 0) {
    const shown = checked.problems.slice(0, 10).map(describeProblem);
    if (checked.problems.length > 10) shown.push(`and ${checked.problems.length - 10} more`);
    throw new BackupError('SNAPSHOT_CORRUPT', `snapshot ${id} cannot be restored: it is damaged; nothing was changed:\n  ${shown.join('\n  ')}`, {
      snapshot: id,
      paths: checked.problems.map((p) => p.path),
    });
  }
  signal?.throwIfAborted();

  const roots: JournalRoot[] = [];
  for (const p of plan) roots.push(await journalRoot(id, p.target, p.kind));
  const journal: Journal = { format: 1, id, phase: 'staging', roots };
  const made: string[] = [];
  let swapping = false;
  let swapped = 0;
  try {
    for (const root of roots) {
      // Our own names: left by an earlier restore of this snapshot that could not clean up.
      await rm(root.staging, { recursive: true, force: true });
      if (root.old) await rm(root.old, { recursive: true, force: true });
    }
    await writeDurable(layout.tmp, layout.journal, JSON.stringify(journal));
    for (const p of plan) made.push(...(await mkdirs(path.dirname(p.target))));

    progress.phase = 'stage';
    Object.assign(progress, { bytesDone: 0, bytesTotal: bytes, files: 0 });
    report(true);
    for (const [i, p] of plan.entries()) {
      await stage(layout, manifest, p.index, roots[i]!.staging, signal, (size) => {
        progress.bytesDone += size;
        progress.files++;
        report();
      });
    }

    progress.phase = 'check';
    Object.assign(progress, { bytesDone: 0, files: 0 });
    report(true);
    for (const [i, p] of plan.entries()) {
      await checkStaged(manifest, p.index, roots[i]!.staging, signal, (n) => {
        progress.bytesDone += n;
        report();
      });
    }
    signal?.throwIfAborted();

    progress.phase = 'swap';
    report(true);
    journal.phase = 'swap';
    await writeDurable(layout.tmp, layout.journal, JSON.stringify(journal));
    swapping = true;
    for (const root of roots) {
      swapped++;
      await forward(root);
    }
  } catch (error) {
    // Puts back every root already swapped: an in-process failure (EBUSY on a mount point) would
    // only repeat, so undo; a crash is finished forward by open() instead.
    const undoFailures: string[] = [];
    for (const [i, root] of [...roots.entries()].reverse()) {
      await back(root, i < swapped).catch((e: unknown) => undoFailures.push(`${root.target}: ${(e as Error).message}`));
    }
    for (const dir of made) await rmdir(dir).catch(() => {});
    if (undoFailures.length === 0) await rm(layout.journal, { force: true }).catch(() => {});
    throw restoreFailure(id, roots, error, swapping, undoFailures, signal);
  }
  for (const root of roots) await finish(root);
  await rm(layout.journal, { force: true });
  await syncDir(layout.root);
  progress.phase = 'done';
  report(true);
  return {
    id,
    service: manifest.service,
    roots: plan.map((p, i) => ({ source: p.source, target: p.target, kind: p.kind, swap: roots[i]!.mode })),
    files: files.length,
    bytes,
  };
}

function restoreFailure(id: string, roots: JournalRoot[], error: unknown, swapping: boolean, undoFailures: string[], signal?: AbortSignal): BackupError {
  const targets = roots.map((r) => r.target);
  if (undoFailures.length > 0) {
    return new BackupError(
      'IO',
      `restore of ${id} failed (${(error as Error).message}) and could not be undone: ${undoFailures.join('; ')}; the restore journal is kept for the next open() of the store to put right`,
      { snapshot: id, paths: targets },
      { cause: error },
    );
  }
  const unchanged = `the copies were removed and ${targets.join(', ')} ${targets.length === 1 ? 'is' : 'are'} as before`;
  if (signal?.aborted && !swapping) return new BackupError('ABORTED', `restore of ${id} was cancelled; ${unchanged}`, { snapshot: id }, { cause: signal.reason });
  if (isNoSpace(error)) {
    return new BackupError('DISK_FULL', `the disk of ${path.dirname(targets[0] ?? '/')} is full: no room for a copy of snapshot ${id}; ${unchanged}`, {
      snapshot: id,
      dir: path.dirname(targets[0] ?? '/'),
    }, { cause: error });
  }
  if (error instanceof BackupError) {
    return new BackupError(error.code, `${error.message}; ${unchanged}`, { snapshot: id, ...error.details }, { cause: error.cause });
  }
  return new BackupError('IO', `restore of ${id} failed: ${(error as Error).message}; ${unchanged}`, { snapshot: id, paths: targets }, { cause: error });
}

function entryPath(base: string, entry: ManifestEntry): string {
  return entry.path === '' ? base : path.join(base, ...entry.path.split('/'));
}

/** Copies one root's entries to its staging path, then sets owners, modes and times (directories last, deepest first). */
async function stage(layout: StoreLayout, manifest: Manifest, index: number, staging: string, signal: AbortSignal | undefined, onFile: (size: number) => void): Promise<void> {
  const entries = manifest.entries.filter((e) => e.root === index);
  for (const entry of entries) {
    signal?.throwIfAborted();
    const dest = entryPath(staging, entry);
    if (entry.type === 'dir') await mkdir(dest);
    else if (entry.type === 'symlink') await symlink(entry.target!, dest);
    else {
      // A reflink where the file system has them (btrfs, XFS), else a kernel copy.
      await copyFile(layout.blob(entry.sha256!), dest, constants.COPYFILE_FICLONE);
      onFile(entry.size);
    }
  }
  const seconds = (ns: string) => Number(BigInt(ns) / 1000n) / 1e6;
  const setMeta = async (entry: ManifestEntry) => {
    const dest = entryPath(staging, entry);
    if (asRoot) await lchown(dest, entry.uid, entry.gid);
    if (entry.type === 'symlink') {
      await lutimes(dest, seconds(entry.mtimeNs), seconds(entry.mtimeNs));
      return;
    }
    await chmod(dest, entry.mode);
    await utimes(dest, seconds(entry.mtimeNs), seconds(entry.mtimeNs));
  };
  for (const entry of entries) if (entry.type !== 'dir') await setMeta(entry);
  for (const entry of [...entries].reverse()) if (entry.type === 'dir') await setMeta(entry);
}

/** Hashes the staged copies against the manifest and fsyncs them, so the swap puts in place exactly what was snapshotted. */
async function checkStaged(manifest: Manifest, index: number, staging: string, signal: AbortSignal | undefined, onBytes: (n: number) => void): Promise<void> {
  const bad: string[] = [];
  const entries = manifest.entries.filter((e) => e.root === index);
  for (const entry of entries) {
    signal?.throwIfAborted();
    const dest = entryPath(staging, entry);
    const st: BigIntStats | null = await lstatOrNull(dest);
    if (entry.type === 'file') {
      const got = st?.isFile() ? await hashFile(dest, signal, onBytes) : null;
      if (!got || got.sha256 !== entry.sha256 || got.size !== entry.size) bad.push(dest);
      else await syncFile(dest);
    } else if (entry.type === 'symlink') {
      if (!st?.isSymbolicLink() || (await readlink(dest)) !== entry.target) bad.push(dest);
    } else if (!st?.isDirectory()) bad.push(dest);
    else if ((st.mode & 0o7777n) !== BigInt(entry.mode)) bad.push(dest);
  }
  if (bad.length > 0) {
    throw new BackupError('RESTORE_VERIFY_FAILED', `the restored copy of snapshot ${manifest.id} differs from the snapshot at ${bad.slice(0, 10).join(', ')}${bad.length > 10 ? ` and ${bad.length - 10} more` : ''}`, {
      snapshot: manifest.id,
      paths: bad,
    });
  }
  for (const entry of [...entries].reverse()) if (entry.type === 'dir') await syncDir(entryPath(staging, entry));
  await syncDir(path.dirname(staging));
}

/**
 * Run by open(): a restore that stopped while copying is undone (its copies removed); one that
 * stopped between its swaps is finished, since its copies were whole and checked before the
 * first swap. Returns what was done, or null when there was no journal.
 */
export async function recoverRestore(layout: StoreLayout): Promise<{ id: string; action: 'finished' | 'undone'; targets: string[] } | null> {
  let text: string;
  try {
    text = await readFile(layout.journal, 'utf8');
  } catch (error) {
    if (isNotFound(error)) return null;
    throw error;
  }
  let journal: Journal;
  try {
    journal = JSON.parse(text) as Journal;
    if (journal.format !== 1 || !Array.isArray(journal.roots) || (journal.phase !== 'staging' && journal.phase !== 'swap')) throw new Error('not a restore journal');
  } catch (error) {
    throw new BackupError('IO', `${layout.journal} is damaged (${(error as Error).message}); look at the targets it names and remove it by hand`, { paths: [layout.journal] }, { cause: error });
  }
  const targets = journal.roots.map((r) => r.target);
  try {
    if (journal.phase === 'swap') {
      for (const root of journal.roots) await forward(root);
      for (const root of journal.roots) await finish(root);
    } else {
      for (const root of [...journal.roots].reverse()) await back(root, false);
    }
  } catch (error) {
    throw new BackupError(
      'IO',
      `an interrupted restore of ${journal.id} cannot be put right (${(error as Error).message}); the journal ${layout.journal} is kept: look at ${targets.join(', ')}`,
      { snapshot: journal.id, paths: targets },
      { cause: error },
    );
  }
  await rm(layout.journal, { force: true });
  await syncDir(layout.root);
  return { id: journal.id, action: journal.phase === 'swap' ? 'finished' : 'undone', targets };
}

