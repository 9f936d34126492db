import type { IncomingMessage, ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import { errors as undiciErrors, type Dispatcher } from 'undici';
import type { AttemptOutcome } from '../health/index.js';
import { InstanceDownError, ProxyError } from './errors.js';
import { downstreamHeaders, upstreamHeaders } from './headers.js';
import { Idempotency } from './idempotency.js';
import type { Attempt, Upstreams } from './types.js';

/** What the gateway reports about each request, for metrics and access logs. */
export interface RequestReport {
  service: string;
  instance: string | null;
  method: string;
  path: string;
  requestId: string;
  status: number;
  /** ok, error (answered by the gateway), cut (broken after bytes reached the client), client-abort. */
  outcome: 'ok' | 'error' | 'cut' | 'client-abort';
  attempts: number;
  ms: number;
  error?: string;
}

export interface ProxyHooks {
  onRequest(report: RequestReport): void;
  /** A listener failed outside any request (e.g. accept ran out of file descriptors). */
  onError(message: string, error: unknown): void;
  onAttempt(service: string, instance: string, outcome: AttemptOutcome): void;
  onRetry(service: string, reason: string): void;
  /** Set when requests with an Idempotency-Key are to be answered once. */
  idempotency?: Idempotency | undefined;
}

type Body = Buffer | Readable | null;

const RETRYABLE: ReadonlySet<AttemptOutcome> = new Set(['connect', 'reset', 'instance-down']);
/** Refused connections one request may meet before it fails: each takes an instance out, so this only bounds a flapping fleet. */
const MAX_REFUSED = 10;

/**
 * Forwards one request to the service, retrying on another instance while no byte
 * of the response has reached the client. Once the head is sent, a failure cuts
 * the response so the client sees an error, never a clean end.
 */
export async function forward(
  req: IncomingMessage,
  res: ServerResponse,
  upstreams: Upstreams,
  path: string,
  requestId: string,
  hooks: ProxyHooks,
): Promise<void> {
  const config = upstreams.config;
  const report = reporter(hooks, config.name, req, path, requestId);

  // One controller for the whole request, aborted when the client leaves or the total
  // timeout passes. (AbortSignal.any and AbortSignal.timeout cost too much per request on Node 20.)
  const request = new AbortController();
  const requestSignal = request.signal;
  const ended = { client: false, total: false };
  res.once('close', () => {
    if (res.writableFinished || requestSignal.aborted) return;
    ended.client = true;
    request.abort(new ProxyError('CLIENT_GONE', 499, 'the client closed the connection'));
  });
  const totalTimer = setTimeout(() => {
    ended.total = true;
    request.abort(new ProxyError('UPSTREAM_TIMEOUT', 504, `the request took longer than timeouts.total (${config.timeouts.total}ms)`));
  }, config.timeouts.total);
  try {
    const key = hooks.idempotency ? req.headers['idempotency-key'] : undefined;
    const exchange: Exchange = { req, res, upstreams, path, requestId, hooks, requestSignal, ended, report };
    if (typeof key === 'string') await answerOnce(exchange, key, hooks.idempotency!);
    else await attempts(exchange);
  } finally {
    clearTimeout(totalTimer);
  }
}

type Report = (status: number, outcome: RequestReport['outcome'], instance: string | null, attempts: number, error?: string) => void;

/** Reports the request's end to the hooks, timed from now. */
export function reporter(hooks: ProxyHooks, service: string, req: IncomingMessage, path: string, requestId: string): Report {
  const started = performance.now();
  return (status, outcome, instance, attempts, error) =>
    hooks.onRequest({
      service,
      instance,
      method: req.method ?? 'GET',
      path,
      requestId,
      status,
      outcome,
      attempts,
      ms: performance.now() - started,
      ...(error === undefined ? {} : { error }),
    });
}

/** One client request on its way through the gateway. */
interface Exchange {
  req: IncomingMessage;
  res: ServerResponse;
  upstreams: Upstreams;
  path: string;
  requestId: string;
  hooks: ProxyHooks;
  /** Aborted when the client leaves or timeouts.total passes; `ended` says which. */
  requestSignal: AbortSignal;
  ended: Ended;
  report: Report;
  /** The body, when it was read before (to fingerprint it). */
  read?: { body: Body; retryable: boolean };
  /** Keeps a copy of the answer passed on, up to `limit` bytes (for Idempotency-Key repeats). */
  capture?: Capture;
}

interface Capture {
  limit: number;
  answer?: { status: number; headers: Record<string, string | string[]>; body: Buffer };
}

const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,255}$/;

