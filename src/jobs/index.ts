export { JobError, StoreError } from './errors.js';
export { FINAL_STATES } from './types.js';
export { DurableFile, JobFiles } from './files.js';
export { itemsInOrder, parseWav, resultBytes, resultLine } from './output.js';
export { JobRunner, type JobView, type PruneRequest, type RunnerOptions } from './runner.js';
export { SqliteJobStore } from './sqlite-store.js';
export { ThreadedJobStore } from './threaded-store.js';
export { pickPruned, type JobFilter, type JobStore, type PruneRule } from './store.js';
export type { ItemRecord, ItemRequest, ItemResult, JobOptions, JobRecord, JobState, NewJob, StoredReply } from './types.js';
