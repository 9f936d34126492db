export { ConfigError, formatIssue, type ConfigIssue } from './errors.js';
export { loadConfigFile, parseConfig, type ClusterConfig, type Config, type InstanceConfig, type ServiceConfig, type Tier } from './load.js';
export { diffConfigs, LIVE_INSTANCE_FIELDS, LIVE_SERVICE_FIELDS, type ConfigDiff } from './live.js';
export type {
  AlertsConfig,
  CapabilitiesConfig,
  DeployConfig,
  DrillConfig,
  SmokeConfig,
  BackupConfig,
  DockerRuntimeConfig,
  RetentionConfig,
  ServiceBackupConfig,
  IdempotencyConfig,
  JobsConfig,
  ProcessRuntimeConfig,
  ReadyProbeConfig,
  StartupProbeConfig,
  VersionProbeConfig,
} from './schema.js';
export { FAULT_KINDS, PREFILL_SHAPES, faultsAllowed, type FaultKind, type PrefillShape } from './schema.js';
export { formatDuration, parseDuration, parseListen, parseSize } from './units.js';
export { atVersion, pathsAtVersion } from './version.js';
