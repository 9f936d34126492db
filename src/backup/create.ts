import { createHash } from 'node:crypto';
import type { BigIntStats } from 'node:fs';
import { lstat, mkdir, open, readdir, readlink, rename, rm, rmdir, stat, statfs } from 'node:fs/promises';
import path from 'node:path';
import { readManifest, snapshotIds } from './catalog.js';
import { BackupError, errnoCode, isNoSpace, isNotFound } from './errors.js';
import { hashFile, randomHex, readChunks, syncDir, Throttle, writeAll, writeDurable } from './files.js';
import type { StoreLayout } from './layout.js';
import {
  imageProblem,
  makeSnapshotId,
  MANIFEST_FORMAT,
  parseSnapshotId,
  sealManifest,
  serializeManifest,
  SERVICE_NAME,
  type ImageEntry,
  type Manifest,
  type ManifestEntry,
  type SnapshotRoot,
  type SnapshotTrigger,
} from './manifest.js';

export interface CreateProgress {
  phase: 'scan' | 'copy' | 'images' | 'manifest' | 'done';
  /** File bytes dealt with so far (reused files count at once). */
  bytesDone: number;
  bytesTotal: number;
  /** Files dealt with so far. */
  files: number;
}

export interface CreateOptions {
  service: string;
  /** Absolute paths of the files and directories to keep (a symlink given here is followed; symlinks inside are kept as links). */
  paths: string[];
  /** Why: schedule, deploy, config-change, manual, or your own word. */
  trigger: SnapshotTrigger;
  /** The model version the service serves, when known. Default null. */
  version?: string | null;
  /**
   * Read every file, even those whose size, mtime, ctime, inode and mode match the service's newest
   * snapshot. Default false: such files are taken as unchanged without reading them, as rsync,
   * restic and borg do; a change that keeps all five (only possible by setting the clock back or
   * writing the disk underneath the file system) is then not seen.
   */
  rehash?: boolean;
  /** Container images to keep with the snapshot; called once the files are stored, before the manifest is written. Its failure fails the snapshot. */
  images?: (context: { id: string; signal?: AbortSignal }) => Promise<ImageEntry[]>;
  signal?: AbortSignal;
  /** Called at most every 100 ms, and at each change of phase. */
  onProgress?: (progress: CreateProgress) => void;
}

interface Context {
  layout: StoreLayout;
  now: () => number;
}

interface Scanned {
  root: number;
  path: string;
  abs: string;
  type: ManifestEntry['type'];
  stat: BigIntStats;
}

/** What a failed create() must undo: its temp files, and blobs it put in place that no manifest names yet. */
interface Undo {
  temps: Set<string>;
  added: string[];
  /** Blob fan-out directories made (removed again when empty). */
  madeDirs: string[];
  /** Directories whose entries changed: fsynced before the manifest is written. */
  dirty: Set<string>;
}

function checkInput(options: CreateOptions): string[] {
  const bad = (message: string): never => {
    throw new BackupError('INVALID_INPUT', message);
  };
  if (typeof options.service !== 'string' || !SERVICE_NAME.test(options.service)) {
    bad(`service ${JSON.stringify(options.service)} is not a service name (letters, digits, - and _)`);
  }
  if (typeof options.trigger !== 'string' || options.trigger.trim() === '') bad('trigger must be a non-empty string such as "manual"');
  if (options.version !== undefined && options.version !== null && typeof options.version !== 'string') bad('version must be a string or null');
  if (!Array.isArray(options.paths)) bad('paths must be an array of absolute paths');
  if (options.paths.length === 0 && !options.images) bad(`nothing to back up for service ${options.service}: no paths and no images`);
  const paths = options.paths.map((p) => {
    if (typeof p !== 'string' || !path.isAbsolute(p)) bad(`backup path ${JSON.stringify(p)} of service ${options.service} must be absolute`);
    return path.resolve(p);
  });
  for (const a of paths) {
    for (const b of paths) {
      if (a === b && paths.indexOf(a) !== paths.lastIndexOf(b)) bad(`backup path ${a} of service ${options.service} is given twice`);
      if (a !== b && b.startsWith(a.endsWith(path.sep) ? a : a + path.sep)) bad(`backup path ${b} of service ${options.service} lies inside ${a}, also given`);
    }
  }
  return paths;
}

