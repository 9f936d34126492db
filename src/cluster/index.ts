export { PgJobStore, type PgStoreOptions } from './pg-store.js';
export type { Coordination, KeyHolder, LeaseGrant } from './coordination.js';
export { ClusterError, type ClusterErrorCode } from './errors.js';
export { EtcdCoordination, type EtcdOptions } from './etcd.js';
export { fencedStore } from './fenced-store.js';
export { Leadership, type LeaderView } from './leadership.js';
export { ClusterNode, type ClusterView, type LeaderDuties, type MemberConfig, type RoutedService, type Routing } from './node.js';
export { KEPT_REVISIONS, SharedConfig, type StoredConfig, type StoredConfigSummary } from './shared-config.js';
export { DesiredStates, type DesiredState } from './desired.js';
