import { pino, type Logger } from 'pino';

export type { Logger };

/** JSON logs on stdout; `UNDERSTUDY_LOG_PRETTY` is not offered: pipe to `pino-pretty` for that. */
export function createLogger(level: string): Logger {
  return pino({ level, base: { app: 'understudy' }, timestamp: pino.stdTimeFunctions.isoTime });
}
