import { describe, expect, it } from 'vitest';
import { continuationBody, describeRequest, GenerationSplice } from '../../src/proxy/generation.js';
import { FrameDecoder, SegmentSplice, type Frame } from '../../src/proxy/segments.js';
import { SseDecoder, type SseEvent } from '../../src/proxy/sse.js';

/** Feeds `bytes` to a decoder in pieces of every size from 1 to 7 bytes. */
function inPieces<T>(bytes: Buffer, make: () => { push(chunk: Buffer): T[] }): T[][] {
  const runs: T[][] = [];
  for (let size = 1; size <= 7; size++) {
    const decoder = make();
    const items: T[] = [];
    for (let at = 0; at < bytes.length; at += size) items.push(...decoder.push(bytes.subarray(at, at + size)));
    runs.push(items);
  }
  return runs;
}

describe('SseDecoder', () => {
  it('hands out whole events only, however the bytes are cut, with LF or CRLF', () => {
    const text = 'data: {"a":1}\n\n: keep-alive\n\nevent: error\ndata: x\ndata: y\r\n\r\ndata: [DONE]\n\ndata: {"partial"';
    for (const events of inPieces(Buffer.from(text), () => new SseDecoder())) {
      expect(events.map((e) => [e.event, e.data])).toEqual([
        [undefined, '{"a":1}'],
        [undefined, ''],
        ['error', 'x\ny'],
        [undefined, '[DONE]'],
      ]);
      expect(events.map((e) => e.raw).join('')).toBe(text.slice(0, text.indexOf('data: {"partial"')));
    }
  });

  it('keeps a multi-byte character cut between chunks whole', () => {
    const bytes = Buffer.from('data: {"c":"héllo ✓"}\n\n');
    for (const events of inPieces(bytes, () => new SseDecoder())) expect(events[0]!.data).toBe('{"c":"héllo ✓"}');
  });
});

describe('FrameDecoder', () => {
  it('hands out each frame once all of its payload has arrived', () => {
    const bytes = Buffer.concat([Buffer.from('H 4\nRIFF'), Buffer.from('S 0 3\nabc'), Buffer.from('S 1 0\n'), Buffer.from('S 2 5\n\nS 9\n'), Buffer.from('E 3\n')]);
    for (const frames of inPieces(bytes, () => new FrameDecoder())) {
      expect(frames.map((f) => (f.kind === 'E' ? ['E', f.count] : [f.kind, f.kind === 'S' ? f.index : -1, f.payload.toString()]))).toEqual([
        ['H', -1, 'RIFF'],
        ['S', 0, 'abc'],
        ['S', 1, ''],
        ['S', 2, '\nS 9\n'],
        ['E', 3],
      ]);
    }
  });

  it('refuses a body that is not framed', () => {
    expect(() => new FrameDecoder().push(Buffer.from('RIFF....WAVEfmt \n'))).toThrow(/not a segment frame/);
    expect(() => new FrameDecoder().push(Buffer.alloc(100, 0x61))).toThrow(/longer than 64 bytes/);
  });
});

describe('SegmentSplice', () => {
  const H = (payload = 'WAV!'): Frame => ({ kind: 'H', payload: Buffer.from(payload) });
  const S = (index: number): Frame => ({ kind: 'S', index, payload: Buffer.from(`s${index}`) });
  const written = (splice: SegmentSplice, frames: Frame[]) =>
    frames.map((f) => {
      const v = splice.accept(f);
      return v.kind === 'write' ? (v.bytes?.toString() ?? null) : v.kind === 'end' ? 'END' : `BREAK${v.cannotTake ? ' (cannot take)' : ''}`;
    });

  it('passes the preamble once and each segment once across a continuation', () => {
    const splice = new SegmentSplice('primary');
    expect(written(splice, [H(), S(0), S(1)])).toEqual(['WAV!', 's0', 's1']);
    splice.startPart('hot', 'killed');
    expect(written(splice, [H(), S(2), S(3), { kind: 'E', count: 4 }])).toEqual([null, 's2', 's3', 'END']);
    expect(splice.moves).toEqual([{ from: 'primary', to: 'hot', atSegment: 2, reason: 'killed' }]);
  });

  it('refuses a continuation with another preamble or from the wrong segment, before it writes anything', () => {
    const other = new SegmentSplice('primary');
    written(other, [H(), S(0)]);
    other.startPart('hot', 'killed');
    expect(written(other, [H('MP3!')])).toEqual(['BREAK (cannot take)']);

    const wrong = new SegmentSplice('primary');
    written(wrong, [H(), S(0)]);
    wrong.startPart('hot', 'killed');
    expect(written(wrong, [H(), S(0)])).toEqual([null, 'BREAK (cannot take)']);
  });

  it('an end frame that counts more segments than came is a break', () => {
    const splice = new SegmentSplice('primary');
    expect(written(splice, [S(0), { kind: 'E', count: 3 }])).toEqual(['s0', 'BREAK']);
  });
});