async function statRoots(service: string, paths: string[]): Promise<SnapshotRoot[]> {
  const roots: SnapshotRoot[] = [];
  const missing: string[] = [];
  for (const source of paths) {
    let st;
    try {
      st = await stat(source);
    } catch (error) {
      const code = errnoCode(error);
      if (code === 'ENOENT' || code === 'ENOTDIR') {
        missing.push(source);
        continue;
      }
      throw ioError(`cannot read backup path ${source}`, error, { paths: [source] });
    }
    if (!st.isDirectory() && !st.isFile()) {
      throw new BackupError('INVALID_INPUT', `backup path ${source} of service ${service} is neither a file nor a directory`, { paths: [source] });
    }
    roots.push({ source, kind: st.isDirectory() ? 'dir' : 'file' });
  }
  if (missing.length > 0) {
    throw new BackupError(
      'SOURCE_MISSING',
      `backup path${missing.length > 1 ? 's' : ''} of service ${service} not found: ${missing.join(', ')}; no snapshot was taken`,
      { paths: missing },
    );
  }
  return roots;
}

function typeOf(st: BigIntStats): ManifestEntry['type'] | null {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  return null; // sockets, FIFOs and devices are not model files: skipped
}

/** Walks a root depth first, names sorted, each directory before what it holds. */
async function scanRoot(index: number, root: SnapshotRoot, out: Scanned[], signal?: AbortSignal): Promise<void> {
  let top: BigIntStats;
  try {
    top = await stat(root.source, { bigint: true });
  } catch (error) {
    if (isNotFound(error)) throw new BackupError('SOURCE_MISSING', `backup path ${root.source} disappeared while the snapshot was taken`, { paths: [root.source] });
    throw ioError(`cannot read ${root.source}`, error, { paths: [root.source] });
  }
  out.push({ root: index, path: '', abs: root.source, type: root.kind, stat: top });
  if (root.kind !== 'dir') return;
  const walk = async (rel: string, abs: string): Promise<void> => {
    signal?.throwIfAborted();
    let names: string[];
    try {
      names = (await readdir(abs)).sort();
    } catch (error) {
      if (isNotFound(error)) return;
      throw ioError(`cannot list ${abs}`, error, { paths: [abs] });
    }
    for (const name of names) {
      const childAbs = path.join(abs, name);
      const childRel = rel === '' ? name : `${rel}/${name}`;
      let st: BigIntStats;
      try {
        st = await lstat(childAbs, { bigint: true });
      } catch (error) {
        if (isNotFound(error)) continue; // gone since the listing: not part of this snapshot
        throw ioError(`cannot read ${childAbs}`, error, { paths: [childAbs] });
      }
      const type = typeOf(st);
      if (type === null) continue;
      out.push({ root: index, path: childRel, abs: childAbs, type, stat: st });
      if (type === 'dir') await walk(childRel, childAbs);
    }
  };
  await walk('', root.source);
}

function baseEntry(s: Scanned): ManifestEntry {
  const st = s.stat;
  return {
    root: s.root,
    path: s.path,
    type: s.type,
    mode: Number(st.mode & 0o7777n),
    size: s.type === 'file' ? Number(st.size) : 0,
    mtimeMs: Number(st.mtimeNs) / 1e6,
    mtimeNs: st.mtimeNs.toString(),
    ctimeNs: st.ctimeNs.toString(),
    ino: st.ino.toString(),
    uid: Number(st.uid),
    gid: Number(st.gid),
  };
}

/** True when a file looks exactly as when the earlier snapshot read it. */
function unchanged(entry: ManifestEntry, before: ManifestEntry): boolean {
  return (
    before.type === 'file' &&
    entry.size === before.size &&
    entry.mtimeNs === before.mtimeNs &&
    entry.ctimeNs === before.ctimeNs &&
    entry.ino === before.ino &&
    entry.mode === before.mode
  );
}

function sameFile(a: BigIntStats, b: BigIntStats): boolean {
  return a.ino === b.ino && a.dev === b.dev && a.size === b.size && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs;
}

function ioError(what: string, error: unknown, details: { paths?: string[]; dir?: string } = {}): BackupError {
  if (error instanceof BackupError) return error;
  return new BackupError('IO', `${what}: ${(error as Error).message}`, details, { cause: error });
}

/** The size and stored state of a blob, or null when it is not there. */
async function blobSize(layout: StoreLayout, sha256: string): Promise<number | null> {
  try {
    return (await stat(layout.blob(sha256))).size;
  } catch (error) {
    if (isNotFound(error)) return null;
    throw error;
  }
}

