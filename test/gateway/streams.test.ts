import { afterEach, describe, expect, it } from 'vitest';
import { expectedText, renderChat } from '../fixtures/llm-model.mjs';
import { closeAllGateways, inferService, on, startGateway, type RunningGateway } from '../support/gateway.js';
import { startLlmServer, stopAllLlmServers, streamGeneration, type LlmFault, type LlmServer, type LlmServerOptions, type StreamRead } from '../support/llm.js';

afterEach(async () => {
  await closeAllGateways();
  await stopAllLlmServers();
});

const MODEL = 'fixture-llm';
const MESSAGES = [{ role: 'user', content: 'Write a long answer about harbours.' }];
const CONTEXT = renderChat(MESSAGES);
const expected = (tokens: number) => expectedText(CONTEXT, tokens, { seed: MODEL });

interface Pair {
  gateway: RunningGateway;
  primary: LlmServer;
  standby: LlmServer;
}

/** A primary and a hot standby behind a gateway; `yaml` is added to the service. */
async function pair(yaml = '', primaryOptions: LlmServerOptions = {}, standbyOptions: LlmServerOptions = {}, standbyYaml = ''): Promise<Pair> {
  const [primary, standby] = await Promise.all([
    startLlmServer({ name: 'primary', tokenDelayMs: 2, ...primaryOptions }),
    startLlmServer({ name: 'standby', tokenDelayMs: 2, ...standbyOptions }),
  ]);
  const gateway = await startGateway(
    inferService(`
instances:
  primary: { tier: primary, url: "${primary.url}" }
  standby: { tier: hot, url: "${standby.url}"${standbyYaml} }
${yaml}`),
  );
  await gateway.event(on.active('primary'));
  await gateway.event(on.state('standby', 'ready'));
  return { gateway, primary, standby };
}

const chat = (url: string, body: Record<string, unknown> = {}, onChunk?: (n: number) => void) =>
  streamGeneration(url, '/v1/chat/completions', { model: MODEL, messages: MESSAGES, max_tokens: 30, stream_options: { include_usage: true }, ...body }, { onChunk });

/** One answer as a client reads it: the ids it was told, the seams, and whether it ended well. */
function shape(read: StreamRead) {
  return {
    status: read.status,
    broken: read.broken,
    ids: [...new Set(read.chunks.map((c) => c.id))].length,
    created: [...new Set(read.chunks.map((c) => c.created))].length,
    finals: read.chunks.filter((c) => c.choices?.[0]?.finish_reason).length,
    roles: read.chunks.filter((c) => c.choices?.[0]?.delta?.role).length,
    done: read.done,
    errors: read.errors.length,
  };
}
const ONE_ANSWER = { status: 200, broken: undefined, ids: 1, created: 1, finals: 1, roles: 1, done: 1, errors: 0 };

