// The example TTS server (examples/tts-server) speaking Understudy's segmented-stream
// protocol (docs/streams.md): asked with X-Understudy-Segments: 1, a streamed answer is
// framed sentence by sentence, and X-Understudy-Resume-From: k continues it from
// sentence k, byte for byte as the uninterrupted answer would have it.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { bytes, described, parseFrames, segmentsOf, speak, startTtsServer, stopAllTtsServers, type Frame, type Server } from '../support/tts.js';

const TEXT =
  'The lighthouse stood on the rock. Its keeper climbed the stairs. He lit the lamp. ' +
  'Ships passed safely. The wind rose at midnight. Rain beat on the glass. The lamp held. Morning came.';
const SENTENCES = 8;

let a: Server;
let b: Server;

// Two fresh servers, so that byte comparisons are made between processes: a sentence's
// bytes must not depend on which process synthesised it, or what it synthesised before
// (see the last test).
beforeEach(async () => {
  [a, b] = await Promise.all([startTtsServer('primary'), startTtsServer('standby')]);
});

afterEach(stopAllTtsServers);

const SEGMENTS = { 'x-understudy-segments': '1' };
const resume = (k: number | string) => ({ ...SEGMENTS, 'x-understudy-resume-from': String(k) });
const head = (frames: Frame[]) => (frames[0]?.kind === 'H' ? frames[0].payload : Buffer.alloc(0));

