import type { Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import type { EventBody } from '../core/index.js';
import {
  exchange,
  FirstTokenTimeout,
  type Answer,
  type Ended,
  type ExchangeHooks,
  type ExchangeOptions,
  type Outgoing,
  type StreamHead,
  type Vetted,
} from './exchange.js';
import { choiceHasOutput, continuationBody, GenerationSplice, streamError, type Generation } from './generation.js';
import { FrameDecoder, FrameError, RESUME_HEADER, SEGMENTS_HEADER, SegmentSplice, type Frame } from './segments.js';
import { SseDecoder, type SseEvent } from './sse.js';
import type { Attempt, Upstreams } from './types.js';

/**
 * Streams that outlive their instance: an OpenAI-compatible generation or a segmented
 * answer is held until its first token (so a failure before it is retried like any
 * other), then passed on; when it breaks, the rest is asked of another instance and
 * spliced in, so the client reads one answer. See docs/streams.md.
 */

/** A decoder's complaint about the bytes themselves (not the connection). */
class Malformed extends Error {
  override name = 'Malformed';
}

/** Reads an upstream body as whole events (or frames), one chunk's worth at a time. */
class StreamReader<T> {
  private readonly iterator: AsyncIterator<Buffer>;

  constructor(
    body: Readable,
    private readonly decode: (chunk: Buffer) => T[],
  ) {
    this.iterator = (body as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  }

  /** The items of the next chunk that completes any, or undefined at the end; throws what the body throws. */
  async next(): Promise<T[] | undefined> {
    for (;;) {
      const read = await this.iterator.next();
      if (read.done) return undefined;
      let items: T[];
      try {
        items = this.decode(read.value);
      } catch (error) {
        throw new Malformed((error as Error).message);
      }
      if (items.length > 0) return items;
    }
  }
}

interface Head<T> extends StreamHead {
  reader: StreamReader<T>;
  /** Items read while waiting for the first token, not yet passed on. */
  held: T[];
}

type GenerationHead = Head<SseEvent> & { kind: 'generation' };
type SegmentsHead = Head<Frame> & { kind: 'segments' };

/** What a first event says: output (or the end) came, an error came, or keep waiting. */
function firstOfEvent(event: SseEvent): 'token' | 'error' | 'wait' {
  if (event.data === '') return 'wait';
  if (event.data === '[DONE]') return 'token';
  if (event.event === 'error') return 'error';
  let chunk: { error?: unknown; choices?: unknown; usage?: unknown };
  try {
    chunk = JSON.parse(event.data) as typeof chunk;
  } catch {
    return 'error';
  }
  if (chunk === null || typeof chunk !== 'object' || (chunk.error !== undefined && chunk.error !== null)) return 'error';
  if (Array.isArray(chunk.choices) && chunk.choices.some(choiceHasOutput)) return 'token';
  return chunk.usage ? 'token' : 'wait';
}

function firstOfFrame(frame: Frame): 'token' | 'wait' {
  return frame.kind === 'H' ? 'wait' : 'token';
}

/**
 * Holds a stream until its first token, within timeouts.firstToken of the request being
 * sent. A stream that ends, errs or stays silent before it is a failed attempt.
 */
async function holdUntilFirstToken<T>(
  reader: StreamReader<T>,
  first: (item: T) => 'token' | 'error' | 'wait',
  attempt: Attempt,
  sentAt: number,
  firstTokenMs: number,
): Promise<{ ok: true; held: T[] } | { ok: false; detail: string }> {
  const held: T[] = [];
  const timer = setTimeout(
    () => attempt.abort(new FirstTokenTimeout(`no first token within timeouts.firstToken (${firstTokenMs}ms)`)),
    Math.max(0, sentAt + firstTokenMs - performance.now()),
  );
  try {
    for (;;) {
      let batch: T[] | undefined;
      try {
        batch = await reader.next();
      } catch (error) {
        if (error instanceof Malformed) return { ok: false, detail: `the stream began with a malformed frame: ${error.message}` };
        throw error;
      }
      if (batch === undefined) return { ok: false, detail: 'the stream ended before its first token' };
      held.push(...batch);
      for (const item of batch) {
        const kind = first(item);
        if (kind === 'error') return { ok: false, detail: `the stream began with an error: ${describe(item)}` };
        if (kind === 'token') return { ok: true, held };
      }
    }
  } finally {
    clearTimeout(timer);
  }
}

function describe(item: unknown): string {
  return ((item as SseEvent).data ?? '').slice(0, 200);
}

/** `vet` for a streamed generation: an event stream is held until its first token; anything else passes as it is. */
export function vetGeneration(firstTokenMs: number, continuation = false): NonNullable<ExchangeOptions['vet']> {
  return async (response, attempt, sentAt): Promise<Vetted> => {
    if (!String(response.headers['content-type'] ?? '').includes('text/event-stream')) {
      // A continuation must be a stream to be spliced in; an instance that answers otherwise cannot take one.
      return continuation ? { ok: false, class: 'cannot-take', outcome: 'bad-request', detail: 'it did not answer the continuation with a stream' } : { ok: true };
    }
    const decoder = new SseDecoder();
    const reader = new StreamReader(response.body, (chunk) => decoder.push(chunk));
    const held = await holdUntilFirstToken(reader, firstOfEvent, attempt, sentAt, firstTokenMs);
    if (!held.ok) return { ok: false, class: 'server-error', outcome: 'status', detail: held.detail };
    const head: GenerationHead = { kind: 'generation', reader, held: held.held };
    return { ok: true, stream: head };
  };
}

/**
 * `vet` for a segmented answer: framed answers are held until their first segment; a
 * continuation (`resumeFrom`) must echo it, else the instance did not honour it.
 */
export function vetSegments(firstTokenMs: number, resumeFrom?: number): NonNullable<ExchangeOptions['vet']> {
  return async (response, attempt, sentAt): Promise<Vetted> => {
    const framed = header(response, SEGMENTS_HEADER) === '1';
    if (resumeFrom !== undefined && (!framed || header(response, RESUME_HEADER) !== String(resumeFrom))) {
      return { ok: false, class: 'cannot-take', outcome: 'bad-request', detail: `it did not resume from segment ${resumeFrom}` };
    }
    if (!framed) return { ok: true };
    const decoder = new FrameDecoder();
    const reader = new StreamReader(response.body, (chunk) => decoder.push(chunk));
    const held = await holdUntilFirstToken(reader, firstOfFrame, attempt, sentAt, firstTokenMs);
    if (!held.ok) return { ok: false, class: 'server-error', outcome: 'status', detail: held.detail };
    const head: SegmentsHead = { kind: 'segments', reader, held: held.held };
    return { ok: true, stream: head };
  };
}

function header(response: Dispatcher.ResponseData, name: string): string | undefined {
  const value = response.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** Where a relayed stream's bytes go: the client, with backpressure. */
export interface Sink {
  write(chunk: string | Buffer): Promise<void>;
  /** A clean end. */
  end(): void;
  /** Ends the response so the client sees it broken: after `last`, no clean end. */
  cut(last?: string): void;
}

export interface ResumeContext {
  upstreams: Upstreams;
  outgoing: Outgoing;
  requestId: string;
  requestSignal: AbortSignal;
  ended: Ended;
  hooks: ExchangeHooks & { onEvent?(service: string, event: EventBody, traceId: string): void };
  deadline: number;
  sink: Sink;
}

export interface Relayed {
  outcome: 'ok' | 'cut' | 'client-abort';
  /** The instance that sent the last part. */
  instance: string;
  attempts: number;
  continuations: number;
  error?: string;
}

type OkAnswer = Extract<Answer, { ok: true }>;

/** Continuations of one stream at most: a fleet where every instance breaks every stream should not keep a client forever. */
const MAX_CONTINUATIONS = 10;

/** How one part of a stream ended. */
type PartEnd = { how: 'complete' } | { how: 'break'; reason: string; inBand: boolean; cannotTake?: boolean; error?: Error };

/** Passes a held stream on, and continues it on other instances each time it breaks. */
export async function relayResumable(x: ResumeContext, first: OkAnswer, generation: Generation | undefined): Promise<Relayed> {
  const kind = (first.stream as Head<unknown>).kind;
  const splice = kind === 'generation' ? new GenerationSplice(generation!, x.upstreams.config.streams.keepText, first.instance) : new SegmentSplice(first.instance);
  const current = { answer: first, attempts: first.attempts, continuations: 0 };
  try {
    return await relay(x, current, splice, kind, generation);
  } catch (error) {
    // A bug, or a chunk no rule foresaw: the attempt still ends, and the client sees a cut, never a hang.
    const { answer } = current;
    answer.finish(error as Error, 'error');
    answer.body.destroy();
    return cut(x, answer.instance, current.attempts, current.continuations, `the stream from ${answer.instance} could not be relayed: ${(error as Error).message}`, kind, splice);
  }
}

async function relay(
  x: ResumeContext,
  current: { answer: OkAnswer; attempts: number; continuations: number },
  splice: GenerationSplice | SegmentSplice,
  kind: 'generation' | 'segments',
  generation: Generation | undefined,
): Promise<Relayed> {
  const config = x.upstreams.config;
  let answer = current.answer;
  let attempts = current.attempts;
  let continuations = 0;
  const refused = new Set<string>();
  for (;;) {
    const end =
      splice instanceof GenerationSplice
        ? await pumpGeneration(x.sink, answer.stream as GenerationHead, splice)
        : await pumpSegments(x.sink, answer.stream as SegmentsHead, splice);
    if (end.how === 'complete') {
      answer.finish();
      if (splice instanceof GenerationSplice) await x.sink.write('data: [DONE]\n\n');
      x.sink.end();
      return { outcome: 'ok', instance: answer.instance, attempts, continuations };
    }
    const [outcome, detail] = answer.finish(end.error ?? new Error(end.reason), end.cannotTake ? 'bad-request' : end.error ? undefined : 'status');
    if (outcome === 'client-abort') return { outcome: 'client-abort', instance: answer.instance, attempts, continuations };
    const reason = `the stream from ${answer.instance} broke: ${end.error ? detail : end.reason}`;
    answer.body.destroy();

    if (splice instanceof GenerationSplice) {
      // Whole already: its final chunk came before the break, or max_tokens is reached.
      if (splice.complete) return done(x, answer.instance, attempts, continuations, 'data: [DONE]\n\n');
      if (splice.remaining !== undefined && splice.remaining <= 0) return done(x, answer.instance, attempts, continuations, `${splice.lengthChunk()}data: [DONE]\n\n`);
    }
    const blocked = !config.streams.resume
      ? 'streams.resume is off'
      : continuations >= MAX_CONTINUATIONS
        ? `it was continued ${continuations} times already`
        : x.ended.total
        ? 'timeouts.total passed'
        : splice instanceof GenerationSplice
          ? splice.blocked
          : undefined;
    if (end.cannotTake) refused.add(answer.instance);
    if (blocked !== undefined) return cut(x, answer.instance, attempts, continuations, `${reason}; it is not continued: ${blocked}`, kind, splice);

    const next = await continueElsewhere(x, splice, refused, answer.instance);
    attempts += next.attempts;
    if (!next.ok) {
      if (next.error === null) return { outcome: 'client-abort', instance: answer.instance, attempts, continuations };
      // The original break is the news, not why a standby refused the continuation.
      return cut(x, answer.instance, attempts, continuations, `${reason}; no instance could continue it (${next.error.message})`, kind, splice);
    }
    if (!next.stream) {
      next.body.destroy();
      next.finish(new Error('its continuation is not a stream'), 'bad-request');
      refused.add(next.instance);
      return cut(x, answer.instance, attempts, continuations, `${reason}; ${next.instance} did not answer the continuation with a stream`, kind, splice);
    }
    continuations += 1;
    current.attempts = attempts;
    current.continuations = continuations;
    const at = splice instanceof GenerationSplice ? { atChars: splice.text.length, atTokens: splice.produced } : { atSegment: splice.next };
    splice.startPart(next.instance, reason);
    x.hooks.onEvent?.(
      config.name,
      { type: 'stream-continued', from: answer.instance, to: next.instance, stream: streamName(kind, generation), requestId: x.requestId, ...at, reason },
      x.requestId,
    );
    answer = next;
    current.answer = next;
  }
}

function streamName(kind: 'generation' | 'segments', generation: Generation | undefined): 'chat' | 'completions' | 'segments' {
  return kind === 'segments' ? 'segments' : generation!.kind;
}

async function done(x: ResumeContext, instance: string, attempts: number, continuations: number, last: string): Promise<Relayed> {
  await x.sink.write(last);
  x.sink.end();
  return { outcome: 'ok', instance, attempts, continuations };
}

function cut(
  x: ResumeContext,
  instance: string,
  attempts: number,
  continuations: number,
  reason: string,
  kind: 'generation' | 'segments',
  splice: GenerationSplice | SegmentSplice,
): Relayed {
  x.sink.cut(kind === 'generation' ? streamError(reason, x.requestId) : undefined);
  const at = splice instanceof GenerationSplice ? { atChars: splice.text.length, atTokens: splice.produced } : { atSegment: splice.next };
  const stream = kind === 'segments' ? 'segments' : (splice as GenerationSplice).generation.kind;
  x.hooks.onEvent?.(x.upstreams.config.name, { type: 'stream-cut', instance, stream, requestId: x.requestId, ...at, reason }, x.requestId);
  return { outcome: 'cut', instance, attempts, continuations, error: reason };
}

/** Asks the best other instance for the rest of the answer. */
function continueElsewhere(x: ResumeContext, splice: GenerationSplice | SegmentSplice, refused: Set<string>, broken: string): Promise<Answer> {
  const config = x.upstreams.config;
  const headers = { ...x.outgoing.headers };
  delete headers['content-length'];
  const firstToken = config.timeouts.firstToken;
  // The client is reading a stream: it waits for a ready instance no longer than a stream may pause.
  const options: ExchangeOptions = { exclude: refused, avoid: [broken], deadline: x.deadline, headersTimeout: firstToken, continuation: true, queueFor: config.timeouts.idle };
  if (splice instanceof GenerationSplice) {
    const { generation, text, produced } = splice;
    options.vet = vetGeneration(firstToken, true);
    options.prepare = async (attempt) => {
      const shape = generation.kind === 'completions' ? 'completions' : await attempt.prefill();
      if (shape === 'none') return undefined;
      return { headers, body: continuationBody(generation, text, produced, shape) };
    };
  } else {
    const from = splice.next;
    options.vet = vetSegments(firstToken, from);
    options.prepare = async () => ({ headers: { ...headers, [RESUME_HEADER]: String(from) }, body: x.outgoing.body });
  }
  return exchange(x.upstreams, x.outgoing, x.requestSignal, x.ended, x.hooks, options);
}

async function pumpGeneration(sink: Sink, head: GenerationHead, splice: GenerationSplice): Promise<PartEnd> {
  let batch: SseEvent[] | undefined = head.held;
  head.held = [];
  for (;;) {
    if (batch === undefined) {
      return splice.complete ? { how: 'complete' } : { how: 'break', reason: 'the stream ended without its final chunk', inBand: true };
    }
    let out = '';
    for (const event of batch) {
      const verdict = splice.accept(event);
      if (verdict.kind === 'break') {
        if (out) await sink.write(out);
        return { how: 'break', reason: verdict.reason, inBand: true };
      }
      out += verdict.text;
    }
    if (out) await sink.write(out);
    try {
      batch = await head.reader.next();
    } catch (error) {
      if (error instanceof Malformed) return { how: 'break', reason: error.message, inBand: true };
      return { how: 'break', reason: (error as Error).message, inBand: false, error: error as Error };
    }
  }
}

async function pumpSegments(sink: Sink, head: SegmentsHead, splice: SegmentSplice): Promise<PartEnd> {
  let batch: Frame[] | undefined = head.held;
  head.held = [];
  for (;;) {
    if (batch === undefined) return { how: 'break', reason: `the stream ended without its end frame, at segment ${splice.next}`, inBand: true };
    for (const frame of batch) {
      const verdict = splice.accept(frame);
      if (verdict.kind === 'end') {
        // The end frame is the last; read to the body's end so the connection can be reused.
        await drain(head.reader);
        return { how: 'complete' };
      }
      if (verdict.kind === 'break') return { how: 'break', reason: verdict.reason, inBand: true, cannotTake: verdict.cannotTake };
      if (verdict.bytes) await sink.write(verdict.bytes);
    }
    try {
      batch = await head.reader.next();
    } catch (error) {
      if (error instanceof Malformed || error instanceof FrameError) return { how: 'break', reason: (error as Error).message, inBand: true };
      return { how: 'break', reason: (error as Error).message, inBand: false, error: error as Error };
    }
  }
}

async function drain(reader: StreamReader<unknown>): Promise<void> {
  try {
    while ((await reader.next()) !== undefined);
  } catch {
    // The answer is whole; what follows it does not matter.
  }
}
