import type { RetentionConfig } from '../config/index.js';
import { BackupError } from './errors.js';

export interface RetentionCandidate {
  id: string;
  service: string;
  /** Epoch ms. */
  createdAt: number;
  knownGood: boolean;
}

export interface RetentionOptions {
  /** IANA time zone whose calendar days and ISO weeks count. Default: this process's local zone. */
  timeZone?: string;
  /** A service's own policy instead of the shared one. */
  perService?: ReadonlyMap<string, RetentionConfig>;
}

const formatters = new Map<string, Intl.DateTimeFormat>();

function formatter(timeZone: string | undefined): Intl.DateTimeFormat {
  const key = timeZone ?? '';
  let f = formatters.get(key);
  if (!f) {
    try {
      f = new Intl.DateTimeFormat('en-US', { timeZone, year: 'numeric', month: 'numeric', day: 'numeric', hourCycle: 'h23' });
    } catch (error) {
      throw new BackupError('INVALID_INPUT', `unknown time zone ${JSON.stringify(timeZone)} for retention`, {}, { cause: error });
    }
    formatters.set(key, f);
  }
  return f;
}

/** The local calendar date of an instant, as days since 1970-01-01 (so weeks can be counted). */
function localDay(ms: number, timeZone: string | undefined): number {
  const parts = formatter(timeZone).formatToParts(new Date(ms));
  const get = (type: string) => Number(parts.find((p) => p.type === type)!.value);
  return Date.UTC(get('year'), get('month') - 1, get('day')) / 86_400_000;
}

/** ISO 8601 week of a day number: weeks start on Monday; week 1 holds the year's first Thursday. */
function isoWeek(day: number): string {
  const weekday = (new Date(day * 86_400_000).getUTCDay() + 6) % 7; // Monday 0
  const thursday = day - weekday + 3;
  const year = new Date(thursday * 86_400_000).getUTCFullYear();
  const week = Math.floor((thursday - Date.UTC(year, 0, 1) / 86_400_000) / 7) + 1;
  return `${year}-W${week}`;
}

/**
 * Which snapshots a retention policy keeps, per service: the `last` newest; the newest of each of
 * the `daily` most recent days that have one; the newest of each of the `weekly` most recent ISO
 * weeks that have one; and always the newest known-good one. Days and weeks are local to
 * `timeZone`. Pure: no clock, no I/O.
 */
export function selectRetained(snapshots: readonly RetentionCandidate[], policy: RetentionConfig, options: RetentionOptions = {}): Set<string> {
  const byService = new Map<string, RetentionCandidate[]>();
  for (const s of snapshots) {
    const list = byService.get(s.service) ?? [];
    list.push(s);
    byService.set(s.service, list);
  }
  const kept = new Set<string>();
  for (const [service, list] of byService) {
    const { last, daily, weekly } = options.perService?.get(service) ?? policy;
    list.sort((a, b) => b.createdAt - a.createdAt || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
    const days = new Set<number>();
    const weeks = new Set<string>();
    let knownGood = false;
    list.forEach((s, i) => {
      if (i < last) kept.add(s.id);
      const day = localDay(s.createdAt, options.timeZone);
      if (!days.has(day)) {
        days.add(day);
        if (days.size <= daily) kept.add(s.id);
      }
      const week = isoWeek(day);
      if (!weeks.has(week)) {
        weeks.add(week);
        if (weeks.size <= weekly) kept.add(s.id);
      }
      if (s.knownGood && !knownGood) {
        knownGood = true;
        kept.add(s.id);
      }
    });
  }
  return kept;
}
