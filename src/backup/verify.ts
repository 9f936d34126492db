import { stat } from 'node:fs/promises';
import { notFound, readCatalog, readManifest, snapshotIds, type CatalogEntry } from './catalog.js';
import { BackupError, errnoCode, isNotFound } from './errors.js';
import { hashFile, Throttle } from './files.js';
import type { StoreLayout } from './layout.js';
import { entrySource, parseSnapshotId, type Manifest } from './manifest.js';

export interface VerifyProblem {
  snapshot: string;
  /** changed: the blob's content no longer hashes to its name; missing: no blob; size: the blob has another size; manifest: the manifest cannot be read or is damaged. */
  kind: 'changed' | 'missing' | 'size' | 'manifest';
  /** The file as it was backed up (absolute source path); for `manifest`, the manifest file. */
  path: string;
  /** The blob file, for the blob kinds. */
  blob?: string;
  detail: string;
}

export interface VerifyReport {
  ok: boolean;
  /** Each snapshot checked, oldest id first, and whether it is whole. */
  snapshots: { id: string; ok: boolean }[];
  /** Distinct blobs read and their bytes (each read once however many snapshots use it). */
  blobs: number;
  bytes: number;
  problems: VerifyProblem[];
}

export interface VerifyProgress {
  phase: 'verify' | 'done';
  bytesDone: number;
  bytesTotal: number;
  /** Blobs checked so far. */
  files: number;
}

export interface VerifyOptions {
  signal?: AbortSignal;
  /** Called at most every 100 ms, and once at the end. */
  onProgress?: (progress: VerifyProgress) => void;
}

interface BlobUse {
  snapshot: string;
  path: string;
  size: number;
}

/**
 * Re-hashes every blob the manifests use, each once, and names every snapshot and file that a
 * damaged blob affects. Only reads.
 */
export async function checkManifests(
  layout: StoreLayout,
  manifests: Manifest[],
  now: () => number,
  options: VerifyOptions = {},
): Promise<{ problems: VerifyProblem[]; blobs: number; bytes: number }> {
  const uses = new Map<string, BlobUse[]>();
  for (const manifest of manifests) {
    for (const entry of manifest.entries) {
      if (entry.type !== 'file') continue;
      const list = uses.get(entry.sha256!) ?? [];
      list.push({ snapshot: manifest.id, path: entrySource(manifest, entry), size: entry.size });
      uses.set(entry.sha256!, list);
    }
  }
  const progress: VerifyProgress = { phase: 'verify', bytesDone: 0, bytesTotal: 0, files: 0 };
  for (const list of uses.values()) progress.bytesTotal += list[0]!.size;
  const throttle = new Throttle(options.onProgress, now);
  const problems: VerifyProblem[] = [];
  let bytes = 0;
  for (const [sha256, list] of [...uses].sort(([a], [b]) => (a < b ? -1 : 1))) {
    options.signal?.throwIfAborted();
    const blob = layout.blob(sha256);
    const add = (use: BlobUse, kind: VerifyProblem['kind'], detail: string) => problems.push({ snapshot: use.snapshot, kind, path: use.path, blob, detail });
    let size: number;
    try {
      size = (await stat(blob)).size;
    } catch (error) {
      if (!isNotFound(error)) throw new BackupError('IO', `cannot read ${blob}: ${(error as Error).message}`, { paths: [blob] }, { cause: error });
      for (const use of list) add(use, 'missing', `its blob ${blob} is missing`);
      continue;
    }
    const sized = list.filter((use) => use.size === size);
    for (const use of list) if (use.size !== size) add(use, 'size', `its blob ${blob} has ${size} bytes, not ${use.size}`);
    if (sized.length === 0) continue;
    const done = progress.bytesDone;
    let actual: string;
    try {
      ({ sha256: actual } = await hashFile(blob, options.signal, (n) => {
        progress.bytesDone += n;
        throttle.update(() => ({ ...progress }));
      }));
    } catch (error) {
      if (options.signal?.aborted) throw error;
      // An unreadable blob (EIO on a failing disk) is a damaged snapshot, not a failed verify.
      for (const use of sized) add(use, 'changed', `its blob ${blob} cannot be read: ${errnoCode(error) ?? (error as Error).message}`);
      continue;
    }
    progress.bytesDone = done + size;
    progress.files++;
    bytes += size;
    if (actual !== sha256) for (const use of sized) add(use, 'changed', `its blob ${blob} has changed (its content hashes to ${actual.slice(0, 12)}…)`);
  }
  progress.phase = 'done';
  throttle.update(() => ({ ...progress }), true);
  return { problems, blobs: uses.size, bytes };
}

export async function verifySnapshots(layout: StoreLayout, id: string | undefined, now: () => number, options: VerifyOptions = {}): Promise<VerifyReport> {
  let catalog: CatalogEntry[];
  if (id === undefined) {
    catalog = await readCatalog(layout);
  } else {
    if (!parseSnapshotId(id)) throw notFound(id);
    const { knownGood } = await snapshotIds(layout);
    catalog = [await readManifest(layout, id, knownGood.has(id))];
  }
  const problems: VerifyProblem[] = [];
  const manifests: Manifest[] = [];
  for (const entry of catalog) {
    if (entry.manifest) manifests.push(entry.manifest);
    else problems.push({ snapshot: entry.id, kind: 'manifest', path: layout.manifest(entry.id), detail: entry.problem });
  }
  const checked = await checkManifests(layout, manifests, now, options);
  problems.push(...checked.problems);
  problems.sort((a, b) => (a.snapshot === b.snapshot ? (a.path < b.path ? -1 : a.path > b.path ? 1 : 0) : a.snapshot < b.snapshot ? -1 : 1));
  const bad = new Set(problems.map((p) => p.snapshot));
  return {
    ok: problems.length === 0,
    snapshots: catalog.map((c) => ({ id: c.id, ok: !bad.has(c.id) })),
    blobs: checked.blobs,
    bytes: checked.bytes,
    problems,
  };
}

/** One line per problem, for error messages and the CLI. */
export function describeProblem(problem: VerifyProblem): string {
  return `${problem.snapshot}: ${problem.path}: ${problem.detail}`;
}
