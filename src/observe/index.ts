export { Alerter, alertFor, type Alert, type Severity } from './alerts.js';
export { EventLog } from './events.js';
export { createLogger, type Logger } from './log.js';
export { Metrics } from './metrics.js';
export { LogRing } from './log-ring.js';
export { NO_INSTANCE, RecentTraffic, type RecentRequest, type TrafficReport, type TrafficSecond } from './traffic.js';