/** A request with an Idempotency-Key: run once, repeats get the same answer. */
async function answerOnce(x: Exchange, key: string, idempotency: Idempotency): Promise<void> {
  const { req, res, upstreams, path, requestId, requestSignal, report } = x;
  const config = upstreams.config;
  const fail = (failure: ProxyError) => {
    respondError(res, failure, requestId);
    report(failure.status, 'error', null, 0, failure.message);
  };
  if (!IDEMPOTENCY_KEY.test(key)) {
    return fail(new ProxyError('BAD_IDEMPOTENCY_KEY', 400, 'Idempotency-Key must be 1 to 255 visible ASCII characters'));
  }
  let read: { body: Body; retryable: boolean };
  try {
    // Held in memory whole: the body is part of what a repeat must match.
    read = await readBody(req, config.limits.body, config.limits.body, requestSignal);
  } catch (error) {
    return fail(asProxyError(error, config.name));
  }
  const method = req.method ?? 'GET';
  const fingerprint = Idempotency.fingerprint(method, path, read.body as Buffer | null);
  let claim;
  try {
    claim = await idempotency.claim(config.name, key, fingerprint);
  } catch (error) {
    return fail(
      new ProxyError('IDEMPOTENCY_UNAVAILABLE', 503, `cannot look up Idempotency-Key: ${(error as Error).message}`, {
        service: config.name,
        retryAfterSeconds: 1,
      }),
    );
  }
  if (claim.kind === 'mismatch') {
    return fail(
      new ProxyError(
        'IDEMPOTENCY_KEY_REUSED',
        422,
        `Idempotency-Key ${JSON.stringify(key)} was already used with a different request (method, path or body); use a new key for a new request`,
        { service: config.name },
      ),
    );
  }
  if (claim.kind === 'replay') {
    const { reply } = claim;
    res.writeHead(reply.status, {
      ...reply.headers,
      'content-length': reply.body.length,
      'x-request-id': requestId,
      'idempotent-replayed': 'true',
    });
    res.end(reply.body);
    const instance = reply.headers['x-understudy-instance'];
    return report(reply.status, 'ok', typeof instance === 'string' ? instance : null, 0);
  }
  const capture: Capture = { limit: idempotency.maxResponse };
  try {
    await attempts({ ...x, read, capture });
  } finally {
    const answer = capture.answer;
    // Only a whole, final answer is kept; 5xx, "try again later" and gateway errors release the key.
    const keep = answer && answer.status < 500 && !TRY_AGAIN.has(answer.status);
    try {
      await claim.finish(keep ? answer : undefined);
    } catch (error) {
      x.hooks.onError(`could not keep the answer for Idempotency-Key ${JSON.stringify(key)}; a repeat will run again`, error);
    }
  }
}

/** Answers that ask the client to try again later: never replayed for a repeat. */
const TRY_AGAIN = new Set([408, 425, 429]);

