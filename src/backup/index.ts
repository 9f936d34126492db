export { BackupError, type BackupErrorCode, type BackupErrorDetails } from './errors.js';
export { formatBytes, type CreateOptions, type CreateProgress } from './create.js';
export { StoreLayout } from './layout.js';
export {
  entrySource,
  makeSnapshotId,
  MANIFEST_FORMAT,
  parseSnapshotId,
  type ImageEntry,
  type Manifest,
  type ManifestEntry,
  type SnapshotRoot,
  type SnapshotTotals,
  type SnapshotTrigger,
} from './manifest.js';
export type { RestoreOptions, RestoreProgress, RestoreResult, RestoredRoot } from './restore.js';
export { selectRetained, type RetentionCandidate, type RetentionOptions } from './retention.js';
export {
  SnapshotStore,
  type BrokenSnapshot,
  type OpenReport,
  type PruneOptions,
  type PruneResult,
  type SnapshotListing,
  type SnapshotStoreOptions,
  type SnapshotSummary,
} from './store.js';
export { describeProblem, type VerifyOptions, type VerifyProblem, type VerifyProgress, type VerifyReport } from './verify.js';
export { ImageKeeper } from './images.js';