const event = (data: unknown): SseEvent => {
  const text = typeof data === 'string' ? data : JSON.stringify(data);
  return { raw: `data: ${text}\n\n`, event: undefined, data: text };
};
const chunk = (id: string, delta: object, finish: string | null = null, extra: object = {}) => ({
  id,
  object: 'chat.completion.chunk',
  created: id === 'first' ? 111 : 222,
  model: id === 'first' ? 'm-primary' : 'm-standby',
  choices: [{ index: 0, delta, finish_reason: finish }],
  ...extra,
});

describe('GenerationSplice', () => {
  const chat = describeRequest(
    'POST',
    '/v1/chat/completions',
    Buffer.from(JSON.stringify({ model: 'm', stream: true, max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] })),
  ).generation!;

  it('passes the first part byte for byte and rewrites a continuation to the first id and created, keeping its model', () => {
    const splice = new GenerationSplice(chat, 1 << 20, 'primary');
    const first = [event(chunk('first', { role: 'assistant', content: '' })), event(chunk('first', { content: 'one ' })), event(chunk('first', { content: 'two ' }))];
    expect(first.map((e) => splice.accept(e))).toEqual(first.map((e) => ({ kind: 'write', text: e.raw })));
    expect(splice.text).toBe('one two ');
    expect(splice.produced).toBe(2);
    splice.startPart('hot', 'reset');
    expect(splice.accept(event(chunk('second', { role: 'assistant', content: '' })))).toEqual({ kind: 'write', text: '' });
    const next = splice.accept(event(chunk('second', { role: 'assistant', content: 'three ' })));
    expect(next.kind).toBe('write');
    const rewritten = JSON.parse((next as { text: string }).text.slice('data: '.length));
    expect(rewritten).toMatchObject({ id: 'first', created: 111, model: 'm-standby', choices: [{ delta: { content: 'three ' } }] });
    expect(rewritten.choices[0].delta.role).toBeUndefined();
    const final = JSON.parse((splice.accept(event(chunk('second', {}, 'length'))) as { text: string }).text.slice(6));
    expect(final.understudy).toEqual({ continued: [{ from: 'primary', to: 'hot', atChars: 8, atTokens: 2, reason: 'reset' }] });
    expect(splice.finished).toBe(true);
  });

  it('adds both parts in usage: completion tokens of each, the prompt without the prefill', () => {
    const splice = new GenerationSplice(chat, 1 << 20, 'primary');
    for (const word of ['a ', 'b ', 'c ']) splice.accept(event(chunk('first', { content: word })));
    splice.startPart('hot', 'reset');
    splice.accept(event(chunk('second', { content: 'd ' })));
    const usage = JSON.parse(
      (splice.accept(event({ ...chunk('second', {}), choices: [], usage: { prompt_tokens: 8, completion_tokens: 1, total_tokens: 9 } })) as { text: string }).text.slice(6),
    );
    expect(usage.usage).toEqual({ prompt_tokens: 5, completion_tokens: 4, total_tokens: 9 });
    expect(usage.understudy.usage).toEqual([
      { instance: 'primary', completion_tokens: 3, counted: true },
      { instance: 'hot', prompt_tokens: 8, completion_tokens: 1, total_tokens: 9 },
    ]);
  });

  it('breaks at an in-band error or a malformed chunk, and knows what it cannot continue', () => {
    const splice = new GenerationSplice(chat, 5, 'primary');
    expect(splice.accept(event({ error: { message: 'engine died' } }))).toMatchObject({ kind: 'break', inBand: true });
    expect(splice.accept(event('{"id": "x", "choices": [{"delta": {"content": "bro'))).toMatchObject({ kind: 'break', reason: 'a malformed chunk (not JSON)' });
    splice.accept(event(chunk('first', { content: 'longer than five' })));
    expect(splice.blocked).toBe('its text grew past streams.keepText');
    const tools = new GenerationSplice(chat, 1000, 'primary');
    tools.accept(event(chunk('first', { tool_calls: [{ index: 0, function: { arguments: '{' } }] })));
    expect(tools.blocked).toBe('it calls tools');
    const thinking = new GenerationSplice(chat, 1000, 'primary');
    thinking.accept(event(chunk('first', { reasoning_content: 'Let me think' })));
    expect(thinking.blocked).toMatch(/reasoning/);
    expect(new GenerationSplice(chat, 1000, 'primary').accept(event({ choices: [null] }))).toMatchObject({ kind: 'break', inBand: true });
    expect(new GenerationSplice(chat, 1000, 'primary').accept(event(chunk('first', {}, 'abort')))).toMatchObject({ kind: 'break', inBand: true });
  });

  it('drops whitespace the continuation writes again after a prefill that templates trimmed, and no more', () => {
    const splice = new GenerationSplice(chat, 1 << 20, 'primary');
    for (const piece of ['Title', ':\n\n']) splice.accept(event(chunk('first', { content: piece })));
    splice.startPart('hot', 'reset');
    const texts = ['\n', '\nBody', ' text'].map((piece) => {
      const verdict = splice.accept(event(chunk('second', { content: piece })));
      return verdict.kind === 'write' && verdict.text !== '' ? JSON.parse(verdict.text.slice(6)).choices[0].delta.content : null;
    });
    expect(texts).toEqual([null, 'Body', ' text']);
    expect(splice.text).toBe('Title:\n\nBody text');
  });

  it('with several choices, is whole only when every choice has ended', () => {
    const n2 = describeRequest('POST', '/v1/chat/completions', Buffer.from(JSON.stringify({ model: 'm', stream: true, n: 2, messages: [{ role: 'user', content: 'hi' }] }))).generation!;
    const splice = new GenerationSplice(n2, 1000, 'primary');
    const choice = (index: number, finish: string | null) => event({ id: 'x', choices: [{ index, delta: { content: 'a' }, finish_reason: finish }] });
    splice.accept(choice(0, null));
    splice.accept(choice(1, null));
    splice.accept(choice(0, 'stop'));
    expect(splice.complete).toBe(false);
    splice.accept(choice(1, 'stop'));
    expect(splice.complete).toBe(true);
  });
});

