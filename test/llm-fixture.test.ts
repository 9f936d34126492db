import { afterEach, describe, expect, it } from 'vitest';
import { expectedText, renderChat } from './fixtures/llm-model.mjs';
import { startLlmServer, stopAllLlmServers, streamGeneration } from './support/llm.js';

afterEach(stopAllLlmServers);

const MODEL = 'fixture-llm';
const MESSAGES = [{ role: 'user', content: 'Tell me a story about a lighthouse.' }];
const CONTEXT = renderChat(MESSAGES);

describe('imitation LLM server', () => {
  it('streams a deterministic answer in vLLM chunks, with usage, then one [DONE]', async () => {
    const llm = await startLlmServer({ tokenDelayMs: 0 });
    const a = await streamGeneration(llm.url, '/v1/chat/completions', { model: MODEL, messages: MESSAGES, max_tokens: 12, stream_options: { include_usage: true } });
    const b = await streamGeneration(llm.url, '/v1/chat/completions', { model: MODEL, messages: MESSAGES, max_tokens: 12 });
    expect(a.status).toBe(200);
    expect(a.text).toBe(expectedText(CONTEXT, 12, { seed: MODEL }));
    expect(b.text).toBe(a.text);
    expect(a.chunks[0]!.choices[0].delta).toEqual({ role: 'assistant', content: '' });
    expect(a.final?.choices[0].finish_reason).toBe('length');
    expect(a.usage?.usage).toMatchObject({ completion_tokens: 12 });
    expect(a.done).toBe(1);
    expect(typeof a.chunks[1]!.x_sent_at).toBe('number');
    const models = (await (await fetch(`${llm.url}/v1/models`)).json()) as { data: { id: string; owned_by: string; max_model_len: number }[] };
    expect(models.data[0]).toMatchObject({ id: MODEL, owned_by: 'vllm', max_model_len: 4096 });
  });

  it('continues a final assistant message to exactly the uninterrupted text, in each prefill shape', async () => {
    const full = expectedText(CONTEXT, 20, { seed: MODEL });
    const head = expectedText(CONTEXT, 7, { seed: MODEL });
    const vllm = await startLlmServer({ tokenDelayMs: 0 });
    const llamacpp = await startLlmServer({ tokenDelayMs: 0, prefill: 'assistant-prefill', ownedBy: 'llamacpp' });
    const prefilled = [...MESSAGES, { role: 'assistant', content: head }];
    const continued = await streamGeneration(vllm.url, '/v1/chat/completions', { model: MODEL, messages: prefilled, max_tokens: 13, continue_final_message: true, add_generation_prompt: false });
    expect(head + continued.text).toBe(full);
    const llama = await streamGeneration(llamacpp.url, '/v1/chat/completions', { model: MODEL, messages: prefilled, max_tokens: 13 });
    expect(head + llama.text).toBe(full);
    // Without the flag vLLM closes the assistant message and starts a new answer: different text.
    const fresh = await streamGeneration(vllm.url, '/v1/chat/completions', { model: MODEL, messages: prefilled, max_tokens: 13 });
    expect(head + fresh.text).not.toBe(full);
    const both = await streamGeneration(vllm.url, '/v1/chat/completions', { model: MODEL, messages: prefilled, continue_final_message: true });
    expect(both.status).toBe(400);

    const prompt = 'Once upon a time';
    const whole = await streamGeneration(vllm.url, '/v1/completions', { model: MODEL, prompt, max_tokens: 10 });
    const start = expectedText(prompt, 4, { seed: MODEL, chat: false });
    const rest = await streamGeneration(vllm.url, '/v1/completions', { model: MODEL, prompt: prompt + start, max_tokens: 6 });
    expect(start + rest.text).toBe(whole.text);
  });

  it('refuses prefills, too-long requests and unknown models as real servers do', async () => {
    const llm = await startLlmServer({ prefill: 'refuse', contextWindow: 30 });
    const prefilled = await streamGeneration(llm.url, '/v1/chat/completions', { model: MODEL, messages: [...MESSAGES, { role: 'assistant', content: 'Once' }] });
    expect(prefilled.status).toBe(400);
    const long = await streamGeneration(llm.url, '/v1/chat/completions', { model: MODEL, messages: MESSAGES, max_tokens: 100 });
    expect(long.status).toBe(400);
    expect(long.raw).toMatch(/maximum context length is 30 tokens/);
    expect((await streamGeneration(llm.url, '/v1/chat/completions', { model: 'other', messages: MESSAGES })).status).toBe(404);
  });

  it('breaks a stream on cue: cut, in-band error, no final chunk, status with Retry-After', async () => {
    const llm = await startLlmServer({ tokenDelayMs: 0 });
    const ask = () => streamGeneration(llm.url, '/v1/chat/completions', { model: MODEL, messages: MESSAGES, max_tokens: 10 });

    await llm.fault({ mode: 'cut', after: 3, times: 1 });
    const cut = await ask();
    expect(cut.broken).toBeDefined();
    expect((await ask()).final).toBeDefined(); // times: 1

    await llm.fault({ mode: 'error-event', after: 2, times: 1 });
    const errored = await ask();
    expect(errored.errors).toHaveLength(1);
    expect(errored.final).toBeUndefined();
    expect(errored.text).toBe(expectedText(CONTEXT, 2, { seed: MODEL }));

    await llm.fault({ mode: 'no-done', after: 4, times: 1 });
    const unfinished = await ask();
    expect(unfinished.broken).toBeUndefined();
    expect([unfinished.done, unfinished.final]).toEqual([0, undefined]);

    await llm.fault({ mode: 'status', status: 429, retryAfter: 1, times: 1 });
    const limited = await fetch(`${llm.url}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ model: MODEL, messages: MESSAGES }) });
    expect([limited.status, limited.headers.get('retry-after')]).toEqual([429, '1']);
    const entries = await llm.log();
    expect(entries.map((e) => e.end)).toEqual(['cut', 'complete', 'error-event', 'no-done', 'fault-status']);
  });
});
