// The "model": espeak-ng compiled to WebAssembly, run in a worker thread because
// its synthesis call is synchronous and would otherwise block the HTTP event loop.
// It takes one job at a time, { id, text, voice, rate }, and answers
// { id, pcm } (an Int16Array of mono samples) or { id, error }.
import { parentPort } from 'node:worker_threads';
import initEspeak from '@echogarden/espeak-ng-emscripten';

const wasm = await initEspeak();
const espeak = new wasm.eSpeakNGWorker();

// Snapshots of one voice's state, kept for the voices used most recently. Each is about
// a megabyte, and one evicted is rebuilt to the same bytes, so the bound costs only time.
const MAX_VOICE_STATES = 8;
const WARM_UP_TEXT = 'Warming up the voice before the first request arrives.';
const utf8 = new TextEncoder();
const ZEROS = Buffer.alloc(1 << 20);

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

// espeak-ng keeps wave-generator state in C statics that no call resets (the pitch-flutter
// phase, the gain control, the cycle count, the random seed), so a sentence's samples would
// depend on everything the process synthesised before, and a resumed answer, or another
// process, would differ by a few samples in every sentence. So every synthesis starts from
// a snapshot of the WebAssembly memory instead: all of the C state lives there.
//
// A snapshot keeps the memory up to its last non-zero byte (about a megabyte of the 16 MiB),
// and restoring it also zeroes whatever was written above that since: the heap may have
// grown there, or the memory itself grown, and memory past the snapshot was zero when it
// was taken. Memory that has grown stays grown, which changes nothing but when sbrk next
// asks for more.
//
// A restore frees, in effect, everything allocated since the snapshot, so nothing may
// outlive one: strings are copied into memory malloc'd after the restore, never passed to
// the binding as JS strings. Those go through its WebIDL string cache, which reallocates
// itself, from JS, when a string does not fit, and would then free a block that a restore
// had already taken back. The cache's own block is allocated during the warm-up, before
// any snapshot, so every snapshot holds it. Nothing else outlives a call: the binding's
// callback lives in the function table, not the memory, and no file stays open.
function capture() {
  const heap = wasm.HEAPU8;
  const words = new Uint32Array(heap.buffer, 0, heap.length >>> 2);
  let end = words.length;
  while (end > 0 && words[end - 1] === 0) end--;
  return heap.slice(0, end * 4);
}

// Only between calls into espeak-ng: during one, the memory holds its stack.
function restore(snapshot) {
  const heap = wasm.HEAPU8; // a new view once the memory has grown
  heap.set(snapshot);
  // Comparing with zeros reads memory that is mostly untouched, so it is much cheaper
  // than copying all of it.
  const bytes = Buffer.from(heap.buffer, heap.byteOffset, heap.length);
  for (let at = snapshot.length; at < bytes.length; at += ZEROS.length) {
    const end = Math.min(at + ZEROS.length, bytes.length);
    if (bytes.compare(ZEROS, 0, end - at, at, end) !== 0) bytes.fill(0, at, end);
  }
}

/** Copies text into wasm memory as a NUL-terminated UTF-8 string; only valid until the next restore. */
function cString(text) {
  const encoded = utf8.encode(text);
  const pointer = wasm._malloc(encoded.length + 1);
  if (!pointer) throw new Error(`espeak-ng could not allocate ${encoded.length + 1} bytes`);
  const heap = wasm.HEAPU8; // after the malloc, which may grow the memory
  heap.set(encoded, pointer);
  heap[pointer + encoded.length] = 0;
  return pointer;
}

function loadVoice(voice) {
  const pointer = cString(voice);
  const status = espeak.set_voice(pointer);
  wasm._free(pointer);
  if (status !== 0) throw new Error(`espeak-ng could not load voice "${voice}"`);
}

function speak(text) {
  const chunks = [];
  let length = 0;
  const pointer = cString(text);
  try {
    espeak.synthesize(pointer, (samples) => {
      chunks.push(samples);
      length += samples.length;
      return false; // true would abort synthesis
    });
  } finally {
    wasm._free(pointer);
  }

  const pcm = new Int16Array(length);
  let offset = 0;
  for (const chunk of chunks) {
    pcm.set(chunk, offset);
    offset += chunk.length;
  }
  return pcm;
}

// The first few syntheses run 10 to 20 times slower than later ones, so warm up
// before reporting ready, as a model server would. This also allocates the binding's
// string cache (see above) before the first snapshot.
loadVoice('gmw/en-US');
espeak.set_rate(175);
for (let i = 0; i < 4; i++) speak(WARM_UP_TEXT);
if (wasm.FS.streams.some((stream, fd) => stream && fd > 2)) throw new Error('espeak-ng left a file open after the warm-up');
const base = capture();

// Voice states, least recently used first (a Map keeps insertion order).
const voiceStates = new Map();

function voiceState(voice) {
  let state = voiceStates.get(voice);
  if (state) {
    voiceStates.delete(voice);
    voiceStates.set(voice, state);
    return state;
  }
  // Built from the same base in every process, whatever this one synthesised before.
  // Loading a voice reads its files again, so it happens once, not before every sentence.
  restore(base);
  loadVoice(voice);
  state = capture();
  voiceStates.set(voice, state);
  if (voiceStates.size > MAX_VOICE_STATES) voiceStates.delete(voiceStates.keys().next().value);
  return state;
}

// The warm-up voice's state is ready before the first request, which need not wait for it.
voiceState('gmw/en-US');

function synthesize(text, voice, rate) {
  // Restored before anything is allocated for this call, so that the call's own
  // allocations land in the snapshot's heap.
  restore(voiceState(voice));
  espeak.set_rate(rate);
  return speak(text);
}

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
