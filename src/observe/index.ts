export { EventLog } from './events.js';
export { createLogger, type Logger } from './log.js';
export { Metrics } from './metrics.js';