describe('continuation requests', () => {
  const body = { model: 'm', stream: true, max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] };
  const generation = (over: object, path = '/v1/chat/completions') => describeRequest('POST', path, Buffer.from(JSON.stringify({ ...body, ...over }))).generation!;
  const asked = (buffer: Buffer) => JSON.parse(buffer.toString());

  it('vLLM shape: a final assistant message, continue_final_message, no generation prompt, max_tokens lowered', () => {
    expect(asked(continuationBody(generation({}), 'one two ', 2, 'continue-final-message'))).toEqual({
      ...body,
      max_tokens: 8,
      // Templates trim the message they continue, so the trailing space is not sent.
      messages: [...body.messages, { role: 'assistant', content: 'one two' }],
      continue_final_message: true,
      add_generation_prompt: false,
    });
  });

  it('llama.cpp shape: the final assistant message alone; a client prefill is extended, not doubled', () => {
    expect(asked(continuationBody(generation({ max_tokens: undefined, max_completion_tokens: 5 }), 'x ', 1, 'assistant-prefill'))).toMatchObject({
      max_completion_tokens: 4,
      messages: [...body.messages, { role: 'assistant', content: 'x' }],
    });
    const prefilled = generation({ messages: [...body.messages, { role: 'assistant', content: 'Sure: ' }] });
    expect(asked(continuationBody(prefilled, 'x ', 1, 'assistant-prefill')).messages).toEqual([...body.messages, { role: 'assistant', content: 'Sure: x' }]);
  });

  it('completions: the prompt with the text so far', () => {
    const completion = generation({ messages: undefined, prompt: 'Once upon' }, '/v1/completions');
    expect(completion.kind).toBe('completions');
    expect(asked(continuationBody(completion, ' a time', 2, 'completions'))).toMatchObject({ prompt: 'Once upon a time', max_tokens: 8 });
  });

  it('knows what is not a generation, and what cannot be continued', () => {
    expect(describeRequest('POST', '/v1/chat/completions', Buffer.from(JSON.stringify({ ...body, stream: false }))).generation).toBeUndefined();
    expect(describeRequest('POST', '/v1/embeddings', Buffer.from(JSON.stringify(body))).generation).toBeUndefined();
    expect(describeRequest('POST', '/v1/infer', Buffer.from('not json')).model).toBeUndefined();
    expect(describeRequest('POST', '/v1/audio/speech', Buffer.from('{"model":"tts-1"}')).model).toBe('tts-1');
    expect(generation({ n: 2 }).notContinuable).toMatch(/several choices/);
    expect(generation({ response_format: { type: 'json_schema' } }).notContinuable).toMatch(/structured output/);
    expect(generation({ messages: undefined, prompt: ['a', 'b'] }, '/v1/completions').notContinuable).toMatch(/not one string/);
  });
});
