// A long narration streamed through Understudy from the example espeak-ng server, whose
// process is SIGKILLed in the middle: the client's audio must be, sentence by sentence,
// the audio of an uninterrupted run.
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { closeAllGateways, on, primaryAndStandby, startGateway } from '../support/gateway.js';
import { bytes, parseFrames, segmentsOf, speak, startTtsServer, stopAllTtsServers } from '../support/tts.js';

afterEach(async () => {
  await closeAllGateways();
  await stopAllTtsServers();
});

const PLACES = ['harbour', 'lighthouse', 'valley', 'bridge', 'garden', 'market', 'station', 'forest', 'river', 'tower'];
const DEEDS = ['stood quiet', 'woke early', 'shone brightly', 'waited for rain', 'heard the bells', 'kept its secrets'];
/** About 120 sentences, ten minutes of speech: far more audio than the sockets between the processes hold. */
const NARRATION = Array.from({ length: 120 }, (_, i) => `The ${PLACES[i % PLACES.length]} ${DEEDS[i % DEEDS.length]} on day ${i + 1}.`).join(' ');

describe('a narration whose TTS server dies mid-stream', () => {
  it('continues on the standby from the first sentence the client lacks: no gap, no repeat, the same bytes', async () => {
    const [primary, standby, reference] = await Promise.all([startTtsServer('primary'), startTtsServer('standby'), startTtsServer('reference')]);
    const gateway = await startGateway(primaryAndStandby(primary.url, standby.url));
    await gateway.event(on.active('primary'));
    await gateway.event(on.state('standby', 'ready'));

    // The uninterrupted run, framed, from a third process: the sentence boundaries to compare by.
    const whole = parseFrames((await speak(reference, { input: NARRATION }, { 'x-understudy-segments': '1' })).body);
    const preamble = whole[0]!.kind === 'H' ? whole[0]!.payload : Buffer.alloc(0);
    const sentences = segmentsOf(whole);
    expect(sentences.length).toBe(120);

    const response = await request(`${gateway.url}/v1/audio/speech`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'espeak-ng', voice: 'en-us', input: NARRATION }),
    });
    expect(response.statusCode).toBe(200);
    expect(response.headers['x-understudy-instance']).toBe('primary');
    // The client is framed-protocol-free: it gets a plain streamed WAV.
    expect(response.headers['x-understudy-segments']).toBeUndefined();
    const pieces: Buffer[] = [];
    let received = 0;
    let killed = false;
    for await (const piece of response.body) {
      pieces.push(piece as Buffer);
      received += (piece as Buffer).length;
      // A quarter MiB of ten: most of the narration is not even synthesised yet.
      if (!killed && received > 256 * 1024) {
        killed = true;
        primary.proc.kill('SIGKILL');
      }
    }
    const audio = Buffer.concat(pieces);

    const continued = await gateway.event((e) => e.type === 'stream-continued', 5000);
    expect(continued).toMatchObject({ from: 'primary', to: 'standby', stream: 'segments' });
    const at = (continued as { atSegment: number }).atSegment;
    expect(at).toBeGreaterThan(0);
    expect(at).toBeLessThan(120);

    // Sentence by sentence against the uninterrupted run.
    expect(bytes(audio.subarray(0, preamble.length), preamble)).toBe('identical');
    let offset = preamble.length;
    const compared = sentences.map((s) => {
      const mine = audio.subarray(offset, offset + s.payload.length);
      offset += s.payload.length;
      return bytes(mine, s.payload);
    });
    expect(compared.filter((c) => c !== 'identical')).toEqual([]);
    expect(audio.length).toBe(offset);
  });
});
