import OpenAI from 'openai';
import { afterEach, describe, expect, it } from 'vitest';
import { expectedText, renderChat } from '../fixtures/llm-model.mjs';
import { closeAllGateways, inferService, on, startGateway } from '../support/gateway.js';
import { startLlmServer, stopAllLlmServers } from '../support/llm.js';

afterEach(async () => {
  await closeAllGateways();
  await stopAllLlmServers();
});

const MODEL = 'fixture-llm';

describe('the official openai SDK as the client', () => {
  it("its streaming helper sees one complete answer when the primary is SIGKILLed mid-stream", async () => {
    const [primary, standby] = await Promise.all([
      startLlmServer({ name: 'primary', tokenDelayMs: 15 }),
      startLlmServer({ name: 'standby', tokenDelayMs: 15 }),
    ]);
    const gateway = await startGateway(
      inferService(`
instances:
  primary: { tier: primary, url: "${primary.url}" }
  standby: { tier: hot, url: "${standby.url}" }
`),
    );
    await gateway.event(on.active('primary'));
    await gateway.event(on.state('standby', 'ready'));

    const client = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: 'not-needed', maxRetries: 0 });
    const messages = [{ role: 'user' as const, content: 'Tell me about the lighthouse keeper.' }];
    let deltas = 0;
    const stream = client.chat.completions.stream({ model: MODEL, messages, max_tokens: 40, stream_options: { include_usage: true } });
    stream.on('content', () => {
      if (++deltas === 10) primary.kill('SIGKILL');
    });
    const completion = await stream.finalChatCompletion();

    expect(completion.choices).toHaveLength(1);
    expect(completion.choices[0]!.message.content).toBe(expectedText(renderChat(messages), 40, { seed: MODEL }));
    expect(completion.choices[0]!.finish_reason).toBe('length');
    expect(completion.usage?.completion_tokens).toBe(40);
    expect(deltas).toBeGreaterThanOrEqual(39);
    // It really was continued: the primary died under it.
    expect((await standby.log()).length).toBe(1);
    await gateway.event((e) => e.type === 'stream-continued');
  });
});
