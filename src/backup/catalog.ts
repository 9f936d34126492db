import { readdir, readFile } from 'node:fs/promises';
import { BackupError, errnoCode, isNotFound } from './errors.js';
import type { StoreLayout } from './layout.js';
import { ManifestProblem, parseManifest, parseSnapshotId, type Manifest } from './manifest.js';

/** One `snapshots/<id>.json` as read: a checked manifest, or what is wrong with it. */
export type CatalogEntry =
  | { id: string; knownGood: boolean; manifest: Manifest; problem?: undefined; text: string }
  | {
      id: string;
      knownGood: boolean;
      manifest?: undefined;
      problem: string;
      /** The bytes that could be read (for the blob hashes they name); null when the file could not be read at all. */
      text: string | null;
    };

/** The snapshot ids in the store (from the file names) and which are marked known-good. */
export async function snapshotIds(layout: StoreLayout): Promise<{ ids: string[]; knownGood: Set<string> }> {
  let names: string[];
  try {
    names = await readdir(layout.snapshots);
  } catch (error) {
    if (isNotFound(error)) {
      throw new BackupError('STORE_NOT_FOUND', `no snapshot store at ${layout.root} (no ${layout.snapshots} directory)`, { dir: layout.root }, { cause: error });
    }
    throw new BackupError('IO', `cannot list ${layout.snapshots}: ${(error as Error).message}`, { dir: layout.snapshots }, { cause: error });
  }
  const ids: string[] = [];
  const knownGood = new Set<string>();
  for (const name of names) {
    const json = /^(.+)\.json$/.exec(name);
    if (json && parseSnapshotId(json[1]!)) ids.push(json[1]!);
    const marker = /^(.+)\.known-good$/.exec(name);
    if (marker && parseSnapshotId(marker[1]!)) knownGood.add(marker[1]!);
  }
  return { ids: ids.sort(), knownGood };
}

/** Reads and checks one manifest; a damaged one comes back with its problem, a missing one throws SNAPSHOT_NOT_FOUND. */
export async function readManifest(layout: StoreLayout, id: string, knownGood: boolean): Promise<CatalogEntry> {
  let text: string;
  try {
    text = await readFile(layout.manifest(id), 'utf8');
  } catch (error) {
    if (isNotFound(error)) throw notFound(id);
    return { id, knownGood, problem: `cannot read ${layout.manifest(id)}: ${errnoCode(error) ?? (error as Error).message}`, text: null };
  }
  try {
    return { id, knownGood, manifest: parseManifest(text, id), text };
  } catch (error) {
    if (!(error instanceof ManifestProblem)) throw error;
    return { id, knownGood, problem: `${layout.manifest(id)}: ${error.message}`, text };
  }
}

/** Every manifest in the store, oldest id first; `filter` picks by id before anything is read. */
export async function readCatalog(layout: StoreLayout, filter: (id: string) => boolean = () => true): Promise<CatalogEntry[]> {
  const { ids, knownGood } = await snapshotIds(layout);
  const entries: CatalogEntry[] = [];
  for (const id of ids.filter(filter)) {
    try {
      entries.push(await readManifest(layout, id, knownGood.has(id)));
    } catch (error) {
      // Deleted between the listing and the read (a prune in another process): not there.
      if (!(error instanceof BackupError && error.code === 'SNAPSHOT_NOT_FOUND')) throw error;
    }
  }
  return entries;
}

/** A readable manifest, or SNAPSHOT_NOT_FOUND / SNAPSHOT_CORRUPT. */
export async function loadManifest(layout: StoreLayout, id: string): Promise<{ manifest: Manifest; knownGood: boolean }> {
  if (!parseSnapshotId(id)) throw notFound(id);
  const { knownGood } = await snapshotIds(layout);
  const entry = await readManifest(layout, id, knownGood.has(id));
  if (entry.manifest === undefined) {
    throw new BackupError('SNAPSHOT_CORRUPT', `snapshot ${id} cannot be used: its manifest is damaged: ${entry.problem}`, {
      snapshot: id,
      paths: [layout.manifest(id)],
    });
  }
  return { manifest: entry.manifest, knownGood: entry.knownGood };
}

export function notFound(id: string): BackupError {
  return parseSnapshotId(id)
    ? new BackupError('SNAPSHOT_NOT_FOUND', `no snapshot ${id}`, { snapshot: id })
    : new BackupError('SNAPSHOT_NOT_FOUND', `${JSON.stringify(id)} is not a snapshot id (expected <service>-<YYYYMMDDTHHMMSSmmmZ>-<6 hex>)`, { snapshot: id });
}