async function attempts(x: Exchange): Promise<void> {
  const { req, res, upstreams, path, requestId, hooks, requestSignal, ended, report } = x;
  const config = upstreams.config;

  let body: Body;
  let retryable: boolean;
  try {
    ({ body, retryable } = x.read ?? (await readBody(req, config.retry.bodyLimit, config.limits.body, requestSignal)));
  } catch (error) {
    const failure = asProxyError(error, config.name);
    respondError(res, failure, requestId);
    report(failure.status, 'error', null, 0, failure.message);
    return;
  }

  const outgoing: Outgoing = { method: req.method ?? 'GET', path, headers: upstreamHeaders(req, requestId), body, retryable };
  const answer = await exchange(upstreams, outgoing, requestSignal, ended, hooks);
  if (!answer.ok) {
    if (answer.error === null) return report(499, 'client-abort', answer.instance, answer.attempts);
    respondError(res, answer.error, requestId);
    return report(answer.error.status, 'error', answer.instance, answer.attempts, answer.error.message);
  }

  const { status, instance, attempts: n } = answer;
  const responseHeaders = downstreamHeaders(answer.headers);
  responseHeaders['x-request-id'] = requestId;
  responseHeaders['x-understudy-instance'] = instance;
  try {
    res.writeHead(status, responseHeaders);
  } catch (error) {
    // Invalid headers from the instance: nothing was sent yet, so say so cleanly.
    answer.body.destroy();
    answer.finish(new Error(`invalid response head: ${(error as Error).message}`), 'error');
    const failure = new ProxyError('UPSTREAM_INVALID', 502, `${instance} sent an invalid response head`, { service: config.name });
    respondError(res, failure, requestId);
    return report(502, 'error', instance, n, failure.message);
  }
  const capture = x.capture;
  const kept: Buffer[] = [];
  if (capture) {
    let size = 0;
    answer.body.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= capture.limit) kept.push(chunk);
      else kept.length = 0; // too large to keep: let the chunks go now
    });
    answer.body.once('end', () => {
      if (size <= capture.limit) {
        const headers = responseHeaders as Record<string, string | string[]>;
        capture.answer = { status, headers: { ...headers }, body: Buffer.concat(kept, size) };
        delete capture.answer.headers['x-request-id'];
      }
    });
  }
  await new Promise<void>((resolve) => {
    relay(answer.body, res, (error) => {
      const [outcome, detail] = answer.finish(error);
      if (!error) {
        report(status, 'ok', instance, n);
      } else {
        // The client sees a cut body, not a clean end.
        if (capture) capture.answer = undefined;
        res.destroy();
        report(status, outcome === 'client-abort' ? 'client-abort' : 'cut', instance, n, detail);
      }
      resolve();
    });
  });
}

/** A request on its way to a service: a client's, or an item of a job. */
export interface Outgoing {
  method: string;
  path: string;
  headers: Record<string, string | string[]>;
  body: Body;
  /** Whether the body can be sent again (it is held in memory). */
  retryable: boolean;
}

/** Why the sender cut a request short, read when its signal aborts: `client` left, or its `total` time passed. */
export interface Ended {
  client: boolean;
  total: boolean;
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
      /**
       * Call once the body is consumed (or failed): feeds passive health and the attempt
       * metrics, and says how the attempt ended.
       */
      finish(error?: Error, outcome?: AttemptOutcome): [AttemptOutcome, string];
    }
  /** `error` null: the sender left (its signal aborted with ended.client). */
  | { ok: false; error: ProxyError | null; instance: string | null; attempts: number };

/**
 * Sends a request to the service, retrying on another instance (per the service's
 * retry policy) until an answer may be passed on. Waits in the service's queue while
 * no instance is ready. The caller consumes the body and then calls `finish`.
 */
