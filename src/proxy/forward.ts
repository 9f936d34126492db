import type { IncomingMessage, ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import type { EventBody } from '../core/index.js';
import { ProxyError } from './errors.js';
import { asProxyError, exchange, type Ended, type ExchangeHooks, type ExchangeOptions, type Outgoing } from './exchange.js';
import { describeRequest, type Generation } from './generation.js';
import { downstreamHeaders, upstreamHeaders } from './headers.js';
import { Idempotency } from './idempotency.js';
import { relayResumable, vetGeneration, vetSegments, type Sink } from './resume.js';
import { RESUME_HEADER, SEGMENTS_HEADER } from './segments.js';
import type { Upstreams } from './types.js';

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
  /** Times a stream was continued on another instance. */
  continued?: number;
  error?: string;
}

export interface ProxyHooks extends ExchangeHooks {
  onRequest(report: RequestReport): void;
  /** A listener failed outside any request (e.g. accept ran out of file descriptors). */
  onError(message: string, error: unknown): void;
  /** Something worth an event happened to a request (a stream continued or cut); `traceId` is the request id. */
  onEvent?(service: string, event: EventBody, traceId: string): void;
  /** Set when requests with an Idempotency-Key are to be answered once. */
  idempotency?: Idempotency | undefined;
}

type Body = Buffer | Readable | null;

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
    const deadline = performance.now() + config.timeouts.total;
    const exchange: Exchange = { req, res, upstreams, path, requestId, hooks, requestSignal, ended, deadline, report };
    if (typeof key === 'string') await answerOnce(exchange, key, hooks.idempotency!);
    else await attempts(exchange);
  } finally {
    clearTimeout(totalTimer);
  }
}

type Report = (status: number, outcome: RequestReport['outcome'], instance: string | null, attempts: number, error?: string, continued?: number) => void;

/** Reports the request's end to the hooks, timed from now. */
export function reporter(hooks: ProxyHooks, service: string, req: IncomingMessage, path: string, requestId: string): Report {
  const started = performance.now();
  return (status, outcome, instance, attempts, error, continued) =>
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
      ...(continued ? { continued } : {}),
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
  /** performance.now() at which timeouts.total passes. */
  deadline: number;
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

  const method = req.method ?? 'GET';
  const facts = describeRequest(method, path, body);
  const outgoing: Outgoing = { method, path, headers: upstreamHeaders(req, requestId), body, retryable, model: facts.model };
  // Streams that can be continued elsewhere are held until their first token (see resume.ts).
  const options: ExchangeOptions = { deadline: x.deadline };
  const resumable = config.streams.resume && retryable;
  if (resumable && facts.generation) {
    options.vet = vetGeneration(config.timeouts.firstToken);
    options.headersTimeout = config.timeouts.firstToken;
  } else if (resumable && method === 'POST') {
    delete outgoing.headers[RESUME_HEADER];
    outgoing.headers[SEGMENTS_HEADER] = '1';
    options.vet = vetSegments(config.timeouts.firstToken);
  }
  const answer = await exchange(upstreams, outgoing, requestSignal, ended, hooks, options);
  if (!answer.ok) {
    if (answer.error === null) return report(499, 'client-abort', answer.instance, answer.attempts);
    respondError(res, answer.error, requestId);
    return report(answer.error.status, 'error', answer.instance, answer.attempts, answer.error.message);
  }

  const { status, instance, attempts: n } = answer;
  const responseHeaders = downstreamHeaders(answer.headers);
  responseHeaders['x-request-id'] = requestId;
  responseHeaders['x-understudy-instance'] = instance;
  if (answer.stream) {
    // The body is relayed event by event (or unframed): its length is not the instance's.
    delete responseHeaders['content-length'];
    delete responseHeaders[SEGMENTS_HEADER];
  }
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
  if (answer.stream) {
    const relayed = await relayResumable({ upstreams, outgoing, requestId, requestSignal, ended, hooks, deadline: x.deadline, sink: sinkFor(res, capture, requestSignal) }, answer, facts.generation as Generation);
    if (relayed.outcome !== 'ok' && capture) capture.answer = undefined;
    return report(status, relayed.outcome, relayed.instance, relayed.attempts, relayed.error, relayed.continuations);
  }
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

/**
 * The client's side of a relayed stream: writes wait for the socket to drain; a cut ends
 * the connection without the final chunk, so the client sees it broken. With `capture`,
 * the bytes are kept too (an Idempotency-Key's answer).
 */
/** How long a cut stream's last event (its in-band error) may take to reach the client. */
const CUT_GRACE_MS = 1000;

function sinkFor(res: ServerResponse, capture: Capture | undefined, signal: AbortSignal): Sink {
  const kept: Buffer[] = [];
  let size = 0;
  const keep = (chunk: string | Buffer) => {
    if (!capture || size > capture.limit) return;
    const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    size += bytes.length;
    if (size <= capture.limit) kept.push(bytes);
    else kept.length = 0;
  };
  return {
    async write(chunk) {
      keep(chunk);
      if (res.write(chunk) || res.destroyed) return;
      // A client that stops reading holds the relay only until the request ends (timeouts.total, or it leaves).
      await new Promise<void>((resolve) => {
        const done = () => {
          res.off('drain', done).off('close', done);
          signal.removeEventListener('abort', ended);
          resolve();
        };
        const ended = () => {
          res.destroy();
          done();
        };
        if (signal.aborted) return ended();
        res.on('drain', done).on('close', done);
        signal.addEventListener('abort', ended, { once: true });
      });
    },
    end() {
      if (capture && size <= capture.limit) {
        const headers = { ...(res.getHeaders() as Record<string, string | string[]>) };
        delete headers['x-request-id'];
        capture.answer = { status: res.statusCode, headers, body: Buffer.concat(kept, size) };
      }
      res.end();
    },
    cut(last) {
      if (last === undefined || res.destroyed) {
        res.destroy();
        return;
      }
      res.write(last, () => res.destroy());
      // A client that is not reading would never let the last event out.
      setTimeout(() => res.destroy(), CUT_GRACE_MS).unref();
    },
  };
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