describe('example tts server: segmented streams', () => {
  it('answers as before without the request header: a streamed WAV, unframed', async () => {
    const { response, body } = await speak(a, { input: TEXT });
    expect(response.status, a.output()).toBe(200);
    expect(response.headers.get('x-understudy-segments')).toBeNull();
    expect(response.headers.get('content-length')).toBeNull();
    expect(response.headers.get('content-type')).toBe('audio/wav');
    expect(response.headers.get('x-sample-rate')).toBe('22050');
    expect(body.toString('ascii', 0, 4)).toBe('RIFF');
    // The streamed WAV header claims the largest size; the rest is the samples.
    expect(body.readUInt32LE(40)).toBe(0xffffffff);
    expect(body.length).toBeGreaterThan(44 + 8 * 22_050); // over 4 seconds of 16-bit audio
  });

  it('frames a streamed answer: the WAV header, consecutive sentences, the count, and the same bytes', async () => {
    const plain = await speak(a, { input: TEXT });
    const { response, body } = await speak(b, { input: TEXT }, { 'X-Understudy-Segments': '1' });
    expect(response.status, b.output()).toBe(200);
    expect(response.headers.get('x-understudy-segments')).toBe('1');
    expect(response.headers.get('x-understudy-resume-from')).toBeNull();
    expect(response.headers.get('content-length')).toBeNull();
    expect(response.headers.get('content-type')).toBe('audio/wav');
    expect(response.headers.get('x-model-version')).toBe('2.1');
    expect(response.headers.get('x-instance-name')).toBe('standby');
    expect(response.headers.get('x-sample-rate')).toBe('22050');

    const frames = parseFrames(body);
    expect(frames[0]?.kind).toBe('H');
    expect(bytes(head(frames), plain.body.subarray(0, 44))).toBe('identical');
    const segments = segmentsOf(frames);
    expect(segments.map((s) => s.index)).toEqual([...Array(SENTENCES).keys()]);
    expect(segments.every((s) => s.payload.length > 0 && s.payload.length % 2 === 0)).toBe(true);
    expect(frames.at(-1)).toEqual({ kind: 'E', count: SENTENCES });
    expect(frames).toHaveLength(SENTENCES + 2);
    // Unframed, it is the very answer a client without the protocol gets.
    expect(bytes(Buffer.concat([head(frames), ...segments.map((s) => s.payload)]), plain.body)).toBe('identical');
  });

  it('resumes from sentence k: echoes the header, the same preamble, then sentences k.. and the whole count', async () => {
    const full = parseFrames((await speak(a, { input: TEXT }, SEGMENTS)).body);
    for (const k of [0, 3, SENTENCES - 1]) {
      const { response, body } = await speak(b, { input: TEXT }, resume(k));
      expect(response.status, b.output()).toBe(200);
      expect(response.headers.get('x-understudy-segments')).toBe('1');
      expect(response.headers.get('x-understudy-resume-from')).toBe(String(k));
      expect(response.headers.get('content-length')).toBeNull();
      const frames = parseFrames(body);
      expect(frames[0]?.kind).toBe('H');
      expect(bytes(head(frames), head(full))).toBe('identical');
      expect(frames.slice(1).map((f) => (f.kind === 'S' ? f.index : f.kind))).toEqual([...[...Array(SENTENCES).keys()].slice(k), 'E']);
      expect(frames.at(-1)).toEqual({ kind: 'E', count: SENTENCES });
    }
    // A resume is faster: the sentences before k are not synthesised.
    const timed = async (headers: Record<string, string>) => {
      const started = performance.now();
      await speak(b, { input: TEXT }, headers);
      return performance.now() - started;
    };
    const whole = Math.min(await timed(SEGMENTS), await timed(SEGMENTS));
    const last = Math.min(await timed(resume(SENTENCES - 1)), await timed(resume(SENTENCES - 1)));
    expect(last).toBeLessThan(whole);
  });

  it('refuses a resume it cannot honour with a 400 naming the header', async () => {
    const cases: [Record<string, string>, Record<string, unknown>][] = [
      [resume(SENTENCES), { input: TEXT }],
      [resume('99999999999999999999'), { input: TEXT }],
      [resume('two'), { input: TEXT }],
      [resume('1.5'), { input: TEXT }],
      [resume('-1'), { input: TEXT }],
      [resume(''), { input: TEXT }],
      // Without segments, a resume means nothing.
      [{ 'x-understudy-resume-from': '2' }, { input: TEXT }],
      // An answer that is not streamed is not framed, so it cannot be resumed.
      [resume(0), { input: TEXT, stream: false }],
      [resume(0), { input: 'Just one sentence here.' }],
    ];
    for (const [headers, request] of cases) {
      const { response, body } = await speak(a, request, headers);
      expect(response.status, JSON.stringify([headers, request])).toBe(400);
      expect(response.headers.get('x-understudy-segments')).toBeNull();
      expect(response.headers.get('x-understudy-resume-from')).toBeNull();
      expect(JSON.parse(body.toString('utf8'))).toEqual({
        error: { message: expect.stringContaining('X-Understudy-Resume-From'), type: 'invalid_request_error', param: 'X-Understudy-Resume-From', code: null },
      });
    }
  });

  it('does not frame an answer that is not streamed', async () => {
    for (const request of [{ input: 'Just one sentence here.' }, { input: TEXT, stream: false }]) {
      const plain = await speak(a, request);
      const { response, body } = await speak(b, request, SEGMENTS);
      expect(response.status).toBe(200);
      expect(response.headers.get('x-understudy-segments')).toBeNull();
      expect(response.headers.get('content-length')).toBe(String(body.length));
      expect(body.toString('ascii', 0, 4)).toBe('RIFF');
      expect(body.readUInt32LE(40)).toBe(body.length - 44);
      expect(bytes(body, plain.body)).toBe('identical');
    }
  });

  it('sends no preamble frame for raw pcm', async () => {
    const plain = await speak(a, { input: TEXT, response_format: 'pcm' });
    const { response, body } = await speak(b, { input: TEXT, response_format: 'pcm' }, SEGMENTS);
    expect(response.headers.get('content-type')).toBe('audio/pcm');
    expect(response.headers.get('x-understudy-segments')).toBe('1');
    const frames = parseFrames(body);
    expect(frames.some((f) => f.kind === 'H')).toBe(false);
    expect(frames.map((f) => (f.kind === 'S' ? f.index : f.kind))).toEqual([...Array(SENTENCES).keys(), 'E']);
    expect(frames.at(-1)).toEqual({ kind: 'E', count: SENTENCES });
    expect(bytes(Buffer.concat(segmentsOf(frames).map((s) => s.payload)), plain.body)).toBe('identical');

    const resumed = await speak(b, { input: TEXT, response_format: 'pcm' }, resume(6));
    expect(resumed.response.headers.get('x-understudy-resume-from')).toBe('6');
    expect(parseFrames(resumed.body).map((f) => (f.kind === 'S' ? f.index : f.kind))).toEqual([6, 7, 'E']);
  });

  // espeak-ng keeps wave-generator state in process-wide C statics that no call resets
  // (the pitch-flutter phase, Flutter_ix in wavegen.c, moves on with every 64 voiced
  // samples; also the gain control, the cycle count and the random seed). engine.mjs
  // restores a snapshot of the WebAssembly memory, taken per voice after the warm-up,
  // before each sentence, so a sentence's samples depend only on its text, voice and
  // rate: not on what the process synthesised before, nor on which process it is.
  it('a resumed segment is byte-identical to the uninterrupted one, on another process too', async () => {
    const full = parseFrames((await speak(a, { input: TEXT }, SEGMENTS)).body);
    const again = parseFrames((await speak(a, { input: TEXT }, SEGMENTS)).body);
    const elsewhere = parseFrames((await speak(b, { input: TEXT }, resume(5))).body);
    const onA = parseFrames((await speak(a, { input: TEXT }, resume(3))).body);
    expect({
      again: described(again, full),
      elsewhere: described(elsewhere, full),
      onA: described(onA, full),
    }).toEqual({
      again: [...Array(SENTENCES).keys()].map((i) => [i, 'identical']),
      elsewhere: [5, 6, 7].map((i) => [i, 'identical']),
      onA: [3, 4, 5, 6, 7].map((i) => [i, 'identical']),
    });
  });
});
