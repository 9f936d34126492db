export { ServiceController, type InstanceView, type ServiceView } from './service.js';
export { Understudy } from './understudy.js';
export { Deployer, smokeTest, type DeployBackups, type DeployView } from './deploy.js';
export { ReleaseBook, ReleaseError, type ReleaseRecord, type ServiceReleases } from './releases.js';
export { Backups } from './backups.js';
export { Drills, type DrillOrder, type DrillSummary } from './drills.js';
export { ConfigKeeper, startingConfig, type ApplyResult, type ConfigView } from './shared-config.js';
