import type { ServiceConfig } from '../config/index.js';

/**
 * The one retry policy of the data plane: a pure function from what happened to a
 * request so far to what to do next. The attempt loop (`exchange`) and the job runner
 * both ask it; neither keeps counters of its own. See docs/configuration.md#retry.
 */

/** What an attempt's failure means, read from how it failed and what the instance answered. */
export type FailureClass =
  /** Nothing listened (refused, unreachable): no byte reached a model, so no work was done. */
  | 'refused'
  /** The connection broke before an answer, or the instance was declared down under it. */
  | 'broken'
  /** No response head within timeouts.firstByte, or no first token within timeouts.firstToken. */
  | 'timeout'
  /** A 5xx answer, or a 200 stream whose first event is an error. */
  | 'server-error'
  /** 429: the instance is busy, not broken. */
  | 'rate-limited'
  /** The prompt does not fit this instance's context window (retry.contextLength). */
  | 'context-length'
  /** Any other 4xx: the request is at fault; another instance would answer the same. */
  | 'client-error'
  /** This instance cannot take this request (a continuation it cannot do): says nothing of its health. */
  | 'cannot-take'
  /** Anything else (an invalid head, a bug): not retried. */
  | 'other';

export interface FailedAttempt {
  instance: string;
  class: FailureClass;
  /** The answer's status, when there was one. */
  status?: number;
  /** What the answer's Retry-After asked for, in ms. */
  retryAfterMs?: number;
}

export interface RetryInput {
  /** The attempts of this request that failed, oldest first; the last is the one to decide on. */
  history: readonly FailedAttempt[];
  /** Instances other than the last one's that could take the request now, best first. */
  others: readonly string[];
  /** A routable instance declares a larger context window than the last one. */
  larger: boolean;
  /** Time left before timeouts.total. */
  remainingMs: number;
  /** The request body is held and can be sent again. */
  resendable: boolean;
}

export type RetryDecision =
  /** Try the same instance again after `delayMs`. */
  | { action: 'same'; delayMs: number; reason: string }
  /** Try another instance (the best one left; `larger`: one with a larger context window). */
  | { action: 'elsewhere'; larger?: boolean; reason: string }
  /** Pass the instance's answer to the client as it is. */
  | { action: 'pass'; reason: string }
  /** Give up: the gateway answers with its own error. */
  | { action: 'fail'; reason: string };

export type RetryConfig = ServiceConfig['retry'];

/** Refused connections one request may meet: each takes an instance out, so this only bounds a flapping fleet. */
export const MAX_REFUSED = 10;

/** Classes that did no work on a model, so they do not use up retry.attempts. */
const FREE: ReadonlySet<FailureClass> = new Set(['refused', 'cannot-take', 'rate-limited', 'context-length']);

