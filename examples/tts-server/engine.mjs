// The "model": espeak-ng compiled to WebAssembly, run in a worker thread because
// its synthesis call is synchronous and would otherwise block the HTTP event loop.
// It takes one job at a time, { id, text, voice, rate }, and answers
// { id, pcm } (an Int16Array of mono samples) or { id, error }.
import { parentPort } from 'node:worker_threads';
import initEspeak from '@echogarden/espeak-ng-emscripten';

const espeak = new (await initEspeak()).eSpeakNGWorker();

// A voice can be asked for by identifier ("gmw/en-US"), file name ("en-US") or language
// ("en-gb"), in any case. espeak-ng's set_voice takes identifiers but not every
// language, so each name maps to an identifier: for a language, the voice that
// ranks it first (the lowest priority number).
const voices = {};
const ranks = {};
for (const { identifier, languages } of espeak.list_voices()) {
  voices[identifier.toLowerCase()] = identifier;
  voices[identifier.split('/').pop().toLowerCase()] ??= identifier;
  for (const { name, priority } of languages) {
    if (!(priority >= ranks[name])) {
      ranks[name] = priority;
      voices[name] = identifier;
    }
  }
}

let currentVoice;

function synthesize(text, voice, rate) {
  // Loading a voice reads its files again, so only switch when it changes.
  if (voice !== currentVoice) {
    currentVoice = undefined;
    if (espeak.set_voice(voice) !== 0) throw new Error(`espeak-ng could not load voice "${voice}"`);
    currentVoice = voice;
  }
  espeak.set_rate(rate);

  const chunks = [];
  let length = 0;
  espeak.synthesize(text, (samples) => {
    chunks.push(samples);
    length += samples.length;
    return false; // true would abort synthesis
  });

  const pcm = new Int16Array(length);
  let offset = 0;
  for (const chunk of chunks) {
    pcm.set(chunk, offset);
    offset += chunk.length;
  }
  return pcm;
}

// The first few syntheses run 10 to 20 times slower than later ones, so warm up
// before reporting ready, as a model server would.
for (let i = 0; i < 4; i++) synthesize('Warming up the voice before the first request arrives.', 'gmw/en-US', 175);

parentPort.on('message', ({ id, text, voice, rate }) => {
  try {
    // Copied, not transferred: the first detached ArrayBuffer in a thread makes V8 throw
    // away optimised code, which stalled a request by 100 ms or more; a copy costs little.
    parentPort.postMessage({ id, pcm: synthesize(text, voice, rate) });
  } catch (error) {
    parentPort.postMessage({ id, error: error instanceof Error ? error.message : String(error) });
  }
});

parentPort.postMessage({ type: 'ready', sampleRate: espeak.get_samplerate(), voices });