describe('a stream cut mid-answer', () => {
  it('SIGKILL of the primary: the client reads one complete answer, continued on the standby with no word lost or repeated', async () => {
    const { gateway, primary, standby } = await pair('', { tokenDelayMs: 15 });
    const read = await chat(gateway.url, { max_tokens: 40 }, (n) => n === 12 && primary.kill('SIGKILL'));
    expect(shape(read)).toEqual(ONE_ANSWER);
    expect(read.text).toBe(expected(40));
    const continued = read.final!.understudy.continued as { from: string; to: string; atTokens: number }[];
    expect(continued).toHaveLength(1);
    expect(continued[0]).toMatchObject({ from: 'primary', to: 'standby' });
    expect(continued[0]!.atTokens).toBeGreaterThanOrEqual(12);
    // The standby was asked to continue the text the client had, for the tokens still owed.
    const [asked] = await standby.log();
    const messages = asked!.request.messages!;
    expect(messages.at(-1)).toEqual({ role: 'assistant', content: expected(continued[0]!.atTokens) });
    expect(asked!.request).toMatchObject({ continue_final_message: true, add_generation_prompt: false, max_tokens: 40 - continued[0]!.atTokens });
    // usage adds both parts: every answer token once, the prompt once; the standby's own figures alongside.
    const usage = read.usage!;
    expect(usage.usage.completion_tokens).toBe(40);
    expect(usage.usage.prompt_tokens).toBe(asked!.request && usage.understudy.usage.at(-1).prompt_tokens - continued[0]!.atTokens);
    expect(usage.understudy.usage.map((p: { instance: string }) => p.instance)).toEqual(['primary', 'standby']);
    // The standby's model field is its own (the same model here), not rewritten.
    expect(read.chunks.at(-1)!.model).toBe(MODEL);
    const event = await gateway.event((e) => e.type === 'stream-continued');
    expect(event).toMatchObject({ from: 'primary', to: 'standby', stream: 'chat', atTokens: continued[0]!.atTokens });
  });

  const breaks: [string, LlmFault][] = [
    ['the connection is reset', { mode: 'cut', after: 9, times: 1 }],
    ['an in-band error event (a GPU out of memory)', { mode: 'error-event', after: 9, times: 1 }],
    ['a malformed chunk', { mode: 'malformed', after: 9, times: 1 }],
    ['the stream ends without its final chunk or [DONE]', { mode: 'no-done', after: 9, times: 1 }],
    ['the stream stalls past timeouts.idle', { mode: 'stall', after: 9, times: 1 }],
  ];
  it.each(breaks)('%s: continued on the standby, the text exactly the uninterrupted answer', async (_what, fault) => {
    const { gateway, primary } = await pair('timeouts: { idle: 300ms }');
    await primary.fault(fault);
    const read = await chat(gateway.url);
    expect(shape(read)).toEqual(ONE_ANSWER);
    expect(read.text).toBe(expected(30));
    expect(read.final!.understudy.continued[0]).toMatchObject({ from: 'primary', to: 'standby', atTokens: 9 });
  });

  it('a completion stream is continued with the text so far after its prompt', async () => {
    const { gateway, primary, standby } = await pair();
    await primary.fault({ mode: 'cut', after: 5, times: 1 });
    const prompt = 'The harbour at night';
    const read = await streamGeneration(gateway.url, '/v1/completions', { model: MODEL, prompt, max_tokens: 20 });
    expect(read.text).toBe(expectedText(prompt, 20, { seed: MODEL, chat: false }));
    expect([read.done, read.errors.length, read.final?.understudy.continued[0].atTokens]).toEqual([1, 0, 5]);
    const [asked] = await standby.log();
    expect(asked!.request).toMatchObject({ prompt: prompt + expectedText(prompt, 5, { seed: MODEL, chat: false }), max_tokens: 15 });
  });

  it('a llama.cpp standby (owned_by llamacpp) is asked in its own shape: a final assistant message, no vLLM flags', async () => {
    const { gateway, primary, standby } = await pair('', {}, { prefill: 'assistant-prefill', ownedBy: 'llamacpp' });
    await primary.fault({ mode: 'cut', after: 6, times: 1 });
    const read = await chat(gateway.url);
    expect(read.text).toBe(expected(30));
    const [asked] = await standby.log();
    expect(asked!.request.continue_final_message).toBeUndefined();
    expect(asked!.request.messages!.at(-1)).toEqual({ role: 'assistant', content: expected(6) });
  });
});