export function decideRetry(input: RetryInput, config: RetryConfig): RetryDecision {
  const { history } = input;
  const elsewhere = input.others.length > 0;
  const last = history[history.length - 1];
  if (!last) throw new Error('decideRetry needs the failed attempt');
  const counted = history.filter((a) => !FREE.has(a.class)).length;
  const left = config.attempts - counted;
  const answered = last.status !== undefined;
  const giveUp = (reason: string): RetryDecision => (answered ? { action: 'pass', reason } : { action: 'fail', reason });
  if (!input.resendable) return giveUp('the request body streamed through once and cannot be sent again');
  // Free classes do not use up attempts; this bounds a request that meets them in turn (a 429 here, a context-length error there).
  if (history.length >= config.attempts + MAX_REFUSED * 2) return giveUp(`${history.length} tries`);

  switch (last.class) {
    case 'refused': {
      const refused = history.filter((a) => a.class === 'refused').length;
      return refused <= MAX_REFUSED ? { action: 'elsewhere', reason: 'connection refused' } : giveUp(`${refused} refused connections`);
    }
    case 'cannot-take': {
      const cannot = history.filter((a) => a.class === 'cannot-take').length;
      if (!elsewhere || cannot > MAX_REFUSED) return giveUp('no other instance can take it');
      return { action: 'elsewhere', reason: `${last.instance} cannot take it` };
    }
    case 'broken':
      return left > 0 ? { action: 'elsewhere', reason: 'the connection broke' } : giveUp(`retry.attempts (${config.attempts}) used`);
    case 'timeout': {
      const timeouts = history.filter((a) => a.class === 'timeout').length;
      if (timeouts > config.afterTimeout) return giveUp(`retry.afterTimeout (${config.afterTimeout}) used`);
      if (!elsewhere) return giveUp('no other instance is ready');
      return left > 0 ? { action: 'elsewhere', reason: 'timeout' } : giveUp(`retry.attempts (${config.attempts}) used`);
    }
    case 'server-error': {
      const status = last.status;
      if (status !== undefined && !config.statuses.includes(status)) return { action: 'pass', reason: `${status} is not in retry.statuses` };
      if (left <= 0) return giveUp(`retry.attempts (${config.attempts}) used`);
      const same = config.sameInstance;
      const sameTries = trailingOn(history, last.instance, 'server-error');
      // Once more here only while a move elsewhere stays possible after it (or there is nowhere else).
      if (status !== undefined && same.statuses.includes(status) && sameTries <= same.times && (left >= 2 || !elsewhere)) {
        return { action: 'same', delayMs: 0, reason: `${status} once: retry.sameInstance` };
      }
      return { action: 'elsewhere', reason: status === undefined ? 'the stream began with an error' : `status ${status}` };
    }
    case 'rate-limited': {
      if (!config.statuses.includes(429)) return { action: 'pass', reason: '429 is not in retry.statuses' };
      const { maxWait, retries, backoff } = config.rateLimited;
      const tries = trailingOn(history, last.instance, 'rate-limited');
      // Moving is worth it only to an instance that has not said it is busy too.
      const busy = new Set(history.filter((a) => a.class === 'rate-limited').map((a) => a.instance));
      const elsewhere = input.others.some((name) => !busy.has(name));
      const asked = last.retryAfterMs;
      const wait = asked ?? backoff * 2 ** (tries - 1);
      const canWait = tries <= retries && wait < input.remainingMs;
      if (elsewhere && (asked !== undefined ? asked > maxWait : tries > retries)) {
        return { action: 'elsewhere', reason: asked !== undefined ? `429 asks to wait ${asked}ms, more than retry.rateLimited.maxWait` : `429 ${tries} times` };
      }
      if (canWait) return { action: 'same', delayMs: wait, reason: asked !== undefined ? `429: Retry-After ${asked}ms` : `429: backoff ${wait}ms` };
      if (elsewhere) return { action: 'elsewhere', reason: `429 ${tries} times` };
      return { action: 'pass', reason: wait >= input.remainingMs ? 'the wait would pass timeouts.total' : 'retry.rateLimited.retries used' };
    }
    case 'context-length':
      return input.larger ? { action: 'elsewhere', larger: true, reason: 'context length: an instance with a larger window' } : { action: 'pass', reason: 'no instance with a larger context window' };
    case 'client-error':
      return { action: 'pass', reason: 'a client error: another instance would answer the same' };
    case 'other':
      return giveUp('not retried');
  }
}

/** How many of the attempts at the end of `history` were on `instance` and failed as `kind`, in a row. */
function trailingOn(history: readonly FailedAttempt[], instance: string, kind: FailureClass): number {
  let n = 0;
  for (let i = history.length - 1; i >= 0; i--) {
    const attempt = history[i]!;
    if (attempt.instance !== instance || attempt.class !== kind) break;
    n += 1;
  }
  return n;
}

/**
 * What an answer's status means, before its body is read: `context-length` needs the
 * body, so a status in retry.contextLength.statuses comes back as `client-error` here and
 * `mayBeContextLength` says to look (see `isContextLength`).
 */
export function classifyStatus(status: number): FailureClass | undefined {
  if (status < 400) return undefined;
  if (status === 429) return 'rate-limited';
  if (status >= 500) return 'server-error';
  // 408 (the instance timed out reading) and 425 (too early) ask for a retry, like a 5xx.
  if (status === 408 || status === 425) return 'server-error';
  return 'client-error';
}

export function mayBeContextLength(status: number, config: RetryConfig): boolean {
  return config.contextLength.statuses.includes(status);
}

const patterns = new Map<string, RegExp>();

/** Whether an error body says the prompt does not fit the model's context window. */
export function isContextLength(body: string, config: RetryConfig): boolean {
  let pattern = patterns.get(config.contextLength.match);
  if (!pattern) {
    pattern = new RegExp(config.contextLength.match, 'i');
    patterns.set(config.contextLength.match, pattern);
  }
  return pattern.test(body);
}

/** Retry-After in ms: delta-seconds or an HTTP date (RFC 9110 §10.2.3); undefined when absent or unreadable. */
export function retryAfterMs(value: string | string[] | undefined, now: number): number | undefined {
  const text = Array.isArray(value) ? value[0] : value;
  if (text === undefined) return undefined;
  if (/^\s*\d+\s*$/.test(text)) return Number(text) * 1000;
  const date = Date.parse(text);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}
