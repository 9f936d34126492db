import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/index.js';
import { classifyStatus, decideRetry, retryAfterMs, type FailedAttempt, type RetryInput } from '../../src/proxy/index.js';

/** The shipped defaults: most users change nothing, so the table is about them. */
const defaults = parseConfig('services:\n  llm:\n    route: { listen: 8000 }\n    instances:\n      a: { tier: primary, url: "http://127.0.0.1:1" }\n', '/u.yaml')
  .services[0]!.retry;

const A = 'primary';
const B = 'hot';

function decide(history: FailedAttempt[], over: Partial<RetryInput> = {}, config = defaults) {
  return decideRetry({ history, others: [B], larger: false, remainingMs: 1_800_000, resendable: true, ...over }, config);
}

const on = (instance: string, cls: FailedAttempt['class'], extra: Partial<FailedAttempt> = {}): FailedAttempt => ({ instance, class: cls, ...extra });
const s500 = (instance = A) => on(instance, 'server-error', { status: 500 });
const s503 = (instance = A) => on(instance, 'server-error', { status: 503 });
const s429 = (instance = A, retryAfterMs?: number) => on(instance, 'rate-limited', { status: 429, ...(retryAfterMs === undefined ? {} : { retryAfterMs }) });

describe('the retry policy with the shipped defaults', () => {
  it.each([
    ['a refused connection goes elsewhere (no work was done)', [on(A, 'refused')], {}, 'elsewhere'],
    ['a broken connection goes elsewhere', [on(A, 'broken')], {}, 'elsewhere'],
    ['a 500 once is tried once more on the same instance', [s500()], {}, 'same'],
    ['a second 500 there goes elsewhere', [s500(), s500()], {}, 'elsewhere'],
    ['a 503 goes elsewhere at once (the instance says it cannot serve)', [s503()], {}, 'elsewhere'],
    ['a 500 on the last attempt is passed on as it is', [s500(), s500(), s500(B)], {}, 'pass'],
    ['a 500 with nowhere else is tried on the same instance', [s500()], { others: [] }, 'same'],
    ['a 429 with Retry-After within maxWait waits it out on the same instance', [s429(A, 1000)], {}, 'same'],
    ['a 429 asking for longer than maxWait goes to the ready standby', [s429(A, 30_000)], {}, 'elsewhere'],
    ['a 429 asking for longer, with no standby, waits it out', [s429(A, 30_000)], { others: [] }, 'same'],
    ['a 429 whose wait would pass timeouts.total is passed on', [s429(A, 30_000)], { others: [], remainingMs: 10_000 }, 'pass'],
    ['a 429 without Retry-After backs off on the same instance', [s429()], {}, 'same'],
    ['three 429s without Retry-After go elsewhere', [s429(), s429(), s429()], {}, 'elsewhere'],
    ['429s from every instance are passed on', [s429(), s429(), s429(), s429(B), s429(B), s429(B)], { others: [A] }, 'pass'],
    ['a context-length error goes to a larger window when there is one', [on(A, 'context-length', { status: 400 })], { larger: true }, 'elsewhere'],
    ['a context-length error is passed on when there is none', [on(A, 'context-length', { status: 400 })], {}, 'pass'],
    ['a client error is passed on at once', [on(A, 'client-error', { status: 400 })], {}, 'pass'],
    ['a first timeout goes elsewhere', [on(A, 'timeout')], {}, 'elsewhere'],
    ['a second timeout fails (retry.afterTimeout 1)', [on(A, 'timeout'), on(B, 'timeout')], { others: [A] }, 'fail'],
    ['a timeout with nowhere else fails: the same slow instance is not asked again', [on(A, 'timeout')], { others: [] }, 'fail'],
    ['a stream that began with an error goes elsewhere', [on(A, 'server-error')], {}, 'elsewhere'],
    ['an instance that cannot take a continuation: the next one', [on(A, 'cannot-take')], {}, 'elsewhere'],
    ['no other can take it: give up', [on(A, 'cannot-take')], { others: [] }, 'fail'],
    ['a body that streamed through once is never sent again', [on(A, 'broken')], { resendable: false }, 'fail'],
    ['an answer to a body sent once is passed on', [s500()], { resendable: false }, 'pass'],
    ['a context-length error for a body sent once is passed on, not sent elsewhere empty', [on(A, 'context-length', { status: 400 })], { resendable: false, larger: true }, 'pass'],
  ] as const)('%s', (_name, history, over, action) => {
    expect(decide([...history], over).action).toBe(action);
  });

  it('waits what Retry-After asks, and backs off 250 ms, then 500 ms, without it', () => {
    expect(decide([s429(A, 1000)])).toMatchObject({ action: 'same', delayMs: 1000 });
    expect(decide([s429()])).toMatchObject({ action: 'same', delayMs: 250 });
    expect(decide([s429(), s429()])).toMatchObject({ action: 'same', delayMs: 500 });
  });

  it('refused connections do not use up retry.attempts, up to ten', () => {
    const refused = Array.from({ length: 10 }, (_, i) => on(`i${i}`, 'refused'));
    expect(decide([s500(), on(B, 'broken'), ...refused]).action).toBe('elsewhere');
    expect(decide([...refused, on('x', 'refused')]).action).toBe('fail');
  });

  it('tries a 500 on the same instance only when a move elsewhere stays possible after it', () => {
    const twoAttempts = { ...defaults, attempts: 2 };
    expect(decide([s500()], {}, twoAttempts).action).toBe('elsewhere');
    expect(decide([s500()], { others: [] }, twoAttempts).action).toBe('same');
  });

  it('follows the configuration: statuses, sameInstance, afterTimeout', () => {
    expect(decide([s500()], {}, { ...defaults, statuses: [502] }).action).toBe('pass');
    expect(decide([s500()], {}, { ...defaults, sameInstance: { statuses: [500], times: 0 } }).action).toBe('elsewhere');
    expect(decide([on(A, 'timeout')], {}, { ...defaults, afterTimeout: 0 }).action).toBe('fail');
    expect(decide([s429()], {}, { ...defaults, statuses: [500] }).action).toBe('pass');
  });
});