export async function exchange(
  upstreams: Upstreams,
  outgoing: Outgoing,
  requestSignal: AbortSignal,
  ended: Ended,
  hooks: Pick<ProxyHooks, 'onAttempt' | 'onRetry'>,
): Promise<Answer> {
  const config = upstreams.config;
  const { path, headers, body, retryable } = outgoing;
  const method = outgoing.method as Dispatcher.HttpMethod;
  const tried = new Set<string>();
  // Attempts that may have reached a model count against retry.attempts; a refused
  // connection did no work, so it only takes that instance out and tries the next.
  let counted = 0;
  let refused = 0;

  for (;;) {
    const n = counted + refused + 1;
    let attempt: Attempt;
    try {
      attempt = await upstreams.acquire(tried, requestSignal);
    } catch (error) {
      if (ended.client) return { ok: false, error: null, instance: null, attempts: n - 1 };
      // Nothing can take the request now: the queue's 503 says why, better than the last attempt's error.
      return { ok: false, error: asProxyError(error, config.name), instance: null, attempts: n - 1 };
    }
    tried.add(attempt.instance);
    const link = follow(requestSignal, attempt);
    const sent = performance.now();
    const lastChance = counted + 1 >= config.retry.attempts;

    let response: Dispatcher.ResponseData;
    try {
      if (attempt.fault?.kind === 'slow') {
        // Held as a slow model is: past timeouts.firstByte it is a timeout, as it would be for real.
        await delay(Math.min(attempt.fault.delayMs, config.timeouts.firstByte), undefined, { signal: attempt.signal });
        if (attempt.fault.delayMs > config.timeouts.firstByte) throw new undiciErrors.HeadersTimeoutError();
      }
      response = attempt.fault?.kind === 'error' ? injectedError(attempt.fault.status, attempt.instance) : await attempt.dispatcher.request({
        path,
        method,
        headers,
        body,
        signal: attempt.signal,
        headersTimeout: config.timeouts.firstByte,
        bodyTimeout: config.timeouts.idle,
      });
    } catch (error) {
      link.dispose();
      const [outcome, detail] = classify(error, ended, attempt.signal);
      attempt.finish(outcome, detail);
      hooks.onAttempt(config.name, attempt.instance, outcome);
      if (outcome === 'client-abort') return { ok: false, error: null, instance: attempt.instance, attempts: n };
      if (outcome === 'connect' && retryable && refused < MAX_REFUSED) {
        refused += 1;
        hooks.onRetry(config.name, outcome);
        continue;
      }
      counted += 1;
      if (RETRYABLE.has(outcome) && retryable && !lastChance) {
        hooks.onRetry(config.name, outcome);
        continue;
      }
      // A streamed body that outgrew limits.body ends the request with the gateway's own 413.
      const failure = error instanceof ProxyError ? error : failureFor(outcome, detail, attempt.instance, config.name, n);
      return { ok: false, error: failure, instance: attempt.instance, attempts: n };
    }

    counted += 1;
    attempt.firstByte(performance.now() - sent);
    const status = response.statusCode;
    if (config.retry.statuses.includes(status) && retryable && !lastChance) {
      attempt.finish(status >= 500 ? 'status' : 'ok', `answered ${status}`);
      hooks.onAttempt(config.name, attempt.instance, 'status');
      hooks.onRetry(config.name, `status ${status}`);
      link.dispose();
      response.body.dump().catch(() => {});
      continue;
    }

    const instance = attempt.instance;
    let finished = false;
    return {
      ok: true,
      instance,
      status,
      headers: response.headers,
      body: response.body,
      attempts: n,
      finish: (error, forced) => {
        const result: [AttemptOutcome, string] = error
          ? forced
            ? [forced, error.message]
            : classify(error, ended, attempt.signal)
          : [status >= 500 ? 'status' : 'ok', `answered ${status}`];
        if (finished) return result;
        finished = true;
        link.dispose();
        attempt.finish(result[0], error ? `response broke: ${result[1]}` : result[1]);
        if (!forced) hooks.onAttempt(config.name, instance, result[0]);
        return result;
      },
    };
  }
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

/**
 * Reads the request body into memory up to `keepLimit` so it can be sent again;
 * a larger body streams through once (no retry). `maxBody` is enforced either way.
 */
async function readBody(
  req: IncomingMessage,
  keepLimit: number,
  maxBody: number,
  signal: AbortSignal,
): Promise<{ body: Body; retryable: boolean }> {
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > maxBody) throw tooLarge(maxBody);
  if (declared === undefined && req.headers['transfer-encoding'] === undefined) return { body: null, retryable: true };
  // Events rather than an async iterator: small bodies usually arrive with the head.
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      chunks.push(chunk);
      size += chunk.length;
      if (size > maxBody) return finish(tooLarge(maxBody));
      if (size > keepLimit) {
        finish();
        req.pause();
        resolve({ body: Readable.from(rest(chunks, size, req[Symbol.asyncIterator](), maxBody)), retryable: false });
      }
    };
    const onEnd = () => {
      finish();
      resolve({ body: Buffer.concat(chunks, size), retryable: true });
    };
    // A client that stops sending its body is bounded by timeouts.total like everything else.
    const onAbort = () => finish(signal.reason as Error);
    const finish = (error?: Error) => {
      req.off('data', onData).off('end', onEnd).off('error', finish);
      signal.removeEventListener('abort', onAbort);
      if (error) reject(error);
    };
    req.on('data', onData).on('end', onEnd).on('error', finish);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