class Creator {
  readonly undo: Undo = { temps: new Set(), added: [], madeDirs: [], dirty: new Set() };
  newBytes = 0;
  readBytes = 0;
  bytesDone = 0;
  files = 0;

  constructor(
    private readonly ctx: Context,
    private readonly signal: AbortSignal | undefined,
    private readonly tick: () => void,
  ) {}

  /** Reads a file only to hash it; null when it changed while read (the caller copies it then). */
  async hashOnly(s: Scanned): Promise<{ sha256: string; stat: BigIntStats } | null> {
    const handle = await open(s.abs, 'r');
    try {
      const before = await handle.stat({ bigint: true });
      if (!before.isFile()) return null;
      const hash = createHash('sha256');
      const size = await readChunks(handle, (chunk) => this.hashed(hash, chunk), this.signal);
      const after = await handle.stat({ bigint: true });
      const atPath = await lstat(s.abs, { bigint: true }).catch(() => null);
      if (size !== Number(before.size) || !sameFile(before, after) || atPath?.ino !== before.ino) return null;
      return { sha256: hash.digest('hex'), stat: before };
    } finally {
      await handle.close();
    }
  }

  private hashed(hash: ReturnType<typeof createHash>, chunk: Buffer): void {
    hash.update(chunk);
    this.readBytes += chunk.length;
    this.bytesDone += chunk.length;
    this.tick();
  }

  /**
   * Copies a file into a blob: to tmp/ while hashing what was read, fsync, read back and hash
   * again, rename into place. Read again once if the file changed meanwhile, then SOURCE_CHANGED.
   * Null when the file is gone.
   */
  async store(s: Scanned): Promise<{ sha256: string; stat: BigIntStats } | null> {
    const doneBefore = this.bytesDone;
    for (let attempt = 0; attempt < 2; attempt++) {
      this.bytesDone = doneBefore;
      const copied = await this.copyOnce(s.abs);
      if (copied === 'gone') return null;
      if (copied === 'changed') continue;
      const { temp, sha256, stat: st, size } = copied;
      await this.place(temp, sha256, size);
      return { sha256, stat: st };
    }
    throw new BackupError('SOURCE_CHANGED', `${s.abs} changed while it was copied, twice; no snapshot was taken (try again when it is not being written)`, {
      paths: [s.abs],
    });
  }

  private async copyOnce(abs: string): Promise<'gone' | 'changed' | { temp: string; sha256: string; stat: BigIntStats; size: number }> {
    let source;
    try {
      source = await open(abs, 'r');
    } catch (error) {
      if (isNotFound(error)) return 'gone';
      throw ioError(`cannot read ${abs}`, error, { paths: [abs] });
    }
    const temp = path.join(this.ctx.layout.tmp, `${randomHex(8)}.blob`);
    this.undo.temps.add(temp);
    let keep = false;
    try {
      const before = await source.stat({ bigint: true });
      if (!before.isFile()) return 'changed';
      const out = await open(temp, 'wx', 0o444);
      const hash = createHash('sha256');
      let size: number;
      try {
        let written = 0;
        size = await readChunks(
          source,
          async (chunk) => {
            this.hashed(hash, chunk);
            await writeAll(out, chunk, written);
            written += chunk.length;
          },
          this.signal,
        );
        await out.sync();
      } finally {
        await out.close();
      }
      const after = await source.stat({ bigint: true });
      const atPath = await lstat(abs, { bigint: true }).catch(() => null);
      if (size !== Number(before.size) || !sameFile(before, after) || !atPath || atPath.ino !== before.ino) return 'changed';
      const sha256 = hash.digest('hex');
      const back = await hashFile(temp, this.signal);
      if (back.sha256 !== sha256 || back.size !== size) {
        throw new BackupError('IO', `the copy of ${abs} read back differently from what was written (${temp}); no snapshot was taken: check the store's disk`, {
          paths: [abs, temp],
        });
      }
      keep = true;
      return { temp, sha256, stat: before, size };
    } catch (error) {
      if (error instanceof BackupError || isNoSpace(error) || this.signal?.aborted) throw error;
      throw ioError(`cannot copy ${abs} into the store`, error, { paths: [abs] });
    } finally {
      await source.close();
      if (!keep) {
        await rm(temp, { force: true });
        this.undo.temps.delete(temp);
      }
    }
  }