describe('status classes', () => {
  it.each([
    [200, undefined],
    [400, 'client-error'],
    [401, 'client-error'],
    [404, 'client-error'],
    [422, 'client-error'],
    [408, 'server-error'],
    [429, 'rate-limited'],
    [500, 'server-error'],
    [503, 'server-error'],
  ] as const)('%i is %s', (status, cls) => {
    expect(classifyStatus(status)).toBe(cls);
  });

  it('reads Retry-After as seconds or an HTTP date', () => {
    const now = Date.parse('2026-12-05T12:00:00Z');
    expect(retryAfterMs('2', now)).toBe(2000);
    expect(retryAfterMs('Sat, 05 Dec 2026 12:00:03 GMT', now)).toBe(3000);
    expect(retryAfterMs('Sat, 05 Dec 2026 11:00:00 GMT', now)).toBe(0);
    expect(retryAfterMs('soon', now)).toBeUndefined();
    expect(retryAfterMs(undefined, now)).toBeUndefined();
  });
});

describe('bounds', () => {
  it('a request that meets free failures in turn (context length here, 429 there) ends', () => {
    const history: FailedAttempt[] = [];
    let decision = decide([on(A, 'context-length', { status: 400 })], { larger: true });
    for (let i = 0; i < 100 && decision.action === 'elsewhere'; i++) {
      history.push(i % 2 === 0 ? on(A, 'context-length', { status: 400 }) : s429(B, 5000));
      decision = decide(history, { larger: true, others: [i % 2 === 0 ? B : A] });
    }
    expect(decision.action).not.toBe('elsewhere');
    expect(history.length).toBeLessThanOrEqual(defaults.attempts + 20);
  });
});
