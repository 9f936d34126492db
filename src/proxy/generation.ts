import type { PrefillShape } from '../config/index.js';
import type { SseEvent } from './sse.js';

/**
 * OpenAI-compatible generation streams (`/v1/chat/completions`, `/v1/completions` with
 * `stream: true`): what a request asks for, how to ask another instance to continue a
 * cut answer, and how the continuation's chunks are spliced into the client's stream
 * so that it reads as one answer. See docs/streams.md.
 */

export type GenerationKind = 'chat' | 'completions';

/** What the gateway reads from a request body, once. */
export interface RequestFacts {
  /** The JSON body's `model`: health is judged per (instance, model) for answers about it. */
  model: string | undefined;
  /** Set for a streamed OpenAI-compatible generation. */
  generation: Generation | undefined;
}

export interface Generation {
  kind: GenerationKind;
  body: Record<string, unknown>;
  /** Why a cut answer would not be continued; undefined when it can be. */
  notContinuable: string | undefined;
  maxTokens: { field: 'max_tokens' | 'max_completion_tokens'; value: number } | undefined;
}

const NONE: RequestFacts = { model: undefined, generation: undefined };
const OPEN_BRACE = 0x7b;

/** Reads the model and, for a streamed chat or completion, the generation; never throws. */
export function describeRequest(method: string, path: string, body: Buffer | null | unknown): RequestFacts {
  if (!Buffer.isBuffer(body) || body.length === 0 || firstByte(body) !== OPEN_BRACE) return NONE;
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch {
    return NONE;
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return NONE;
  const json = parsed as Record<string, unknown>;
  const model = typeof json.model === 'string' ? json.model : undefined;
  if (method !== 'POST' || json.stream !== true) return { model, generation: undefined };
  const pathname = path.split('?')[0]!;
  const kind: GenerationKind | undefined = pathname.endsWith('/chat/completions')
    ? 'chat'
    : pathname.endsWith('/completions')
      ? 'completions'
      : undefined;
  if (!kind) return { model, generation: undefined };
  return { model, generation: { kind, body: json, notContinuable: notContinuable(kind, json), maxTokens: maxTokensOf(json) } };
}

function firstByte(body: Buffer): number | undefined {
  for (const byte of body) if (byte !== 0x20 && byte !== 0x0a && byte !== 0x0d && byte !== 0x09) return byte;
  return undefined;
}

function notContinuable(kind: GenerationKind, body: Record<string, unknown>): string | undefined {
  if (body.n !== undefined && body.n !== 1) return 'it asks for several choices (n)';
  if (body.best_of !== undefined && body.best_of !== 1) return 'it asks for best_of';
  const format = (body.response_format as { type?: unknown } | undefined)?.type;
  if (format === 'json_schema' || format === 'json_object') return 'structured output (response_format) starts its grammar afresh';
  if (kind === 'completions') {
    if (typeof body.prompt !== 'string') return 'its prompt is not one string';
    if (body.echo === true) return 'it asks for the prompt to be echoed';
    if (body.suffix !== undefined) return 'it has a suffix';
    return undefined;
  }
  if (!Array.isArray(body.messages) || body.messages.length === 0) return 'it has no messages';
  const last = body.messages[body.messages.length - 1] as { role?: unknown; content?: unknown } | undefined;
  if (last?.role === 'assistant' && typeof last.content !== 'string') return 'its final assistant message is not plain text';
  return undefined;
}

function maxTokensOf(body: Record<string, unknown>): Generation['maxTokens'] {
  for (const field of ['max_completion_tokens', 'max_tokens'] as const) {
    const value = body[field];
    if (typeof value === 'number' && Number.isInteger(value) && value > 0) return { field, value };
  }
  return undefined;
}

/** The request shape a continuation takes on one instance: a chat prefill shape, or a completion prompt. */
export type ContinuationShape = Exclude<PrefillShape, 'auto' | 'none'> | 'completions';

/** Which model servers continue a final assistant message, and how, by GET /v1/models `owned_by`. */
const SHAPE_BY_OWNER: Record<string, Exclude<PrefillShape, 'auto'>> = {
  vllm: 'continue-final-message',
  sglang: 'continue-final-message',
  llamacpp: 'assistant-prefill',
  'llama.cpp': 'assistant-prefill',
  ollama: 'assistant-prefill',
  library: 'assistant-prefill',
};

/** The prefill shape for an `owned_by` of GET /v1/models; `none` for a server not known to continue. */
export function shapeForOwner(owner: string | undefined): Exclude<PrefillShape, 'auto'> {
  return (owner && SHAPE_BY_OWNER[owner.toLowerCase()]) || 'none';
}

/**
 * The request that asks an instance to continue `text` (the answer so far, `produced`
 * tokens): chat with a final assistant message (and the server's continue flag), a
 * completion with the text after the prompt; `max_tokens` lowered by what was produced.
 */
export function continuationBody(generation: Generation, text: string, produced: number, shape: ContinuationShape): Buffer {
  const body: Record<string, unknown> = { ...generation.body };
  if (generation.maxTokens) body[generation.maxTokens.field] = Math.max(1, generation.maxTokens.value - produced);
  if (generation.kind === 'completions') {
    body.prompt = `${body.prompt as string}${text}`;
    return Buffer.from(JSON.stringify(body));
  }
  // Chat templates trim the final message they continue (transformers cuts the prompt at
  // its strip()), so trailing whitespace is sent to no one; the splice drops it from the
  // continuation's first text if the model writes it again (see GenerationSplice.tail).
  text = text.trimEnd();
  const messages = [...(body.messages as Record<string, unknown>[])];
  const last = messages[messages.length - 1]!;
  // A client that itself asked to continue its final assistant message: the answer so far extends that message.
  const extends_ = last.role === 'assistant' && (generation.body.continue_final_message === true || shape === 'assistant-prefill');
  if (extends_) messages[messages.length - 1] = { ...last, content: `${last.content as string}${text}` };
  else messages.push({ role: 'assistant', content: text });
  body.messages = messages;
  if (shape === 'continue-final-message') {
    body.continue_final_message = true;
    body.add_generation_prompt = false;
  }
  return Buffer.from(JSON.stringify(body));
}

/** One move of a stream to another instance, as the final chunk and the event tell it. */
export interface Continued {
  from: string;
  to: string;
  /** Characters of answer text the client had at the seam. */
  atChars: number;
  /** Content chunks (a token each, as OpenAI-compatible servers stream) the client had at the seam. */
  atTokens: number;
  reason: string;
}

interface Choice {
  index?: number;
  delta?: { role?: unknown; content?: unknown; tool_calls?: unknown; reasoning_content?: unknown; reasoning?: unknown; refusal?: unknown };
  text?: unknown;
  finish_reason?: unknown;
}

/** finish_reason values that say the server gave up on the answer rather than finished it. */
const ABANDONED = new Set(['abort', 'error']);

const nonEmpty = (value: unknown) => value !== undefined && value !== null && value !== '' && !(Array.isArray(value) && value.length === 0);

/**
 * Whether a chunk's choice carries output (content, reasoning, a tool call, a refusal, or
 * its end): a stream's first token, for holding it. Reasoning models stream thoughts for
 * a long time before any content, and that is output too.
 */
export function choiceHasOutput(choice: unknown): boolean {
  if (choice === null || typeof choice !== 'object') return false;
  const c = choice as Choice;
  const delta = c.delta !== null && typeof c.delta === 'object' ? c.delta : undefined;
  return (
    nonEmpty(c.text) ||
    nonEmpty(c.finish_reason) ||
    (delta !== undefined && (nonEmpty(delta.content) || nonEmpty(delta.reasoning_content) || nonEmpty(delta.reasoning) || nonEmpty(delta.tool_calls) || nonEmpty(delta.refusal)))
  );
}

interface Usage {
  prompt_tokens?: number;
  completion_tokens?: number;
  total_tokens?: number;
}

interface Chunk {
  id?: unknown;
  created?: unknown;
  object?: unknown;
  model?: unknown;
  error?: unknown;
  choices?: unknown[];
  usage?: Usage | null;
  understudy?: unknown;
}

/** What to do with one event of an upstream stream. */
export type Accepted =
  /** Write this to the client ('' writes nothing). */
  | { kind: 'write'; text: string }
  /** The stream broke at this event: it is not passed on. */
  | { kind: 'break'; reason: string; inBand: boolean };

/**
 * The client's view of one generation across the instances that produced it. Part 0
 * (the first instance's stream) is passed on byte for byte; later parts are rewritten
 * to the first part's `id` and `created`, lose their repeated role chunk, and their
 * final chunk carries `understudy.continued`. `model` and `system_fingerprint` stay as
 * each instance sent them: the client is told who answered, not a story.
 */
export class GenerationSplice {
  /** The answer text the client has. */
  text = '';
  /** Content chunks the client has. */
  produced = 0;
  readonly continued: Continued[] = [];
  /** Why a break could not be continued, once that is known (tool calls, more than one choice, too long). */
  blocked: string | undefined;
  private part = 0;
  private partProduced = 0;
  /** Content chunks of each finished-or-broken part before the current one. */
  private readonly partTokens: { instance: string; tokens: number; usage: Usage | undefined }[] = [];
  private partUsage: Usage | undefined;
  private id: unknown;
  private created: unknown;
  private object: unknown;
  private model: unknown;
  /** Choice indexes seen in the current part, and those that sent their final chunk. */
  private readonly seen = new Set<number>();
  private readonly ended = new Set<number>();
  /**
   * Whitespace at the end of the client's text that the continuation's prefill left out
   * (templates trim it): dropped from the start of the continuation's text if it comes again.
   */
  private tail = '';
  /** The current part sent the final chunk of every choice it streamed. */
  finished = false;
  /** The current part sent `[DONE]`. */
  done = false;

  constructor(
    readonly generation: Generation,
    private readonly keepChars: number,
    private instance: string,
  ) {
    this.blocked = generation.notContinuable;
  }

  /** The current part broke; the next events come from `to`'s continuation. */
  startPart(to: string, reason: string): void {
    this.continued.push({ from: this.instance, to, atChars: this.text.length, atTokens: this.produced, reason });
    this.partTokens.push({ instance: this.instance, tokens: this.partProduced, usage: this.partUsage });
    this.instance = to;
    this.part += 1;
    this.partProduced = 0;
    this.partUsage = undefined;
    this.finished = false;
    this.done = false;
    this.seen.clear();
    this.ended.clear();
    this.tail = this.generation.kind === 'chat' ? this.text.slice(this.text.trimEnd().length) : '';
  }

  /** Whether the stream seen so far is a complete answer (its final chunk or [DONE] came). */
  get complete(): boolean {
    return this.finished || this.done;
  }

  accept(event: SseEvent): Accepted {
    if (event.data === '') return { kind: 'write', text: event.raw }; // a comment or keep-alive
    if (event.data === '[DONE]') {
      this.done = true;
      return { kind: 'write', text: '' }; // the gateway ends the stream itself, once
    }
    if (event.event === 'error') return { kind: 'break', reason: `an error event: ${event.data.slice(0, 200)}`, inBand: true };
    let chunk: Chunk;
    try {
      chunk = JSON.parse(event.data) as Chunk;
    } catch {
      return { kind: 'break', reason: 'a malformed chunk (not JSON)', inBand: true };
    }
    if (typeof chunk !== 'object' || chunk === null) return { kind: 'break', reason: 'a malformed chunk (not an object)', inBand: true };
    if (chunk.error !== undefined && chunk.error !== null) return { kind: 'break', reason: `an error event: ${errorText(chunk.error)}`, inBand: true };

    const choices = Array.isArray(chunk.choices) ? chunk.choices : [];
    if (choices.some((choice) => choice === null || typeof choice !== 'object')) return { kind: 'break', reason: 'a malformed chunk (a choice is not an object)', inBand: true };
    let piece: string | undefined;
    let finish = false;
    let roleOnly = false;
    for (const choice of choices as Choice[]) {
      const index = choice.index ?? 0;
      this.seen.add(index);
      const delta = choice.delta !== null && typeof choice.delta === 'object' ? choice.delta : undefined;
      if (nonEmpty(choice.finish_reason)) {
        if (ABANDONED.has(String(choice.finish_reason))) return { kind: 'break', reason: `the server gave up on the answer (finish_reason ${String(choice.finish_reason)})`, inBand: true };
        this.ended.add(index);
      }
      if (index !== 0) {
        this.blocked ??= 'it has more than one choice';
        continue;
      }
      const content = this.generation.kind === 'chat' ? delta?.content : choice.text;
      if (typeof content === 'string' && content !== '') piece = content;
      if (nonEmpty(delta?.tool_calls)) this.blocked ??= 'it calls tools';
      if (nonEmpty(delta?.reasoning_content) || nonEmpty(delta?.reasoning)) this.blocked ??= 'it streams reasoning, which a continuation cannot carry';
      if (nonEmpty(delta?.refusal)) this.blocked ??= 'it is a refusal';
      if (nonEmpty(choice.finish_reason)) finish = true;
      roleOnly = delta?.role !== undefined && piece === undefined && !finish;
    }
    if (piece !== undefined && this.tail !== '') {
      // The model wrote again the whitespace the client has already: drop it once.
      const before = piece;
      let common = 0;
      while (common < this.tail.length && common < piece.length && this.tail[common] === piece[common]) common += 1;
      piece = piece.slice(common);
      this.tail = common === this.tail.length || common < before.length ? '' : this.tail.slice(common);
      const choice = (choices as Choice[]).find((c) => (c.index ?? 0) === 0)!;
      if (this.generation.kind === 'chat') choice.delta!.content = piece;
      else choice.text = piece;
      if (piece === '') piece = undefined;
    }
    if (piece !== undefined) {
      this.text += piece;
      this.produced += 1;
      this.partProduced += 1;
      if (this.text.length > this.keepChars) this.blocked ??= 'its text grew past streams.keepText';
    }
    // Whole when every choice seen has ended (n > 1 streams its choices side by side).
    if (finish || this.ended.size > 0) this.finished = [...this.seen].every((index) => this.ended.has(index));
    if (chunk.usage) this.partUsage = chunk.usage;

    if (this.part === 0) {
      this.id ??= chunk.id;
      this.created ??= chunk.created;
      this.object ??= chunk.object;
      this.model = chunk.model ?? this.model;
      return { kind: 'write', text: event.raw };
    }
    // A continuation: the client has had its role chunk already, and needs no chunk whose text was all dropped.
    if (roleOnly && choices.length === 1) return { kind: 'write', text: '' };
    if (piece === undefined && !finish && !chunk.usage && choices.length === 1 && !choiceHasOutput(choices[0])) return { kind: 'write', text: '' };
    this.model = chunk.model ?? this.model;
    if (this.id !== undefined) chunk.id = this.id;
    if (this.created !== undefined) chunk.created = this.created;
    for (const choice of choices as Choice[]) if (choice.delta !== null && typeof choice.delta === 'object' && 'role' in choice.delta) delete choice.delta.role;
    if (finish) chunk.understudy = { continued: this.continued };
    if (chunk.usage) {
      const summed = this.summedUsage(chunk.usage);
      chunk.understudy = { ...(chunk.understudy as object | undefined), continued: this.continued, usage: summed.parts };
      chunk.usage = summed.usage;
    }
    return { kind: 'write', text: `data: ${JSON.stringify(chunk)}\n\n` };
  }

  /**
   * The usage the client is told: the answer's completion tokens are those of every part
   * (a broken part's counted as its content chunks), its prompt tokens the last part's
   * less the answer text it was given as a prefill. Each part's own figures go alongside.
   */
  private summedUsage(last: Usage): { usage: Usage; parts: unknown[] } {
    const before = this.partTokens.reduce((sum, p) => sum + (p.usage?.completion_tokens ?? p.tokens), 0);
    const completion = before + (last.completion_tokens ?? this.partProduced);
    const prompt = Math.max(0, (last.prompt_tokens ?? 0) - before);
    const parts = [
      ...this.partTokens.map((p) => ({ instance: p.instance, completion_tokens: p.usage?.completion_tokens ?? p.tokens, counted: p.usage?.completion_tokens === undefined })),
      { instance: this.instance, ...last },
    ];
    return { usage: { ...last, prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion }, parts };
  }

  /** Tokens the client may still be sent, when the request bounds them. */
  get remaining(): number | undefined {
    const max = this.generation.maxTokens?.value;
    return max === undefined ? undefined : max - this.produced;
  }

  /** The final chunk the gateway writes itself when the answer reached max_tokens just as it broke. */
  lengthChunk(): string {
    const object = this.object ?? (this.generation.kind === 'chat' ? 'chat.completion.chunk' : 'text_completion');
    const choice = this.generation.kind === 'chat' ? { index: 0, delta: {}, logprobs: null, finish_reason: 'length' } : { index: 0, text: '', logprobs: null, finish_reason: 'length' };
    const chunk = { id: this.id, object, created: this.created, model: this.model, choices: [choice], understudy: { continued: this.continued } };
    return `data: ${JSON.stringify(chunk)}\n\n`;
  }
}

function errorText(error: unknown): string {
  if (typeof error === 'string') return error.slice(0, 200);
  const message = (error as { message?: unknown }).message;
  return typeof message === 'string' ? message.slice(0, 200) : JSON.stringify(error).slice(0, 200);
}

/** The in-band error a client gets when a stream broke and no instance could continue it (OpenAI's error shape). */
export function streamError(message: string, requestId: string): string {
  return `data: ${JSON.stringify({ error: { message, type: 'server_error', code: 'STREAM_CUT', requestId } })}\n\n`;
}
