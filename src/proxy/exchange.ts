import { Readable } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import { errors as undiciErrors, type Dispatcher } from 'undici';
import type { AttemptOutcome } from '../health/index.js';
import { InstanceDownError, ProxyError } from './errors.js';
import {
  classifyStatus,
  decideRetry,
  isContextLength,
  mayBeContextLength,
  retryAfterMs,
  type FailedAttempt,
  type FailureClass,
  type RetryDecision,
} from './retry-policy.js';
import type { Attempt, Upstreams, Want } from './types.js';

type Body = Buffer | Readable | null;

/** What the attempt loop tells its sender about, for metrics. */
export interface ExchangeHooks {
  onAttempt(service: string, instance: string, outcome: AttemptOutcome): void;
  onRetry(service: string, reason: string): void;
}

/** A request on its way to a service: a client's, or an item of a job. */
export interface Outgoing {
  method: string;
  path: string;
  headers: Record<string, string | string[]>;
  body: Body;
  /** Whether the body can be sent again (it is held in memory). */
  retryable: boolean;
  /** The JSON body's model, when it names one: see Want.model. */
  model?: string | undefined;
}

/** Why the sender cut a request short, read when its signal aborts: `client` left, or its `total` time passed. */
export interface Ended {
  client: boolean;
  total: boolean;
}

/** What a vetted answer's stream has shown so far: see resume.ts. */
export interface StreamHead {
  readonly kind: 'generation' | 'segments';
}

/** What `vet` says of an answer with a 2xx head. */
export type Vetted = { ok: true; stream?: StreamHead } | { ok: false; class: FailureClass; outcome: AttemptOutcome; detail: string };

export interface ExchangeOptions {
  /** Instances the request may not go to; those found unable to take it are added (so a caller's later exchange skips them too). */
  exclude?: Set<string>;
  /** Instances to go to only when no other can take it (as if tried already): the one whose stream broke. */
  avoid?: readonly string[];
  /** The request for one attempt, when it differs by instance (a continuation); undefined: this instance cannot take it. */
  prepare?(attempt: Attempt): Promise<Pick<Outgoing, 'body' | 'headers'> | undefined>;
  /**
   * Looks at a 2xx answer before it is taken (a stream is held until its first token):
   * a failure here is retried like any other while nothing has reached the client.
   */
  vet?(response: Dispatcher.ResponseData, attempt: Attempt, sentAt: number): Promise<Vetted>;
  /** Longest wait for the response head, when shorter than timeouts.firstByte (a stream's first token). */
  headersTimeout?: number;
  /** performance.now() at which the sender gives up (its total timeout), for waits the policy asks for. */
  deadline?: number;
  /**
   * A continuation of a stream the client is reading: an answer that is not a success
   * is never passed on (a 4xx means this instance cannot take it: the next is tried).
   */
  continuation?: boolean;
  /** Longest wait in the queue, when shorter than queue.timeout (see Want.queueFor). */
  queueFor?: number;
}

/** The answer that will be passed on, or why there is none. */
export type Answer =
  | {
      ok: true;
      instance: string;
      status: number;
      headers: Record<string, string | string[] | undefined>;
      body: Readable;
      /** Attempts made, this one included. */
      attempts: number;
      /** What `vet` read of a stream it held until its first token. */
      stream?: StreamHead;
      /**
       * Call once the body is consumed (or failed): feeds passive health and the attempt
       * metrics, and says how the attempt ended. `outcome` overrides the one read from the error.
       */
      finish(error?: Error, outcome?: AttemptOutcome): [AttemptOutcome, string];
    }
  /** `error` null: the sender left (its signal aborted with ended.client). */
  | { ok: false; error: ProxyError | null; instance: string | null; attempts: number };

/** Bytes of an error answer read to tell a context-length error from another client error. */
const ERROR_BODY_LIMIT = 64 * 1024;
/** Bytes of such an answer kept to pass it on whole. */
const ERROR_BODY_KEEP = 1024 * 1024;

/**
 * Sends a request to the service, retrying (per the service's retry policy, see
 * retry-policy.ts) until an answer may be passed on. Waits in the service's queue while
 * no instance is ready. The caller consumes the body and then calls `finish`.
 */
