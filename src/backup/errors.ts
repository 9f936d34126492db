import { UnderstudyError } from '../core/index.js';

export type BackupErrorCode =
  /** No snapshot with that id (or the id is not one). */
  | 'SNAPSHOT_NOT_FOUND'
  /** A snapshot's manifest or blobs are damaged; the message names the files. */
  | 'SNAPSHOT_CORRUPT'
  /** A configured path to back up does not exist. */
  | 'SOURCE_MISSING'
  /** A file kept changing while it was copied, twice. */
  | 'SOURCE_CHANGED'
  /** The disk under the store (create) or under a restore target (restore) is full; nothing was changed. */
  | 'DISK_FULL'
  /** Any other file-system failure; the message names the file. */
  | 'IO'
  /** A restored copy did not hash to what the snapshot recorded; the target was left as it was. */
  | 'RESTORE_VERIFY_FAILED'
  /** The image step of a snapshot failed; no snapshot was written. */
  | 'IMAGES_FAILED'
  /** Bad arguments: the message names what and where. */
  | 'INVALID_INPUT'
  /** The AbortSignal fired; nothing was changed. */
  | 'ABORTED'
  /** The store directory does not exist (read-only operations never create it). */
  | 'STORE_NOT_FOUND'
  /** A mutating operation before open(). */
  | 'NOT_OPEN';

const RETRYABLE: ReadonlySet<BackupErrorCode> = new Set(['SOURCE_CHANGED', 'DISK_FULL', 'IO']);

export interface BackupErrorDetails {
  /** The snapshot concerned, when there is one. */
  snapshot?: string;
  /** The files concerned: source paths, blob paths, targets. */
  paths?: string[];
  /** The directory concerned: the store, or a restore target's parent. */
  dir?: string;
}

/** A snapshot operation failed. Whatever the code, the store's existing snapshots are as they were. */
export class BackupError extends UnderstudyError {
  override name = 'BackupError';
  declare readonly code: BackupErrorCode;
  constructor(
    code: BackupErrorCode,
    message: string,
    readonly details: BackupErrorDetails = {},
    options?: { cause?: unknown },
  ) {
    super(code, message, RETRYABLE.has(code), options);
  }
}

/** The errno code of a Node.js system error, if it is one. */
export function errnoCode(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

export function isNoSpace(error: unknown): boolean {
  const code = errnoCode(error);
  return code === 'ENOSPC' || code === 'EDQUOT';
}

export function isNotFound(error: unknown): boolean {
  return errnoCode(error) === 'ENOENT';
}
