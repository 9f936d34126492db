import { pino, type Logger } from 'pino';
import type { LogRing } from './log-ring.js';

export type { Logger };

/**
 * JSON logs on stdout; `UNDERSTUDY_LOG_PRETTY` is not offered: pipe to `pino-pretty` for that.
 * With a ring, the same lines are also kept in memory for the dashboard.
 */
export function createLogger(level: string, ring?: LogRing): Logger {
  const options = { level, base: { app: 'understudy' }, timestamp: pino.stdTimeFunctions.isoTime };
  if (!ring) return pino(options);
  return pino(options, pino.multistream([{ level: level as pino.Level, stream: pino.destination(1) }, { level: level as pino.Level, stream: ring }]));
}