export async function exchange(
  upstreams: Upstreams,
  outgoing: Outgoing,
  requestSignal: AbortSignal,
  ended: Ended,
  hooks: ExchangeHooks,
  options: ExchangeOptions = {},
): Promise<Answer> {
  const config = upstreams.config;
  const method = outgoing.method as Dispatcher.HttpMethod;
  const tried = new Set<string>(options.avoid);
  const exclude = options.exclude ?? new Set<string>();
  const history: FailedAttempt[] = [];
  const deadline = options.deadline ?? Infinity;
  const headersTimeout = Math.min(config.timeouts.firstByte, options.headersTimeout ?? Infinity);
  const queueFor = options.queueFor;
  /** The largest context window that was too small for this request: later attempts need a larger one. */
  let tooSmall: number | undefined;
  let next: Want = { model: outgoing.model, exclude, queueFor };

  /** The policy's word on the attempt just added to `history`. */
  const decide = (instance: string, contextWindow: number | undefined): RetryDecision => {
    const last = history[history.length - 1]!;
    if (last.class === 'context-length') tooSmall = Math.max(tooSmall ?? 0, contextWindow ?? 0);
    const larger = last.class === 'context-length' && upstreams.others(instance, { model: outgoing.model, exclude, contextAbove: tooSmall }).length > 0;
    return decideRetry(
      {
        history,
        others: upstreams.others(instance, { model: outgoing.model, exclude, contextAbove: tooSmall }),
        larger,
        // A continuation's client is reading a stream: no wait (a Retry-After) longer than a stream may pause.
        remainingMs: Math.min(deadline - performance.now(), options.continuation ? (queueFor ?? Infinity) : Infinity),
        resendable: outgoing.retryable,
      },
      config.retry,
    );
  };
  /** Sets up the next attempt as the policy decided; false when it gives up. */
  const follow = (decision: RetryDecision, attempt: Attempt): boolean => {
    if (decision.action === 'pass' || decision.action === 'fail') return false;
    // A small set of words, not the decision's: it is a metric label.
    hooks.onRetry(config.name, decision.action === 'same' ? `${label} (same instance)` : label);
    next =
      decision.action === 'same'
        ? { model: outgoing.model, exclude, queueFor, same: attempt.instance, contextAbove: tooSmall }
        : { model: outgoing.model, exclude, queueFor, contextAbove: tooSmall };
    pause = decision.action === 'same' ? decision.delayMs : 0;
    return true;
  };
  let pause = 0;
  /** What the last failure was, for the retries metric: an attempt outcome, or `status N`. */
  let label = '';

  for (;;) {
    const n = history.length + 1;
    if (pause > 0) {
      try {
        await delay(pause, undefined, { signal: requestSignal });
      } catch {
        if (ended.client) return { ok: false, error: null, instance: null, attempts: n - 1 };
        return { ok: false, error: asProxyError(requestSignal.reason, config.name), instance: null, attempts: n - 1 };
      }
    }
    let attempt: Attempt;
    try {
      attempt = await upstreams.acquire(tried, requestSignal, next);
    } catch (error) {
      if (ended.client) return { ok: false, error: null, instance: null, attempts: n - 1 };
      // Nothing can take the request now: the queue's 503 says why, better than the last attempt's error.
      return { ok: false, error: asProxyError(error, config.name), instance: null, attempts: n - 1 };
    }
    tried.add(attempt.instance);

    let request: Pick<Outgoing, 'body' | 'headers'> = outgoing;
    if (options.prepare) {
      let prepared: Pick<Outgoing, 'body' | 'headers'> | undefined;
      let why = 'cannot take this request';
      try {
        prepared = await options.prepare(attempt);
      } catch (error) {
        why = `could not prepare the request: ${(error as Error).message}`;
      }
      if (!prepared) {
        attempt.finish('bad-request', why);
        exclude.add(attempt.instance);
        history.push({ instance: attempt.instance, class: 'cannot-take' });
        label = 'cannot-take';
        if (follow(decide(attempt.instance, attempt.contextWindow), attempt)) continue;
        return { ok: false, error: cannotTake(config.name, n), instance: attempt.instance, attempts: n };
      }
      request = prepared;
    }

    const link = linkAbort(requestSignal, attempt);
    const sent = performance.now();
    let response: Dispatcher.ResponseData;
    try {
      if (attempt.fault?.kind === 'slow') {
        // Held as a slow model is: past the head timeout it is a timeout, as it would be for real.
        await delay(Math.min(attempt.fault.delayMs, headersTimeout), undefined, { signal: attempt.signal });
        if (attempt.fault.delayMs > headersTimeout) throw new undiciErrors.HeadersTimeoutError();
      }
      response =
        attempt.fault?.kind === 'error'
          ? injectedError(attempt.fault.status, attempt.instance)
          : await attempt.dispatcher.request({
              path: outgoing.path,
              method,
              headers: request.headers,
              body: request.body,
              signal: attempt.signal,
              headersTimeout,
              bodyTimeout: config.timeouts.idle,
            });
    } catch (error) {
      link.dispose();
      const [outcome, detail] = classify(error, ended, attempt.signal);
      attempt.finish(outcome, detail);
      hooks.onAttempt(config.name, attempt.instance, outcome);
      if (outcome === 'client-abort') return { ok: false, error: null, instance: attempt.instance, attempts: n };
      // The request's own end (timeouts.total) or its own fault (a body past limits.body) is never retried.
      if (error instanceof ProxyError) return { ok: false, error, instance: attempt.instance, attempts: n };
      if (ended.total) return { ok: false, error: failureFor('timeout', detail, attempt.instance, config.name, n), instance: attempt.instance, attempts: n };
      history.push({ instance: attempt.instance, class: classOf(outcome) });
      label = outcome;
      if (follow(decide(attempt.instance, attempt.contextWindow), attempt)) continue;
      return { ok: false, error: failureFor(outcome, detail, attempt.instance, config.name, n), instance: attempt.instance, attempts: n };
    }

    attempt.firstByte(performance.now() - sent);
    const status = response.statusCode;
    let body: Readable = response.body;
    let failure = classifyStatus(status);
    if (failure === 'client-error' && mayBeContextLength(status, config.retry)) {
      const { kept, size } = await readSome(response.body, ERROR_BODY_KEEP).catch(() => ({ kept: Buffer.alloc(0), size: 0 }));
      if (isContextLength(kept.subarray(0, ERROR_BODY_LIMIT).toString('utf8'), config.retry)) failure = 'context-length';
      // Passed on as read; an error body too large to keep whole must not claim its full length.
      if (size > kept.length) delete response.headers['content-length'];
      body = Readable.from([kept]);
    }
    let stream: StreamHead | undefined;
    if (failure !== undefined) {
      history.push({
        instance: attempt.instance,
        class: failure,
        status,
        retryAfterMs: retryAfterMs(response.headers['retry-after'], Date.now()),
      });
      label = `status ${status}`;
      let decision = decide(attempt.instance, attempt.contextWindow);
      if (decision.action === 'pass' && options.continuation) {
        if (status < 500) {
          // A standby that refuses the continuation (it cannot take a prefill) is not the final word.
          exclude.add(attempt.instance);
          history[history.length - 1] = { instance: attempt.instance, class: 'cannot-take', status };
          decision = decide(attempt.instance, attempt.contextWindow);
        }
        if (decision.action === 'pass') decision = { action: 'fail', reason: `answered ${status}` };
      }
      if (decision.action !== 'pass') {
        // A 429 (busy) or a refused continuation says nothing of the instance's or the model's health.
        const outcome: AttemptOutcome = status >= 500 ? 'status' : status === 429 || options.continuation ? 'bad-request' : 'ok';
        attempt.finish(outcome, `answered ${status}`);
        hooks.onAttempt(config.name, attempt.instance, 'status');
        link.dispose();
        response.body.dump().catch(() => {});
        if (follow(decision, attempt)) continue;
        return { ok: false, error: failureFor('status', `answered ${status}`, attempt.instance, config.name, n), instance: attempt.instance, attempts: n };
      }
    } else if (options.vet && status < 300) {
      let vetted: Vetted;
      try {
        vetted = await options.vet(response, attempt, sent);
      } catch (error) {
        const [outcome, detail] = classify(error, ended, attempt.signal);
        vetted = { ok: false, class: classOf(outcome), outcome, detail };
      }
      if (!vetted.ok) {
        link.dispose();
        response.body.destroy();
        attempt.finish(vetted.outcome, vetted.detail);
        hooks.onAttempt(config.name, attempt.instance, vetted.outcome);
        if (vetted.outcome === 'client-abort') return { ok: false, error: null, instance: attempt.instance, attempts: n };
        if (ended.total) return { ok: false, error: failureFor('timeout', vetted.detail, attempt.instance, config.name, n), instance: attempt.instance, attempts: n };
        if (vetted.class === 'cannot-take') exclude.add(attempt.instance);
        history.push({ instance: attempt.instance, class: vetted.class });
        label = vetted.class === 'cannot-take' ? 'cannot-take' : vetted.outcome === 'status' ? 'stream error' : vetted.outcome;
        if (follow(decide(attempt.instance, attempt.contextWindow), attempt)) continue;
        const error = vetted.class === 'cannot-take' ? cannotTake(config.name, n) : failureFor(vetted.outcome, vetted.detail, attempt.instance, config.name, n);
        return { ok: false, error, instance: attempt.instance, attempts: n };
      }
      stream = vetted.stream;
    }

    const instance = attempt.instance;
    let finished = false;
    return {
      ok: true,
      instance,
      status,
      headers: response.headers,
      body,
      attempts: n,
      ...(stream ? { stream } : {}),
      finish: (error, forced) => {
        const result: [AttemptOutcome, string] = forced
          ? [forced, error?.message ?? `answered ${status}`]
          : error
            ? classify(error, ended, attempt.signal)
            : [status >= 500 ? 'status' : 'ok', `answered ${status}`];
        if (finished) return result;
        finished = true;
        link.dispose();
        attempt.finish(result[0], error ? `response broke: ${result[1]}` : result[1]);
        hooks.onAttempt(config.name, instance, result[0]);
        return result;
      },
    };
  }
}

