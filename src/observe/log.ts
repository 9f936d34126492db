import { pino, type Logger } from 'pino';
import type { LogRing } from './log-ring.js';

export type { Logger };

/**
 * Logs as JSON lines on stdout, or into `output` (`understudy up` passes pino-pretty's
 * stream on a terminal). With a ring, the same lines, as JSON, are also kept in memory
 * for the dashboard.
 */
export function createLogger(level: string, ring?: LogRing, output: pino.DestinationStream = pino.destination(1)): Logger {
  const options = { level, base: { app: 'understudy' }, timestamp: pino.stdTimeFunctions.isoTime };
  if (!ring) return pino(options, output);
  return pino(options, pino.multistream([{ level: level as pino.Level, stream: output }, { level: level as pino.Level, stream: ring }]));
}
