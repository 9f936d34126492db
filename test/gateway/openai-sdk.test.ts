import OpenAI from 'openai';
import { afterEach, describe, expect, it } from 'vitest';
import { expectedText, renderChat } from '../fixtures/llm-model.mjs';
import { closeAllGateways, on, primaryAndStandby, startGateway } from '../support/gateway.js';
import { startLlmServer, stopAllLlmServers } from '../support/llm.js';
import { startTtsServer, stopAllTtsServers } from '../support/tts.js';

afterEach(async () => {
  await closeAllGateways();
  await stopAllLlmServers();
  await stopAllTtsServers();
});

/** The samples of a non-streamed WAV from the example server: its data chunk's size in bytes. */
function wavDataBytes(wav: Buffer): number {
  expect(wav.subarray(0, 4).toString('ascii')).toBe('RIFF');
  expect(wav.subarray(8, 12).toString('ascii')).toBe('WAVE');
  const data = wav.indexOf('data', 12, 'ascii');
  expect(data).toBeGreaterThan(0);
  return wav.readUInt32LE(data + 4);
}

const MODEL = 'fixture-llm';

describe('the official openai SDK as the client', () => {
  it("its streaming helper sees one complete answer when the primary is SIGKILLed mid-stream", async () => {
    const [primary, standby] = await Promise.all([
      startLlmServer({ name: 'primary', tokenDelayMs: 15 }),
      startLlmServer({ name: 'standby', tokenDelayMs: 15 }),
    ]);
    const gateway = await startGateway(primaryAndStandby(primary.url, standby.url));
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

describe("the openai SDK's own text-to-speech example, through the gateway to the bundled TTS server", () => {
  it('speaks with voice "alloy", refuses a format it cannot make with a 400 that says so, and honours speed', async () => {
    const [primary, standby] = await Promise.all([startTtsServer('primary'), startTtsServer('standby')]);
    const gateway = await startGateway(primaryAndStandby(primary.url, standby.url));
    await gateway.event(on.active('primary'));
    const client = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: 'not-needed', maxRetries: 0 });

    // As the SDK's README has it (model, voice, input, instructions), asking for WAV.
    const input = 'Today is a wonderful day to build something people love!';
    const speech = await client.audio.speech.create({ model: 'gpt-4o-mini-tts', voice: 'alloy', input, instructions: 'Speak in a cheerful and positive tone.', response_format: 'wav' });
    expect(speech.headers.get('content-type')).toBe('audio/wav');
    const normal = wavDataBytes(Buffer.from(await speech.arrayBuffer()));
    expect(normal).toBeGreaterThan(22_050); // more than half a second of 16-bit samples at 22,050 Hz

    // Every standard voice name is taken.
    for (const voice of ['ash', 'ballad', 'coral', 'echo', 'fable', 'onyx', 'nova', 'sage', 'shimmer', 'verse'] as const) {
      const answer = await client.audio.speech.create({ model: 'tts-1', voice, input: 'Hello.', response_format: 'wav' });
      expect(answer.headers.get('content-type'), voice).toBe('audio/wav');
      await answer.arrayBuffer();
    }

    // mp3 (OpenAI's default) cannot be made here: a clear 400 naming the field, never WAV bytes called mp3.
    const refused = await client.audio.speech.create({ model: 'tts-1', voice: 'alloy', input, response_format: 'mp3' }).catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(OpenAI.BadRequestError);
    expect((refused as InstanceType<typeof OpenAI.BadRequestError>).message).toMatch(/response_format "mp3".*"wav"/);
    expect((refused as InstanceType<typeof OpenAI.BadRequestError>).param).toBe('response_format');

    // Twice the speed: about half the samples.
    const fast = wavDataBytes(Buffer.from(await (await client.audio.speech.create({ model: 'tts-1', voice: 'alloy', input, speed: 2, response_format: 'wav' })).arrayBuffer()));
    expect(fast / normal).toBeGreaterThan(0.35);
    expect(fast / normal).toBeLessThan(0.7);
  });
});