describe('a stream that no instance can continue', () => {
  it('a standby that refuses the prefill is not the last word: the next instance continues it', async () => {
    const [primary, refuses, third] = await Promise.all([
      startLlmServer({ name: 'primary', tokenDelayMs: 2 }),
      startLlmServer({ name: 'refuses', tokenDelayMs: 2, prefill: 'refuse' }),
      startLlmServer({ name: 'third', tokenDelayMs: 2 }),
    ]);
    const gateway = await startGateway(
      inferService(`
instances:
  primary: { tier: primary, url: "${primary.url}" }
  refuses: { tier: hot, url: "${refuses.url}" }
  third: { tier: hot, url: "${third.url}" }
`),
    );
    await gateway.event(on.active('primary'));
    await gateway.event(on.state('refuses', 'ready'));
    await gateway.event(on.state('third', 'ready'));
    await primary.fault({ mode: 'cut', after: 7, times: 1 });
    const read = await chat(gateway.url);
    expect(shape(read)).toEqual(ONE_ANSWER);
    expect(read.text).toBe(expected(30));
    expect(read.final!.understudy.continued.at(-1)).toMatchObject({ to: 'third' });
    // The refusal says nothing of its health: it stays ready.
    expect(gateway.app.service('infer')!.view().instances.find((i) => i.name === 'refuses')!.state).toBe('ready');
  });

  it('only a refusing standby: an in-band error with the original break, no [DONE], never a truncated answer that looks complete', async () => {
    // A continuation waits for a ready instance no longer than timeouts.idle: the client is reading a stream.
    const { gateway, primary, standby } = await pair('timeouts: { idle: 1s }', { tokenDelayMs: 10 }, { prefill: 'refuse' });
    // The primary dies, so only the standby is left to continue (a primary still ready continues its own stream).
    const read = await chat(gateway.url, {}, (n) => n === 8 && primary.kill('SIGKILL'));
    expect(read.status).toBe(200);
    expect(expected(30).startsWith(read.text)).toBe(true);
    expect(read.text.length).toBeGreaterThanOrEqual(expected(8).length);
    expect([read.done, read.final]).toEqual([0, undefined]);
    expect(read.errors).toHaveLength(1);
    const error = read.errors[0]!.error as { code: string; message: string };
    expect(error.code).toBe('STREAM_CUT');
    expect(error.message).toMatch(/the stream from primary broke/);
    expect(error.message).not.toMatch(/prefill is not supported/);
    expect((await standby.log()).map((e) => e.status)).toEqual([400]);
    await gateway.event((e) => e.type === 'stream-cut');
  });

  it('a reasoning stream that breaks is cut, not continued: a prefill cannot carry the thoughts', async () => {
    const { gateway, primary, standby } = await pair('', { tokenDelayMs: 5, reasoningTokens: 5 });
    await primary.fault({ mode: 'cut', after: 4, times: 1 });
    const read = await chat(gateway.url);
    expect([read.done, read.errors[0]?.error.code]).toEqual([0, 'STREAM_CUT']);
    expect(read.errors[0]!.error.message).toMatch(/reasoning/);
    expect(await standby.log()).toEqual([]);
  });

  it('an instance declared prefill: none is never sent a continuation', async () => {
    const { gateway, primary, standby } = await pair('timeouts: { idle: 1s }', { tokenDelayMs: 10 }, {}, ', capabilities: { prefill: none }');
    const read = await chat(gateway.url, {}, (n) => n === 8 && primary.kill('SIGKILL'));
    expect([read.done, read.errors[0]?.error.code]).toEqual([0, 'STREAM_CUT']);
    expect(read.text.length).toBeLessThan(expected(30).length);
    expect(await standby.log()).toEqual([]);
  });
});

describe('before the first token', () => {
  it('a first token later than timeouts.firstToken: the standby answers, nothing reached the client from the primary', async () => {
    const { gateway, primary } = await pair('timeouts: { firstToken: 300ms }');
    await primary.fault({ mode: 'slow-first-token', delayMs: 10_000, times: 1 });
    const read = await chat(gateway.url);
    expect(shape(read)).toEqual(ONE_ANSWER);
    expect(read.text).toBe(expected(30));
    expect(read.final!.understudy).toBeUndefined();
    expect(read.headers.get('x-understudy-instance')).toBe('standby');
  });

  it('a reasoning model that thinks longer than timeouts.firstToken is not timed out: its thoughts are output', async () => {
    const { gateway } = await pair('timeouts: { firstToken: 300ms }', { tokenDelayMs: 40, reasoningTokens: 20 }, { tokenDelayMs: 40, reasoningTokens: 20 });
    const read = await chat(gateway.url, { max_tokens: 3 });
    expect(shape(read)).toEqual(ONE_ANSWER);
    expect(read.headers.get('x-understudy-instance')).toBe('primary');
    expect(read.chunks.filter((c) => c.choices?.[0]?.delta?.reasoning_content)).toHaveLength(20);
    expect(read.text).toBe(expected(3));
  });

  it('a 200 whose stream begins with an error event is a failed attempt: the standby answers', async () => {
    const { gateway, primary } = await pair();
    await primary.fault({ mode: 'error-event', after: 0, times: 1 });
    const read = await chat(gateway.url);
    expect(shape(read)).toEqual(ONE_ANSWER);
    expect(read.headers.get('x-understudy-instance')).toBe('standby');
  });

  it('a silent server (no response head within timeouts.firstByte) is left for the standby, not a 504', async () => {
    const { gateway, primary } = await pair('timeouts: { firstByte: 300ms }');
    await primary.fault({ mode: 'hang', times: 1 });
    const started = Date.now();
    const response = await fetch(`${gateway.url}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ model: MODEL, messages: MESSAGES }) });
    expect(response.status).toBe(200);
    expect(response.headers.get('x-understudy-instance')).toBe('standby');
    expect(Date.now() - started).toBeLessThan(5000);
  });
});
