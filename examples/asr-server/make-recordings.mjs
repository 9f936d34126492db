#!/usr/bin/env node
// Makes "meeting recordings" for the example speech-recognition server: each is a
// sentence of its grammar spoken by the example TTS server's espeak-ng engine
// (examples/tts-server/engine.mjs), written as a 16-bit PCM WAV file, with a list of
// what each file says.
//
//   node make-recordings.mjs --out DIR [--count N] [--grammar meeting.gram]
//        [--rate 175] [--voice en-us] [--sample-rate 22050] [--channels 1]
//
// writes DIR/rec-001.wav ..., DIR/expected.jsonl ({"file","text"} per line) and
// DIR/expected.txt (file<TAB>text per line). With --count larger than the number of
// sentences it cycles through them; the default is one recording per sentence.
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { once } from 'node:events';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ENGINE = new URL('../tts-server/engine.mjs', import.meta.url);
const USAGE =
  'usage: node make-recordings.mjs --out DIR [--count N] [--grammar meeting.gram] [--rate 175] [--voice en-us] [--sample-rate 22050] [--channels 1]';

const options = readOptions();
const sentences = grammarSentences(await readFile(options.grammar, 'utf8'));
if (sentences.length === 0) usage(`${options.grammar} has no public rule of plain alternatives`);
const count = options.count ?? sentences.length;

const engine = await startEngine();
const voice = engine.voices[options.voice.toLowerCase()];
if (!voice) {
  await engine.terminate();
  usage(`espeak-ng has no voice "${options.voice}"`);
}

const sampleRate = options.sampleRate ?? engine.sampleRate;
await mkdir(options.out, { recursive: true });
const digits = Math.max(3, String(count).length);
const expected = [];
for (let i = 0; i < count; i++) {
  const text = sentences[i % sentences.length];
  const file = `rec-${String(i + 1).padStart(digits, '0')}.wav`;
  const pcm = await engine.synthesize(text, voice, options.rate);
  const wav = toWav(pcm, engine.sampleRate, sampleRate, options.channels);
  await writeFile(path.join(options.out, file), wav);
  expected.push({ file, text });
}
await engine.terminate();

await writeFile(path.join(options.out, 'expected.jsonl'), expected.map((entry) => JSON.stringify(entry) + '\n').join(''));
await writeFile(path.join(options.out, 'expected.txt'), expected.map(({ file, text }) => `${file}\t${text}\n`).join(''));
console.log(`wrote ${count} recordings (${sampleRate} Hz, ${options.channels} channel${options.channels > 1 ? 's' : ''}) to ${options.out}`);

/**
 * The sentences of a JSGF grammar whose public rule is a list of plain word
 * alternatives, as in meeting.gram. Anything fancier (rule references, optional or
 * repeated parts, weights, tags) is not expanded; such alternatives are skipped.
 */
function grammarSentences(grammar) {
  const text = grammar.replace(/\/\*[\s\S]*?\*\//g, ' ').replace(/\/\/[^\n]*/g, ' ');
  const rule = /\bpublic\s+<[^>]+>\s*=([^;]*);/.exec(text);
  if (!rule) return [];
  return rule[1]
    .split('|')
    .map((alternative) => alternative.trim().replace(/\s+/g, ' '))
    .filter((alternative) => /^[a-z']+( [a-z']+)*$/i.test(alternative));
}

/** Starts the TTS example's espeak-ng worker, the way its server.mjs does. */
async function startEngine() {
  // engine.mjs is a worker-thread module (it talks through parentPort), so it runs in a Worker.
  const worker = new Worker(ENGINE);
  const [ready] = await Promise.race([
    once(worker, 'message'),
    once(worker, 'exit').then(([code]) => Promise.reject(new Error(`espeak-ng worker exited with code ${code}`))),
  ]);
  const pending = new Map();
  let nextId = 0;
  worker.on('message', ({ id, pcm, error }) => {
    const job = pending.get(id);
    pending.delete(id);
    if (error) job?.reject(new Error(error));
    else job?.resolve(pcm);
  });
  return {
    sampleRate: ready.sampleRate,
    voices: ready.voices,
    synthesize(text, voice, rate) {
      const id = nextId++;
      return new Promise((resolve, reject) => {
        pending.set(id, { resolve, reject });
        worker.postMessage({ id, text, voice, rate });
      });
    },
    terminate: () => worker.terminate(),
  };
}

/**
 * A 16-bit PCM WAV file of the mono samples, resampled (linear interpolation) to
 * sampleRate and copied to every channel, so that recordings can also test the
 * server's downmixing and resampling.
 */
function toWav(samples, fromRate, sampleRate, channels) {
  const frames = Math.max(1, Math.round((samples.length * sampleRate) / fromRate));
  const step = fromRate / sampleRate;
  const data = Buffer.alloc(frames * channels * 2);
  for (let i = 0; i < frames; i++) {
    const position = i * step;
    const left = Math.min(samples.length - 1, Math.floor(position));
    const right = Math.min(samples.length - 1, left + 1);
    const fraction = position - left;
    const value = Math.round(samples[left] * (1 - fraction) + samples[right] * fraction);
    for (let c = 0; c < channels; c++) data.writeInt16LE(value, (i * channels + c) * 2);
  }
  const header = Buffer.alloc(44);
  header.write('RIFF', 0, 'ascii');
  header.writeUInt32LE(36 + data.length, 4);
  header.write('WAVE', 8, 'ascii');
  header.write('fmt ', 12, 'ascii');
  header.writeUInt32LE(16, 16);
  header.writeUInt16LE(1, 20); // PCM
  header.writeUInt16LE(channels, 22);
  header.writeUInt32LE(sampleRate, 24);
  header.writeUInt32LE(sampleRate * channels * 2, 28);
  header.writeUInt16LE(channels * 2, 32);
  header.writeUInt16LE(16, 34);
  header.write('data', 36, 'ascii');
  header.writeUInt32LE(data.length, 40);
  return Buffer.concat([header, data]);
}

function readOptions() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        out: { type: 'string' },
        count: { type: 'string' },
        grammar: { type: 'string', default: path.join(HERE, 'meeting.gram') },
        rate: { type: 'string', default: '175' },
        voice: { type: 'string', default: 'en-us' },
        'sample-rate': { type: 'string' },
        channels: { type: 'string', default: '1' },
      },
    }));
  } catch (error) {
    usage(error.message);
  }
  if (!values.out) usage('--out is required');
  const count = values.count === undefined ? undefined : Number(values.count);
  if (count !== undefined && !(Number.isInteger(count) && count >= 1)) usage('--count must be a whole number from 1');
  const rate = Number(values.rate);
  if (!(Number.isInteger(rate) && rate >= 80 && rate <= 450)) usage('--rate must be 80 to 450 words a minute');
  const sampleRate = values['sample-rate'] === undefined ? undefined : Number(values['sample-rate']);
  if (sampleRate !== undefined && !(Number.isInteger(sampleRate) && sampleRate >= 4000 && sampleRate <= 192_000)) {
    usage('--sample-rate must be 4000 to 192000');
  }
  const channels = Number(values.channels);
  if (!(Number.isInteger(channels) && channels >= 1 && channels <= 8)) usage('--channels must be 1 to 8');
  return { out: values.out, count, grammar: values.grammar, rate, voice: values.voice, sampleRate, channels };
}

function usage(problem) {
  console.error(`${problem}\n${USAGE}`);
  process.exit(2);
}
