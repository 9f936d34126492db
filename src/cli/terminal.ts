import type { DestinationStream } from 'pino';
import { PinoPretty } from 'pino-pretty';
import type { ServiceView } from '../controller/index.js';
import type { UnderstudyEvent } from '../core/index.js';
import { eventSummary } from './format.js';

/** How `up` writes its log: JSON lines (for a file, journald, a log shipper) or readable lines for a person. */
export type LogFormat = 'json' | 'pretty';

export const LOG_FORMATS = ['auto', 'json', 'pretty'] as const;

/** `auto` (the default): readable on a terminal, JSON when stdout is a pipe or a file, as pino users expect. */
export function chooseLogFormat(asked: (typeof LOG_FORMATS)[number], stdoutIsTty: boolean): LogFormat {
  if (asked === 'auto') return stdoutIsTty ? 'pretty' : 'json';
  return asked;
}

/** Whether to colour: a terminal that did not ask for none (https://no-color.org). */
export function wantsColour(stdoutIsTty: boolean, env: NodeJS.ProcessEnv = process.env): boolean {
  return stdoutIsTty && env.NO_COLOR === undefined && env.TERM !== 'dumb';
}

/** The line `up` logs once it serves; on a terminal the banner follows it. */
export const UP_MESSAGE = 'understudy is up';

/** Fields every line has, or that a line's message already says. */
const QUIET_FIELDS = new Set(['level', 'time', 'pid', 'hostname', 'app', 'msg', 'event']);

interface LogObject {
  msg?: string;
  event?: UnderstudyEvent;
  err?: { message?: string };
  [field: string]: unknown;
}

/**
 * One readable line per log line, by pino-pretty: the time, the level as a word (in
 * colour on a terminal), and the message. An event is its one-line summary (e.g.
 * "tts  active primary → hot (failover): primary is down"), a request its method,
 * path, status, instance and time; other lines keep their fields as key=value.
 */
export function prettyLogOutput(colour: boolean, destination: number | DestinationStream = 1): DestinationStream {
  return PinoPretty({
    colorize: colour,
    destination: typeof destination === 'number' ? destination : (destination as unknown as NodeJS.WritableStream),
    sync: true,
    translateTime: 'SYS:HH:MM:ss',
    hideObject: true,
    messageFormat: (log: LogObject) => lineFor(log),
  });
}

export function lineFor(log: LogObject): string {
  // The banner that follows says the same, laid out for reading.
  if (log.msg === UP_MESSAGE) return UP_MESSAGE;
  if (log.event) return `${log.event.service}  ${eventSummary(log.event)}: ${log.event.reason}`;
  if (log.msg === 'request' && typeof log.method === 'string') {
    const by = typeof log.instance === 'string' ? ` by ${log.instance}` : '';
    const ms = typeof log.ms === 'number' ? ` in ${Math.round(log.ms)} ms` : '';
    return `${String(log.service)}  ${log.method} ${String(log.path)} → ${String(log.status)}${by}${ms}  [${String(log.requestId)}]`;
  }
  const fields = Object.entries(log)
    .filter(([key, value]) => !QUIET_FIELDS.has(key) && key !== 'err' && value !== undefined)
    .map(([key, value]) => `${key}=${typeof value === 'string' ? value : JSON.stringify(value)}`);
  const error = log.err?.message ? `: ${log.err.message}` : '';
  return `${log.msg ?? ''}${error}${fields.length ? `  ${fields.join(' ')}` : ''}`;
}

export interface Banner {
  version: string;
  gateways: { service: string; url: string }[];
  admin: string;
  dashboard: string;
  tokenFile: string | undefined;
  services: ServiceView[];
}

/** What `up` prints on a terminal once it serves: where to send requests, where to look, who is active. */
export function bannerText(banner: Banner): string {
  const lines = [`Understudy ${banner.version} is up.`, ''];
  const width = Math.max(9, ...banner.services.map((s) => s.name.length));
  for (const { service, url } of banner.gateways) lines.push(`  ${service.padEnd(width)}  ${url}`);
  lines.push(`  ${'admin API'.padEnd(width)}  ${banner.admin}`);
  lines.push(`  ${'dashboard'.padEnd(width)}  ${banner.dashboard}${banner.tokenFile ? `  (token in ${banner.tokenFile})` : ''}`);
  lines.push('');
  for (const service of banner.services) {
    const instances = service.instances.map((i) => {
      const active = service.active === i.name ? ', active' : '';
      return `${i.name} (${i.tier}) ${i.state}${active}`;
    });
    lines.push(`  ${service.name.padEnd(width)}  ${instances.join(' · ')}`);
  }
  lines.push('', 'Changes follow, one line each. Ctrl-C stops Understudy and the instances it started.', '');
  return lines.join('\n');
}