async function* rest(head: Buffer[], size: number, iterator: AsyncIterator<unknown>, maxBody: number): AsyncIterable<Buffer> {
  yield* head;
  for (let next = await iterator.next(); !next.done; next = await iterator.next()) {
    const chunk = next.value as Buffer;
    size += chunk.length;
    if (size > maxBody) throw tooLarge(maxBody);
    yield chunk;
  }
}

function tooLarge(maxBody: number): ProxyError {
  return new ProxyError('BODY_TOO_LARGE', 413, `the request body is larger than the service's limit of ${maxBody} bytes`, {
    limitBytes: maxBody,
  });
}

const CONNECT_CODES = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'UND_ERR_CONNECT_TIMEOUT']);
const RESET_CODES = new Set(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED']);

/** Aborts the attempt when the request is aborted; dispose() unhooks it once the attempt is over. */
function follow(request: AbortSignal, attempt: Attempt): { dispose(): void } {
  const onAbort = () => attempt.abort(request.reason as Error);
  if (request.aborted) onAbort();
  else request.addEventListener('abort', onAbort, { once: true });
  return { dispose: () => request.removeEventListener('abort', onAbort) };
}

/**
 * Streams the instance's body to the client with backpressure. Calls `done` once:
 * without an error when the client has the whole body, else with the cause.
 * (stream.pipeline would do the same, but allocates an AbortController and a
 * DOMException per call: a tenth of the gateway's CPU at high request rates.)
 */
function relay(body: Readable, res: ServerResponse, done: (error?: Error) => void): void {
  let settled = false;
  const settle = (error?: Error) => {
    if (settled) return;
    settled = true;
    done(error);
  };
  body.once('error', (error) => {
    res.destroy();
    settle(error);
  });
  res.once('finish', () => settle());
  res.once('close', () => {
    if (res.writableFinished) return;
    body.destroy();
    settle(new ProxyError('CLIENT_GONE', 499, 'the client closed the connection'));
  });
  body.pipe(res);
}

function classify(error: unknown, ended: { client: boolean; total: boolean }, instance: AbortSignal): [AttemptOutcome, string] {
  if (ended.client) return ['client-abort', 'the client closed the connection'];
  // Before the instance check: the request's own timeout also aborts the attempt's signal.
  if (ended.total) return ['timeout', 'the total timeout passed'];
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

function failureFor(outcome: AttemptOutcome, detail: string, instance: string, service: string, attempts: number): ProxyError {
  if (outcome === 'timeout' || outcome === 'stalled') {
    return new ProxyError('UPSTREAM_TIMEOUT', 504, `${instance}: ${detail}`, { service, attempts });
  }
  return new ProxyError('UPSTREAM_UNAVAILABLE', 502, `no instance could answer; last: ${instance}: ${detail}`, {
    service,
    attempts,
  });
}

function asProxyError(error: unknown, service: string): ProxyError {
  if (error instanceof ProxyError) return error;
  if (error instanceof InstanceDownError) return new ProxyError('UPSTREAM_UNAVAILABLE', 502, error.message, { service });
  return new ProxyError('GATEWAY_ERROR', 500, (error as Error).message ?? String(error), { service });
}

export function respondError(res: ServerResponse, error: ProxyError, requestId: string): void {
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  const body = error.body(requestId);
  const headers: Record<string, string | number> = {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
    'x-request-id': requestId,
  };
  if (error.details.retryAfterSeconds !== undefined) headers['retry-after'] = error.details.retryAfterSeconds;
  res.writeHead(error.status, headers).end(body);
}
