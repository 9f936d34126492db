import { StoreError, type JobStore } from '../jobs/index.js';

/**
 * The leader's view of the job store: the writes only a leader makes (a job's state, an
 * item's result, a failed try) are refused unless this node may act at that moment, so
 * a leader that was paused past its term and woke up records nothing, even before the
 * store's own epoch check (PostgreSQL) sees a newer leader. Everything else passes.
 */
export function fencedStore(store: JobStore, acting: () => boolean, node: string): JobStore {
  const check = (what: string) => {
    if (!acting()) throw new StoreError('STORE_FENCED', `${node} no longer leads the cluster: it may not ${what}`);
  };
  return {
    kind: store.kind,
    createJob: (job) => store.createJob(job),
    getJob: (id) => store.getJob(id),
    listJobs: (filter) => store.listJobs(filter),
    setJobState: async (id, state, reason, now) => {
      check(`change job ${id}`);
      return store.setJobState(id, state, reason, now);
    },
    pendingItems: (id) => store.pendingItems(id),
    items: (id, from, limit) => store.items(id, from, limit),
    recordResult: async (id, index, result) => {
      check(`record item ${index} of job ${id}`);
      return store.recordResult(id, index, result);
    },
    noteFailedTry: async (id, index) => {
      check(`count a failed try of item ${index} of job ${id}`);
      return store.noteFailedTry(id, index);
    },
    getReply: (scope, key, now) => store.getReply(scope, key, now),
    putReply: (scope, key, reply, now) => store.putReply(scope, key, reply, now),
    pruneReplies: (now) => store.pruneReplies(now),
    pruneJobs: async (rule) => {
      if (!rule.dryRun) check('remove finished jobs');
      return store.pruneJobs(rule);
    },
    // The store is shared with the rest of the node: the runner that holds this view does not close it.
    close: async () => undefined,
  };
}