  /** Renames a verified temp copy into blobs/, unless the store has that content already. */
  private async place(temp: string, sha256: string, size: number): Promise<void> {
    const { layout } = this.ctx;
    const have = await blobSize(layout, sha256);
    if (have === size) {
      await rm(temp, { force: true });
      this.undo.temps.delete(temp);
      return;
    }
    const dir = layout.blobDir(sha256);
    try {
      await mkdir(dir);
      this.undo.madeDirs.push(dir);
      this.undo.dirty.add(layout.blobs);
    } catch (error) {
      if (errnoCode(error) !== 'EEXIST') throw error;
    }
    // A blob of the wrong size (damaged) is replaced by this verified copy.
    await rename(temp, layout.blob(sha256));
    this.undo.temps.delete(temp);
    if (have === null) this.undo.added.push(layout.blob(sha256));
    this.undo.dirty.add(dir);
    this.newBytes += size;
  }
}

/** Takes a snapshot; see SnapshotStore.create. Runs inside the store's queue. */
export async function createSnapshot(ctx: Context, options: CreateOptions): Promise<Manifest> {
  const { layout } = ctx;
  const { signal } = options;
  const paths = checkInput(options);
  const progress: CreateProgress = { phase: 'scan', bytesDone: 0, bytesTotal: 0, files: 0 };
  const throttle = new Throttle(options.onProgress, ctx.now);
  let creator: Creator | undefined;
  const report = (final = false) => {
    if (creator) Object.assign(progress, { bytesDone: creator.bytesDone, files: creator.files });
    throttle.update(() => ({ ...progress }), final);
  };
  try {
    signal?.throwIfAborted();
    const roots = await statRoots(options.service, paths);
    const createdAt = ctx.now();
    let id = makeSnapshotId(options.service, createdAt, randomHex(3));
    while (await exists(layout.manifest(id))) id = makeSnapshotId(options.service, createdAt, randomHex(3));

    report();
    const previous = await newestOf(layout, options.service);
    const scanned: Scanned[] = [];
    for (const [i, root] of roots.entries()) await scanRoot(i, root, scanned, signal);
    progress.bytesTotal = scanned.reduce((sum, s) => sum + (s.type === 'file' ? Number(s.stat.size) : 0), 0);
    progress.phase = 'copy';
    report(true);

    creator = new Creator(ctx, signal, () => report());
    const entries: ManifestEntry[] = [];
    for (const s of scanned) {
      signal?.throwIfAborted();
      const entry = baseEntry(s);
      if (s.type === 'symlink') {
        try {
          entry.target = await readlink(s.abs);
        } catch (error) {
          if (isNotFound(error)) continue;
          throw ioError(`cannot read the link ${s.abs}`, error, { paths: [s.abs] });
        }
      }
      if (s.type === 'file') {
        const sha256 = await fileContent(ctx, creator, s, entry, previous?.get(`${roots[s.root]!.source}\0${s.path}`), options.rehash === true);
        if (sha256 === null) continue;
        entry.sha256 = sha256;
        creator.files++;
      }
      entries.push(entry);
    }

    progress.phase = 'images';
    report(true);
    let images: ImageEntry[] = [];
    if (options.images) images = await takeImages(options.images, id, signal);
    signal?.throwIfAborted();

    progress.phase = 'manifest';
    report(true);
    for (const dir of creator.undo.dirty) await syncDir(dir);
    const files = entries.filter((e) => e.type === 'file');
    const bytes = files.reduce((sum, e) => sum + e.size, 0);
    const manifest = sealManifest({
      format: MANIFEST_FORMAT,
      id,
      service: options.service,
      version: options.version ?? null,
      trigger: options.trigger,
      createdAt,
      roots,
      entries,
      images,
      totals: { files: files.length, bytes, newBytes: creator.newBytes, reusedBytes: bytes - creator.newBytes, readBytes: creator.readBytes },
    });
    signal?.throwIfAborted();
    await writeDurable(layout.tmp, layout.manifest(id), serializeManifest(manifest));
    progress.phase = 'done';
    report(true);
    return manifest;
  } catch (error) {
    if (creator) await undo(creator.undo);
    throw await failure(ctx, options, error);
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await lstat(file);
    return true;
  } catch (error) {
    if (isNotFound(error)) return false;
    throw error;
  }
}