/** The policy's class of an attempt that ended without an answer. */
function classOf(outcome: AttemptOutcome): FailureClass {
  switch (outcome) {
    case 'connect':
      return 'refused';
    case 'reset':
    case 'instance-down':
      return 'broken';
    case 'timeout':
    case 'stalled':
      return 'timeout';
    case 'status':
      return 'server-error';
    default:
      return 'other';
  }
}

/** Up to `limit` bytes of a body; the rest is let go. */
async function readSome(body: Readable, limit: number): Promise<{ kept: Buffer; size: number }> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    if (size < limit) chunks.push(chunk.subarray(0, limit - size));
    size += chunk.length;
  }
  return { kept: Buffer.concat(chunks), size };
}

/** The answer of an instance a drill makes fail: the gateway's own, the instance is not asked. */
function injectedError(status: number, instance: string): Dispatcher.ResponseData {
  const text = JSON.stringify({ error: { code: 'DRILL_FAULT', message: `${instance} answers ${status}: a drill injected this fault` } });
  const body = Object.assign(Readable.from([Buffer.from(text)]), { dump: async () => {} });
  return {
    statusCode: status,
    headers: { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)) },
    body,
    trailers: {},
    opaque: null,
    context: {},
  } as unknown as Dispatcher.ResponseData;
}

