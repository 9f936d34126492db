import path from 'node:path';

/**
 * Where things live inside a store directory:
 *
 *   blobs/sha256/<2 hex>/<64 hex>    file contents, named by their SHA-256, read-only
 *   snapshots/<id>.json              one manifest per complete, verified snapshot
 *   snapshots/<id>.known-good        present when the snapshot is known-good
 *   tmp/                             files being written; emptied by open()
 *   restore.journal                  a restore between its swaps (open() finishes it)
 */
export class StoreLayout {
  readonly blobs: string;
  readonly snapshots: string;
  readonly tmp: string;
  readonly journal: string;

  constructor(readonly root: string) {
    this.blobs = path.join(root, 'blobs', 'sha256');
    this.snapshots = path.join(root, 'snapshots');
    this.tmp = path.join(root, 'tmp');
    this.journal = path.join(root, 'restore.journal');
  }

  blobDir(sha256: string): string {
    return path.join(this.blobs, sha256.slice(0, 2));
  }

  blob(sha256: string): string {
    return path.join(this.blobDir(sha256), sha256);
  }

  manifest(id: string): string {
    return path.join(this.snapshots, `${id}.json`);
  }

  knownGood(id: string): string {
    return path.join(this.snapshots, `${id}.known-good`);
  }
}