/** The content hash of one file: from the earlier snapshot when the file is unchanged there, else read (and stored when new). Null when the file is gone. */
async function fileContent(
  ctx: Context,
  creator: Creator,
  s: Scanned,
  entry: ManifestEntry,
  before: ManifestEntry | undefined,
  rehash: boolean,
): Promise<string | null> {
  const known = before?.sha256 !== undefined && (await blobSize(ctx.layout, before.sha256)) === before.size ? before : undefined;
  if (known && !rehash && unchanged(entry, known)) {
    creator.bytesDone += entry.size;
    return known.sha256!;
  }
  if (known && entry.size === known.size && entry.mtimeNs === known.mtimeNs) {
    // Probably the same content (restored: new inode; chmod: new ctime; or rehash): read it once
    // without writing, and copy only if it differs. A changed mtime or size goes straight to the copy.
    const doneBefore = creator.bytesDone;
    const hashed = await creator.hashOnly(s).catch((error: unknown) => {
      if (isNotFound(error)) return null;
      throw ioError(`cannot read ${s.abs}`, error, { paths: [s.abs] });
    });
    if (hashed && hashed.sha256 === known.sha256 && Number(hashed.stat.size) === known.size) {
      Object.assign(entry, baseEntry({ ...s, stat: hashed.stat }));
      return hashed.sha256;
    }
    creator.bytesDone = doneBefore;
  }
  const stored = await creator.store(s);
  if (!stored) return null;
  Object.assign(entry, baseEntry({ ...s, stat: stored.stat }));
  return stored.sha256;
}

async function takeImages(images: NonNullable<CreateOptions['images']>, id: string, signal: AbortSignal | undefined): Promise<ImageEntry[]> {
  let result: unknown;
  try {
    result = await images(signal ? { id, signal } : { id });
  } catch (error) {
    if (signal?.aborted) throw error;
    throw new BackupError('IMAGES_FAILED', `the image step of snapshot ${id} failed: ${(error as Error)?.message ?? String(error)}; no snapshot was written`, { snapshot: id }, { cause: error });
  }
  if (!Array.isArray(result)) throw new BackupError('IMAGES_FAILED', `the image step of snapshot ${id} returned no array; no snapshot was written`, { snapshot: id });
  result.forEach((image, i) => {
    const problem = imageProblem(image);
    if (problem) throw new BackupError('IMAGES_FAILED', `the image step of snapshot ${id} returned a bad entry: images[${i}] ${problem}; no snapshot was written`, { snapshot: id });
  });
  return (result as ImageEntry[]).map(({ instance, ref, digest, size }) => ({ instance, ref, digest, size }));
}

/** The service's newest readable snapshot, as source path + relative path → entry. */
async function newestOf(layout: StoreLayout, service: string): Promise<Map<string, ManifestEntry> | undefined> {
  const { ids } = await snapshotIds(layout);
  const mine = ids.flatMap((id) => {
    const named = parseSnapshotId(id);
    return named?.service === service ? [{ id, createdAt: named.createdAt }] : [];
  });
  mine.sort((a, b) => b.createdAt - a.createdAt || (a.id < b.id ? 1 : -1));
  for (const { id } of mine) {
    const newest = await readManifest(layout, id, false)
      .then((c) => c.manifest)
      .catch(() => undefined);
    if (newest) return new Map(newest.entries.map((e) => [`${newest.roots[e.root]!.source}\0${e.path}`, e]));
  }
  return undefined;
}

async function undo(state: Undo): Promise<void> {
  for (const temp of state.temps) await rm(temp, { force: true }).catch(() => {});
  // No manifest names these yet (creates run one at a time), so removing them changes nothing else.
  for (const blob of state.added) await rm(blob, { force: true }).catch(() => {});
  for (const dir of state.madeDirs) await rmdir(dir).catch(() => {});
  for (const dir of state.dirty) await syncDir(dir).catch(() => {});
}

async function failure(ctx: Context, options: CreateOptions, error: unknown): Promise<unknown> {
  const { layout } = ctx;
  if (options.signal?.aborted) {
    return new BackupError('ABORTED', `the snapshot of ${options.service} was cancelled; nothing was changed`, {}, { cause: options.signal.reason });
  }
  if (isNoSpace(error) || (error instanceof BackupError && isNoSpace(error.cause))) {
    const free = await statfs(layout.root)
      .then((s) => ` (${formatBytes(s.bavail * s.bsize)} free)`)
      .catch(() => '');
    return new BackupError(
      'DISK_FULL',
      `the disk of the snapshot store ${layout.root} is full${free}: the snapshot of ${options.service} needs more room; no snapshot was written and nothing in the store was changed`,
      { dir: layout.root },
      { cause: error },
    );
  }
  if (error instanceof BackupError) return error;
  return ioError(`the snapshot of ${options.service} failed`, error, { dir: layout.root });
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}