const CONNECT_CODES = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'UND_ERR_CONNECT_TIMEOUT']);
const RESET_CODES = new Set(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED']);

/** Aborts the attempt when the request is aborted; dispose() unhooks it once the attempt is over. */
function linkAbort(request: AbortSignal, attempt: Attempt): { dispose(): void } {
  const onAbort = () => attempt.abort(request.reason as Error);
  if (request.aborted) onAbort();
  else request.addEventListener('abort', onAbort, { once: true });
  return { dispose: () => request.removeEventListener('abort', onAbort) };
}

/** How an attempt ended, from the error it ended with. */
export function classify(error: unknown, ended: Ended, instance: AbortSignal): [AttemptOutcome, string] {
  if (ended.client) return ['client-abort', 'the client closed the connection'];
  // Before the instance check: the request's own timeout also aborts the attempt's signal.
  if (ended.total) return ['timeout', 'the total timeout passed'];
  if (error instanceof FirstTokenTimeout) return ['timeout', error.message];
  if (instance.aborted) return ['instance-down', (instance.reason as Error).message];
  const err = error as { code?: string; message?: string; cause?: { code?: string } };
  const code = err.code === 'UND_ERR_SOCKET' && err.cause?.code ? err.cause.code : err.code;
  if (error instanceof undiciErrors.HeadersTimeoutError) return ['timeout', 'no response head within timeouts.firstByte'];
  if (error instanceof undiciErrors.BodyTimeoutError) return ['stalled', 'the response stalled longer than timeouts.idle'];
  if (code !== undefined && CONNECT_CODES.has(code)) return ['connect', `connect ${code}`];
  if (code !== undefined && RESET_CODES.has(code)) return ['reset', `${code}: ${err.message ?? ''}`.trim()];
  if (error instanceof ProxyError) return ['bad-request', error.message];
  return ['error', err.message ?? String(error)];
}

/** A stream's first token did not come within timeouts.firstToken. */
export class FirstTokenTimeout extends Error {
  override name = 'FirstTokenTimeout';
}

function failureFor(outcome: AttemptOutcome, detail: string, instance: string, service: string, attempts: number): ProxyError {
  if (outcome === 'timeout' || outcome === 'stalled') {
    return new ProxyError('UPSTREAM_TIMEOUT', 504, `${instance}: ${detail}`, { service, attempts });
  }
  return new ProxyError('UPSTREAM_UNAVAILABLE', 502, `no instance could answer; last: ${instance}: ${detail}`, {
    service,
    attempts,
  });
}

function cannotTake(service: string, attempts: number): ProxyError {
  return new ProxyError('NO_CAPABLE_INSTANCE', 502, 'no ready instance can take this request', { service, attempts });
}

export function asProxyError(error: unknown, service: string): ProxyError {
  if (error instanceof ProxyError) return error;
  if (error instanceof InstanceDownError) return new ProxyError('UPSTREAM_UNAVAILABLE', 502, error.message, { service });
  return new ProxyError('GATEWAY_ERROR', 500, (error as Error).message ?? String(error), { service });
}
