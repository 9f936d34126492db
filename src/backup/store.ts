import { readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { RetentionConfig } from '../config/index.js';
import { systemClock, type Clock } from '../core/index.js';
import { loadManifest, readCatalog, snapshotIds } from './catalog.js';
import { createSnapshot, type CreateOptions } from './create.js';
import { BackupError, isNoSpace, isNotFound } from './errors.js';
import { lstatOrNull, mkdirs, syncDir, writeDurable } from './files.js';
import { StoreLayout } from './layout.js';
import { parseSnapshotId, SHA256, type Manifest, type SnapshotRoot, type SnapshotTotals, type SnapshotTrigger } from './manifest.js';
import { recoverRestore, restoreSnapshot, type RestoreOptions, type RestoreResult } from './restore.js';
import { selectRetained } from './retention.js';
import { verifySnapshots, type VerifyOptions, type VerifyReport } from './verify.js';

export interface SnapshotStoreOptions {
  /** Default: the system clock. */
  clock?: Clock;
  /** IANA time zone whose days and weeks retention counts. Default: this process's local zone. */
  timeZone?: string;
}

/** A readable snapshot as list() shows it. */
export interface SnapshotSummary {
  broken: false;
  id: string;
  service: string;
  version: string | null;
  trigger: SnapshotTrigger;
  createdAt: number;
  knownGood: boolean;
  roots: SnapshotRoot[];
  images: number;
  totals: SnapshotTotals;
}

/** A manifest that cannot be read or is damaged: shown so a person sees it, never deleted by prune. */
export interface BrokenSnapshot {
  broken: true;
  id: string;
  /** From the id. */
  service: string;
  createdAt: number;
  knownGood: boolean;
  problem: string;
}

export type SnapshotListing = SnapshotSummary | BrokenSnapshot;

export interface OpenReport {
  /** Temp files of interrupted writes removed from tmp/. */
  tempsRemoved: number;
  /** A restore interrupted by a crash, put right. */
  restore: { id: string; action: 'finished' | 'undone'; targets: string[] } | null;
}

export interface PruneOptions {
  /** Work out and report, change nothing. Default false. */
  dryRun?: boolean;
  /** A service's own policy (its backup.retention) instead of the shared one. */
  perService?: ReadonlyMap<string, RetentionConfig>;
}

export interface PruneResult {
  dryRun: boolean;
  /** Snapshots deleted (or that would be), newest first. */
  deleted: string[];
  kept: string[];
  /** Damaged manifests: kept, and the blobs they may name kept too. */
  broken: string[];
  /** Blobs no remaining snapshot uses, removed, and their bytes. */
  blobsRemoved: number;
  freedBytes: number;
}

type State = 'new' | 'opening' | 'open' | 'failed';

/**
 * Verified, content-addressed snapshots of the files a model service needs, in one directory (see
 * StoreLayout). Reads (list, get, verify) never write, so they are safe against a store another
 * process is using. Mutations (create, restore, prune, setKnownGood) need open() and run one at a
 * time per store object; one process at a time should mutate a store.
 */
export class SnapshotStore {
  readonly layout: StoreLayout;
  private readonly clock: Clock;
  private readonly timeZone: string | undefined;
  private state: State = 'new';
  private opening: Promise<OpenReport> | null = null;
  private tail: Promise<unknown> = Promise.resolve();

  constructor(
    readonly dir: string,
    options: SnapshotStoreOptions = {},
  ) {
    this.layout = new StoreLayout(path.resolve(dir));
    this.clock = options.clock ?? systemClock;
    this.timeZone = options.timeZone;
  }

  /**
   * Creates the layout, empties tmp/, finishes (or undoes) a restore that a crash interrupted,
   * and removes known-good marks of snapshots that are gone. Safe to call twice.
   */
  open(): Promise<OpenReport> {
    this.opening ??= this.doOpen().then(
      (report) => {
        this.state = 'open';
        return report;
      },
      (error: unknown) => {
        this.state = 'failed';
        this.opening = null;
        throw error;
      },
    );
    this.state = this.state === 'open' ? 'open' : 'opening';
    return this.opening;
  }

  private async doOpen(): Promise<OpenReport> {
    const { layout } = this;
    try {
      const made = [
        ...(await mkdirs(layout.blobs)),
        ...(await mkdirs(layout.snapshots)),
        ...(await mkdirs(layout.tmp)),
      ];
      for (const dir of new Set(made.map((d) => path.dirname(d)))) await syncDir(dir);
      let tempsRemoved = 0;
      for (const name of await readdir(layout.tmp)) {
        await rm(path.join(layout.tmp, name), { recursive: true, force: true });
        tempsRemoved++;
      }
      const restore = await recoverRestore(layout);
      const { ids, knownGood } = await snapshotIds(layout);
      const present = new Set(ids);
      let marksRemoved = 0;
      for (const id of knownGood) {
        if (!present.has(id)) {
          await rm(layout.knownGood(id), { force: true });
          marksRemoved++;
        }
      }
      if (marksRemoved > 0) await syncDir(layout.snapshots);
      return { tempsRemoved, restore };
    } catch (error) {
      if (error instanceof BackupError) throw error;
      throw new BackupError('IO', `cannot open the snapshot store ${layout.root}: ${(error as Error).message}`, { dir: layout.root }, { cause: error });
    }
  }

  /** Runs mutations one at a time, so a prune never sweeps a blob a create is about to name. */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = async () => {
      if (this.state !== 'open') {
        if (this.state === 'opening' && this.opening) await this.opening;
        else throw new BackupError('NOT_OPEN', `the snapshot store ${this.layout.root} is not open: call open() first`, { dir: this.layout.root });
      }
      try {
        return await fn();
      } catch (error) {
        if (error instanceof BackupError) throw error;
        if (isNoSpace(error)) {
          throw new BackupError('DISK_FULL', `the disk of the snapshot store ${this.layout.root} is full; nothing was changed`, { dir: this.layout.root }, { cause: error });
        }
        throw new BackupError('IO', `snapshot store ${this.layout.root}: ${(error as Error).message}`, { dir: this.layout.root }, { cause: error });
      }
    };
    const result = this.tail.then(run, run);
    this.tail = result.catch(() => {});
    return result;
  }

  private get now(): () => number {
    return () => this.clock.now();
  }

  /**
   * Takes a snapshot of `paths`: files whose size, times, inode and mode match the service's
   * newest snapshot are taken as they are without reading them; others are copied into blobs
   * (hashed while copied, fsynced, read back and hashed again); then the images step, then the
   * manifest (a manifest present = a complete, verified snapshot). On failure nothing in the
   * store is changed: SOURCE_MISSING, SOURCE_CHANGED, DISK_FULL, IMAGES_FAILED, ABORTED, IO.
   */
  create(options: CreateOptions): Promise<Manifest> {
    return this.exclusive(() => createSnapshot({ layout: this.layout, now: this.now }, options));
  }

  /** Every snapshot, newest first, damaged ones included (broken: true). */
  async list(filter: { service?: string } = {}): Promise<SnapshotListing[]> {
    const catalog = await readCatalog(this.layout, (id) => filter.service === undefined || parseSnapshotId(id)?.service === filter.service);
    const listing: SnapshotListing[] = catalog.map((c): SnapshotListing => {
      if (c.manifest) {
        const m = c.manifest;
        return {
          broken: false,
          id: m.id,
          service: m.service,
          version: m.version,
          trigger: m.trigger,
          createdAt: m.createdAt,
          knownGood: c.knownGood,
          roots: m.roots,
          images: m.images.length,
          totals: m.totals,
        };
      }
      const named = parseSnapshotId(c.id)!;
      return { broken: true, id: c.id, service: named.service, createdAt: named.createdAt, knownGood: c.knownGood, problem: c.problem };
    });
    return listing.sort((a, b) => b.createdAt - a.createdAt || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
  }

  /** A snapshot's manifest; SNAPSHOT_NOT_FOUND, or SNAPSHOT_CORRUPT when its manifest is damaged. */
  get(id: string): Promise<{ manifest: Manifest; knownGood: boolean }> {
    return loadManifest(this.layout, id);
  }

  /**
   * Re-hashes every blob of one snapshot, or of all, each blob once, and reports each damaged
   * file by snapshot and path; damaged manifests are reported too. Throws only when the store or
   * the named snapshot is not there. Only reads.
   */
  verify(id?: string, options: VerifyOptions = {}): Promise<VerifyReport> {
    return verifySnapshots(this.layout, id, this.now, options);
  }

  /**
   * Puts a snapshot's files back: verifies its blobs (a damaged snapshot is refused,
   * SNAPSHOT_CORRUPT naming the files, before anything is touched), copies each root to
   * `<target>.understudy-staging-<id>`, checks the copies' hashes, fsyncs, then swaps them in
   * (see RestoredRoot.swap). Any failure before the swap removes the copies and leaves the targets
   * as they were; a crash between swaps is put right by the next open().
   */
  restore(id: string, options: RestoreOptions = {}): Promise<RestoreResult> {
    return this.exclusive(() => restoreSnapshot({ layout: this.layout, now: this.now }, id, options));
  }

  /** Marks a snapshot known-good (it passed its checks in service); the newest known-good one of a service is never pruned. */
  setKnownGood(id: string): Promise<void> {
    return this.exclusive(async () => {
      await loadManifest(this.layout, id);
      if (await lstatOrNull(this.layout.knownGood(id))) return;
      await writeDurable(this.layout.tmp, this.layout.knownGood(id), `${JSON.stringify({ markedAt: this.clock.now() })}\n`);
    });
  }

  /** The service's newest readable known-good snapshot, or null. */
  async newestKnownGood(service: string): Promise<SnapshotSummary | null> {
    for (const s of await this.list({ service })) if (!s.broken && s.knownGood) return s;
    return null;
  }

  /**
   * Deletes the snapshots `policy` does not keep (see selectRetained), then the blobs no
   * remaining snapshot uses. Damaged manifests are kept, with every blob they may name; when a
   * manifest cannot be read at all, no blob is removed.
   */
  prune(policy: RetentionConfig, options: PruneOptions = {}): Promise<PruneResult> {
    return this.exclusive(async () => {
      const { layout } = this;
      const dryRun = options.dryRun === true;
      const catalog = await readCatalog(layout);
      const readable = catalog.flatMap((c) => (c.manifest ? [{ ...c, manifest: c.manifest }] : []));
      const broken = catalog.filter((c) => !c.manifest);
      const retained = selectRetained(
        readable.map((c) => ({ id: c.id, service: c.manifest.service, createdAt: c.manifest.createdAt, knownGood: c.knownGood })),
        policy,
        { ...(this.timeZone ? { timeZone: this.timeZone } : {}), ...(options.perService ? { perService: options.perService } : {}) },
      );
      const newestFirst = (a: { manifest: Manifest }, b: { manifest: Manifest }) => b.manifest.createdAt - a.manifest.createdAt || (a.manifest.id < b.manifest.id ? 1 : -1);
      readable.sort(newestFirst);
      const deleted = readable.filter((c) => !retained.has(c.id));
      const kept = readable.filter((c) => retained.has(c.id));

      const marked = new Set<string>();
      for (const c of kept) for (const e of c.manifest.entries) if (e.sha256) marked.add(e.sha256);
      let sweep = true;
      for (const c of broken) {
        if (c.text === null) sweep = false;
        else for (const m of c.text.matchAll(/[0-9a-f]{64}/g)) marked.add(m[0]);
      }

      if (!dryRun) {
        for (const c of deleted) {
          await rm(layout.manifest(c.id), { force: true });
          await rm(layout.knownGood(c.id), { force: true });
        }
        if (deleted.length > 0) await syncDir(layout.snapshots);
      }

      let blobsRemoved = 0;
      let freedBytes = 0;
      if (sweep) {
        for (const fan of await readdir(layout.blobs)) {
          const dir = path.join(layout.blobs, fan);
          let removed = false;
          for (const name of await readdir(dir).catch(() => [] as string[])) {
            if (!SHA256.test(name) || marked.has(name)) continue;
            const file = path.join(dir, name);
            try {
              const { size } = await stat(file);
              if (!dryRun) await rm(file);
              blobsRemoved++;
              freedBytes += size;
              removed = true;
            } catch (error) {
              if (!isNotFound(error)) throw error;
            }
          }
          if (removed && !dryRun) await syncDir(dir);
        }
      }
      return {
        dryRun,
        deleted: deleted.map((c) => c.id),
        kept: kept.map((c) => c.id),
        broken: broken.map((c) => c.id),
        blobsRemoved,
        freedBytes,
      };
    });
  }
}
