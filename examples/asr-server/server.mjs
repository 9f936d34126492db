#!/usr/bin/env node
// A small, real speech-recognition model server (CMU pocketsphinx, restricted to a
// sentence grammar) with an OpenAI-compatible POST /v1/audio/transcriptions, for
// trying Understudy against. Needs Debian's pocketsphinx and pocketsphinx-en-us
// packages: run install.sh next to this file.
import { spawn } from 'node:child_process';
import { accessSync, constants, mkdtempSync, rmSync, statSync } from 'node:fs';
import { readFile, unlink, writeFile } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const RECOGNIZER = 'pocketsphinx_continuous';
const MODEL_ROOT = '/usr/share/pocketsphinx/model/en-us';
const DEFAULT_HMM = path.join(MODEL_ROOT, 'en-us');
const DEFAULT_DICT = path.join(MODEL_ROOT, 'cmudict-en-us.dict');
const DEFAULT_GRAMMAR = path.join(HERE, 'meeting.gram');
// OpenAI's limit for an uploaded audio file: about 13 minutes of 16 kHz mono.
const MAX_BODY_BYTES = 25 * 1024 * 1024;
const TARGET_RATE = 16_000; // what the en-us acoustic model was trained on
// A recogniser process gets this long plus the audio's duration before it is killed.
const RECOGNIZE_GRACE_MS = 30_000;
// Draining waits longer than the TTS example does: one transcription can take seconds.
const DRAIN_TIMEOUT_MS = 10_000;
// Beams much wider than the defaults (1e-48, 1e-48, 7e-29): with a grammar of a few
// dozen sentences the search stays small, and the default beams sometimes prune the
// right path, when pocketsphinx answers nothing.
const SEARCH_BEAMS = ['-beam', '1e-80', '-pbeam', '1e-80', '-wbeam', '1e-60'];
// Half a bit of noise, always the same (a fixed seed; the default seed is the clock), so
// that stretches of digital silence do not upset the front end's noise estimate.
const DITHER = ['-dither', 'yes', '-seed', '1'];
const RESPONSE_FORMATS = new Set(['json', 'text', 'verbose_json']);
const ROUTES = { '/health': 'GET', '/version': 'GET', '/v1/audio/transcriptions': 'POST' };

const USAGE =
  'usage: node server.mjs [--port 7201] [--host 127.0.0.1] [--model-version 1.0] [--name primary] [--load-delay 0]\n' +
  '                       [--grammar meeting.gram] [--concurrency CPUS] [--hmm DIR] [--dict FILE]';

const options = readOptions();
checkInstalled();

let state = 'loading'; // then 'ready', then 'draining'
const slots = semaphore(options.concurrency);
const children = new Set(); // recogniser processes running now
let nextFile = 0;
const workDir = mkdtempSync(path.join(os.tmpdir(), 'asr-server-'));
const dictionary = path.join(workDir, 'grammar.dict'); // written by load()
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
  rmSync(workDir, { recursive: true, force: true });
});

const server = http.createServer((req, res) => {
  const started = performance.now();
  res.setHeader('X-Model-Version', options.modelVersion);
  res.setHeader('X-Instance-Name', options.name);
  if (state === 'draining') res.setHeader('Connection', 'close');
  res.on('close', () => {
    logRequest(req, res, started);
    // A kept-alive connection would otherwise hold the draining server open until it times out.
    if (state === 'draining') setImmediate(() => server.closeIdleConnections());
  });
  handle(req, res).catch((error) => {
    console.error(`error handling ${req.method} ${req.url}: ${error.stack ?? error}`);
    if (!res.headersSent) sendError(res, 500, 'internal server error', 'server_error');
    else res.destroy();
  });
});

server.listen(options.port, options.host, () => {
  const { port } = server.address();
  const host = options.host.includes(':') ? `[${options.host}]` : options.host;
  process.stdout.write(`listening http://${host}:${port}\n`);
  process.send?.({ type: 'listening', port });
});
server.on('error', (error) => {
  console.error(`cannot listen on ${options.host}:${options.port}: ${error.message}`);
  process.exit(1);
});

process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

load().catch((error) => {
  console.error(`model failed to load: ${error.stack ?? error}`);
  process.exit(1);
});

// pocketsphinx_continuous loads its model afresh for every file, so loading here is
// making that quick and proving it works: a pronunciation dictionary of just the
// grammar's words (parsing the whole 134,000-word CMU dictionary was half of every
// recognition), then a warm-up run on a second of silence, which fails here, not on
// the first request, when the model, dictionary and grammar do not fit together (a
// grammar word missing from the dictionary, say).
async function load() {
  const started = performance.now();
  const { entries, total } = await writeGrammarDictionary(options.dict, options.grammar, dictionary);
  const dictMs = performance.now() - started;
  const result = await recognize(new Int16Array(TARGET_RATE));
  const warmMs = performance.now() - started - dictMs;
  if (result.error) throw new Error(`warm-up recognition failed: ${result.error}`);
  if (options.loadDelayMs > 0) await sleep(options.loadDelayMs);
  if (state !== 'loading') return;
  state = 'ready';
  console.error(
    `model pocketsphinx ${options.modelVersion} loaded in ${Math.round(performance.now() - started)}ms ` +
      `(dictionary ${Math.round(dictMs)}ms: ${entries} of ${total} entries; warm-up recognition ${Math.round(warmMs)}ms; ` +
      `load delay ${options.loadDelayMs}ms; grammar ${options.grammar}; up to ${options.concurrency} at once)`,
  );
  process.send?.({ type: 'ready' });
}

async function handle(req, res) {
  const url = new URL(req.url, 'http://localhost');
  const { pathname } = url;
  if (!Object.hasOwn(ROUTES, pathname)) return sendError(res, 404, `no route for ${req.method} ${pathname}`);
  const method = ROUTES[pathname];
  if (req.method !== method) {
    res.setHeader('Allow', method);
    return sendError(res, 405, `use ${method} for ${pathname}`);
  }

  if (pathname === '/health') {
    return sendJson(res, state === 'ready' ? 200 : 503, { status: state === 'ready' ? 'ok' : state });
  }
  if (state !== 'ready') {
    res.setHeader('Retry-After', '1');
    return sendError(res, 503, `model is ${state}`, 'server_error');
  }
  if (pathname === '/version') return sendJson(res, 200, { model: 'pocketsphinx', version: options.modelVersion });
  return transcribe(req, res, url);
}

async function transcribe(req, res, url) {
  // Skip the work when the client goes away while it waits for a recogniser, and
  // stop the recogniser when it goes away during recognition.
  const abort = new AbortController();
  res.on('close', () => abort.abort());
  // multipart/form-data carries the file in its "file" field; any other body is the file
  // itself (audio/wav, application/octet-stream, or whatever curl --data-binary sends).
  const contentType = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  const multipart = contentType === 'multipart/form-data';
  const body = await readBody(req);
  if (body === undefined) {
    res.setHeader('Connection', 'close');
    return sendError(res, 413, `request body is over ${MAX_BODY_BYTES} bytes`);
  }

  let audio = body;
  let format = url.searchParams.get('response_format') ?? 'json';
  if (multipart) {
    let form;
    try {
      form = await new Request('http://localhost/', { method: 'POST', headers: { 'content-type': req.headers['content-type'] }, body }).formData();
    } catch {
      return sendError(res, 400, 'request body is not valid multipart/form-data');
    }
    const file = form.get('file');
    if (!file || typeof file === 'string') return sendError(res, 400, 'multipart body has no "file" field with a WAV file', 'invalid_request_error', 'file');
    audio = Buffer.from(await file.arrayBuffer());
    const field = form.get('response_format');
    if (typeof field === 'string' && field !== '') format = field;
  }
  if (!RESPONSE_FORMATS.has(format)) {
    return sendError(res, 400, `unsupported response_format ${JSON.stringify(format)}; use "json", "text" or "verbose_json"`, 'invalid_request_error', 'response_format');
  }

  const wav = parseWav(audio);
  if (wav.error) return sendError(res, 400, `audio is not usable: ${wav.error}`, 'invalid_request_error', 'file');
  const samples = await toMono16k(wav);
  const result = await recognize(samples, abort.signal);
  if (abort.signal.aborted) return;
  if (result.error) {
    console.error(`recognition failed: ${result.error}`);
    return sendError(res, 500, `recognition failed: ${result.error}`, 'server_error');
  }

  if (format === 'text') {
    res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': Buffer.byteLength(result.text + '\n') });
    return res.end(result.text + '\n');
  }
  if (format === 'verbose_json') {
    return sendJson(res, 200, { task: 'transcribe', language: 'english', duration: round3(wav.frames / wav.sampleRate), text: result.text });
  }
  return sendJson(res, 200, { text: result.text });
}

/**
 * Reads a RIFF/WAVE file of 16-bit PCM: { sampleRate, channels, frames, data } or
 * { error }. A data chunk whose size runs past the end (a streamed WAV, which claims
 * 0xFFFFFFFF) is read to the end of the file.
 */
function parseWav(buffer) {
  if (buffer.length < 12 || buffer.toString('ascii', 0, 4) !== 'RIFF' || buffer.toString('ascii', 8, 12) !== 'WAVE') {
    return { error: 'not a WAV file (no RIFF/WAVE header)' };
  }
  let format;
  for (let offset = 12; offset + 8 <= buffer.length; ) {
    const id = buffer.toString('ascii', offset, offset + 4);
    const size = buffer.readUInt32LE(offset + 4);
    const start = offset + 8;
    if (id === 'fmt ') {
      if (size < 16 || start + 16 > buffer.length) return { error: 'WAV fmt chunk is too short' };
      let code = buffer.readUInt16LE(start);
      // WAVE_FORMAT_EXTENSIBLE: the real format is the first two bytes of the sub-format GUID.
      if (code === 0xfffe && size >= 40 && start + 26 <= buffer.length) code = buffer.readUInt16LE(start + 24);
      format = {
        code,
        channels: buffer.readUInt16LE(start + 2),
        sampleRate: buffer.readUInt32LE(start + 4),
        bits: buffer.readUInt16LE(start + 14),
      };
      if (format.code !== 1) return { error: `WAV format code ${format.code} is not PCM; send 16-bit PCM` };
      if (format.bits !== 16) return { error: `WAV has ${format.bits}-bit samples; send 16-bit PCM` };
      if (format.channels < 1) return { error: 'WAV has no channels' };
      if (format.sampleRate < 1000 || format.sampleRate > 384_000) return { error: `WAV sample rate ${format.sampleRate} Hz is out of range` };
    } else if (id === 'data') {
      if (!format) return { error: 'WAV data chunk comes before its fmt chunk' };
      const end = Math.min(buffer.length, start + size);
      const frameBytes = format.channels * 2;
      const frames = Math.floor((end - start) / frameBytes);
      if (frames === 0) return { error: 'WAV has no audio samples' };
      // Copied so the samples are aligned for an Int16Array, whatever the chunk offset.
      const data = new Int16Array(new Uint8Array(buffer.subarray(start, start + frames * frameBytes)).buffer);
      if (os.endianness() !== 'LE') for (let i = 0; i < data.length; i++) data[i] = ((data[i] & 0xff) << 8) | ((data[i] >> 8) & 0xff);
      return { sampleRate: format.sampleRate, channels: format.channels, frames, data };
    }
    offset = start + size + (size % 2); // chunks are padded to an even size
  }
  return { error: format ? 'WAV has no data chunk' : 'WAV has no fmt chunk' };
}

/**
 * Averages the channels and resamples to 16 kHz by linear interpolation, after a
 * low-pass filter when the source rate is higher, so that what lies above 8 kHz does
 * not fold back into the speech band. The filter is applied only at the samples the
 * interpolation reads, and the work stops every second of output to let other
 * requests (and /health) through: a long 48 kHz file takes a while.
 */
async function toMono16k({ sampleRate, channels, frames, data }) {
  const mono = new Float32Array(frames);
  for (let i = 0; i < frames; i++) {
    let sum = 0;
    for (let c = 0; c < channels; c++) sum += data[i * channels + c];
    mono[i] = sum / channels;
  }
  const step = sampleRate / TARGET_RATE;
  const kernel = step > 1 ? lowPassKernel((0.45 * TARGET_RATE) / sampleRate, 2 * Math.ceil(16 * step) + 1) : Float32Array.of(1);
  const half = (kernel.length - 1) / 2;
  const filtered = (j) => {
    let sum = 0;
    const from = Math.max(0, j - half);
    const to = Math.min(frames - 1, j + half);
    for (let k = from; k <= to; k++) sum += mono[k] * kernel[k - j + half];
    return sum;
  };
  const length = Math.max(1, Math.floor((frames - 1) / step) + 1);
  const out = new Int16Array(length);
  for (let i = 0; i < length; i++) {
    if (i % TARGET_RATE === TARGET_RATE - 1) await new Promise(setImmediate);
    const position = i * step;
    const left = Math.floor(position);
    const fraction = position - left;
    let value = filtered(left);
    if (fraction > 0) value = value * (1 - fraction) + filtered(Math.min(frames - 1, left + 1)) * fraction;
    out[i] = Math.max(-32768, Math.min(32767, Math.round(value)));
  }
  return out;
}

/** A windowed-sinc (Blackman) low-pass FIR kernel; cutoff is a fraction of the sample rate, taps is odd. */
function lowPassKernel(cutoff, taps) {
  const middle = (taps - 1) / 2;
  const kernel = new Float32Array(taps);
  let total = 0;
  for (let k = 0; k < taps; k++) {
    const x = k - middle;
    const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
    const window = 0.42 - 0.5 * Math.cos((2 * Math.PI * k) / (taps - 1)) + 0.08 * Math.cos((4 * Math.PI * k) / (taps - 1));
    kernel[k] = sinc * window;
    total += kernel[k];
  }
  for (let k = 0; k < taps; k++) kernel[k] /= total;
  return kernel;
}

/**
 * Writes to `to` the entries of the dictionary `from` (alternative pronunciations
 * included) for every word the grammar could contain. Words are found loosely (every
 * token outside rule names, tags and weights, keywords included): an extra entry costs
 * nothing, a missing one would fail the warm-up run.
 */
async function writeGrammarDictionary(from, grammarFile, to) {
  const grammar = (await readFile(grammarFile, 'utf8'))
    .replace(/\/\*[\s\S]*?\*\//g, ' ') // comments
    .replace(/\/\/[^\n]*/g, ' ')
    .replace(/<[^>]*>|\{[^}]*\}|\/[^/]*\//g, ' '); // rule names, tags, weights
  const words = new Set();
  for (const token of grammar.split(/[\s()[\]|*+;="]+/)) {
    if (token) words.add(token).add(token.toLowerCase());
  }
  const lines = (await readFile(from, 'utf8')).split('\n');
  // "word PHONES" or, for an alternative pronunciation, "word(2) PHONES".
  const kept = lines.filter((line) => words.has(/^(\S+?)(?:\(\d+\))?\s/.exec(line)?.[1]));
  await writeFile(to, kept.join('\n') + '\n');
  return { entries: kept.length, total: lines.filter(Boolean).length };
}

/**
 * Runs pocketsphinx_continuous on 16 kHz mono samples, waiting for a free slot first:
 * { text } with the utterances it heard joined by spaces, or { error }.
 */
async function recognize(samples, signal) {
  const release = await slots.acquire(signal);
  if (!release) return { error: 'aborted' };
  const file = path.join(workDir, `audio-${nextFile++}.raw`);
  try {
    await writeFile(file, new Uint8Array(samples.buffer, samples.byteOffset, samples.byteLength));
    const timeoutMs = RECOGNIZE_GRACE_MS + Math.round((samples.length / TARGET_RATE) * 1000);
    const result = await runRecognizer(file, timeoutMs, signal);
    if (result.error || result.text !== '') return result;
    // Nothing heard. pocketsphinx 0.8+5prealpha answers nothing when no path through the
    // grammar ends exactly at the last frame ("Final result does not match the grammar"),
    // and the silence and noise "filler words" it lets in between words are what most
    // often leave it there. A second pass without them usually finds the sentence; for
    // real silence it finds nothing again.
    return await runRecognizer(file, timeoutMs, signal, ['-fsgusefiller', 'no']);
  } finally {
    release();
    unlink(file).catch(() => {});
  }
}

function runRecognizer(file, timeoutMs, signal, extra = []) {
  const args = [
    ['-infile', file],
    ['-hmm', options.hmm],
    ['-dict', dictionary],
    ['-jsgf', options.grammar],
    ['-samprate', String(TARGET_RATE)],
    ...SEARCH_BEAMS,
    ...DITHER,
    ...extra,
    // Its log (model loading, search statistics, and its errors too) goes to a file that
    // is read only when it fails.
    ['-logfn', `${file}.log`],
  ].flat();
  return new Promise((resolve) => {
    const child = spawn(RECOGNIZER, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let stdout = '';
    let killedFor;
    child.stdout.setEncoding('utf8').on('data', (chunk) => (stdout += chunk));
    child.stderr.resume();
    const kill = (reason) => {
      killedFor ??= reason;
      child.kill('SIGKILL');
    };
    const timer = setTimeout(() => kill(`took over ${timeoutMs}ms`), timeoutMs);
    const onAbort = () => kill('aborted');
    signal?.addEventListener('abort', onAbort, { once: true });
    child.on('error', (error) => {
      killedFor ??= error.message;
    });
    child.on('close', async (code, sig) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      children.delete(child);
      const log = await readFile(`${file}.log`, 'utf8').catch(() => '');
      unlink(`${file}.log`).catch(() => {});
      if (killedFor) return resolve({ error: killedFor });
      if (code !== 0) {
        const errors = log.split('\n').filter((line) => /^(ERROR|FATAL)/.test(line)).slice(-3);
        return resolve({ error: `${RECOGNIZER} exited with ${sig ?? code}${errors.length ? `: ${errors.join(' | ')}` : ''}` });
      }
      const text = stdout
        .split('\n')
        .map((line) => line.trim())
        .filter(Boolean)
        .join(' ');
      resolve({ text });
    });
  });
}

/** At most `limit` holders at once; the rest wait in order. acquire resolves to a release function, or undefined if aborted while waiting. */
function semaphore(limit) {
  let active = 0;
  const waiting = [];
  const release = () => {
    const next = waiting.shift();
    if (next) next();
    else active--;
  };
  return {
    acquire(signal) {
      if (signal?.aborted) return Promise.resolve(undefined);
      if (active < limit) {
        active++;
        return Promise.resolve(release);
      }
      return new Promise((resolve) => {
        const grant = () => {
          signal?.removeEventListener('abort', onAbort);
          resolve(release);
        };
        const onAbort = () => {
          waiting.splice(waiting.indexOf(grant), 1);
          resolve(undefined);
        };
        waiting.push(grant);
        signal?.addEventListener('abort', onAbort, { once: true });
      });
    },
  };
}

function shutdown(signal) {
  if (state === 'draining') return;
  state = 'draining';
  console.error(`${signal}: no longer accepting; finishing requests in flight`);
  setTimeout(() => {
    console.error(`requests still in flight after ${DRAIN_TIMEOUT_MS}ms; closing them`);
    server.closeAllConnections(); // then server.close's callback exits
    setTimeout(() => process.exit(0), 1000).unref();
  }, DRAIN_TIMEOUT_MS).unref();
  server.close(() => process.exit(0)); // the exit handler stops any recogniser left
}

/** Exits 1, naming install.sh, when pocketsphinx, its model or the grammar is missing. */
function checkInstalled() {
  const problems = [];
  const onPath = (process.env.PATH ?? '').split(path.delimiter).some((dir) => {
    try {
      accessSync(path.join(dir || '.', RECOGNIZER), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
  if (!onPath) problems.push(`${RECOGNIZER} is not on PATH`);
  if (!isDir(options.hmm)) problems.push(`acoustic model directory ${options.hmm} is missing`);
  if (!isFile(options.dict)) problems.push(`pronunciation dictionary ${options.dict} is missing`);
  if (problems.length > 0) {
    const script = path.relative(process.cwd(), path.join(HERE, 'install.sh'));
    console.error(
      `pocketsphinx is not installed: ${problems.join('; ')}.\n` +
        `Install it (Debian/Ubuntu packages pocketsphinx and pocketsphinx-en-us) with:\n` +
        `  sh ${script.startsWith('..') ? path.join(HERE, 'install.sh') : script}`,
    );
    process.exit(1);
  }
  if (!isFile(options.grammar)) {
    console.error(`grammar file ${options.grammar} does not exist`);
    process.exit(1);
  }
}

function isDir(p) {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function isFile(p) {
  try {
    return statSync(p).isFile();
  } catch {
    return false;
  }
}

/** Resolves to the body, or undefined when it is too large. */
async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) return undefined;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

function round3(n) {
  return Math.round(n * 1000) / 1000;
}

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

// Errors in OpenAI's shape, so OpenAI clients show the message.
function sendError(res, status, message, type = 'invalid_request_error', param = null) {
  sendJson(res, status, { error: { message, type, param, code: null } });
}

function logRequest(req, res, started) {
  const ms = Math.round(performance.now() - started);
  const status = res.writableFinished ? res.statusCode : `${res.headersSent ? res.statusCode : '-'} (client gone)`;
  const requestId = req.headers['x-request-id'];
  console.error(`${req.method} ${req.url} ${status} ${ms}ms${requestId ? ` request-id=${requestId}` : ''}`);
}

function readOptions() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        port: { type: 'string', default: '7201' },
        host: { type: 'string', default: '127.0.0.1' },
        'model-version': { type: 'string', default: '1.0' },
        name: { type: 'string', default: 'primary' },
        'load-delay': { type: 'string', default: '0' },
        grammar: { type: 'string', default: DEFAULT_GRAMMAR },
        concurrency: { type: 'string', default: String(os.availableParallelism()) },
        hmm: { type: 'string', default: DEFAULT_HMM },
        dict: { type: 'string', default: DEFAULT_DICT },
      },
    }));
  } catch (error) {
    usage(error.message);
  }
  const port = Number(values.port);
  if (!/^\d+$/.test(values.port) || port > 65535) usage('--port must be 0 (any free port) to 65535');
  const loadDelayMs = parseDuration(values['load-delay']);
  if (loadDelayMs === undefined) usage('--load-delay must be a duration such as 2s, 500ms or 0');
  const concurrency = Number(values.concurrency);
  if (!/^\d+$/.test(values.concurrency) || concurrency < 1) usage('--concurrency must be a whole number from 1');
  return {
    port,
    host: values.host,
    modelVersion: values['model-version'],
    name: values.name,
    loadDelayMs,
    grammar: path.resolve(values.grammar),
    concurrency,
    hmm: path.resolve(values.hmm),
    dict: path.resolve(values.dict),
  };
}

// The same duration syntax as Understudy's config: 750ms, 2s, 1.5m, 1h, or bare milliseconds.
function parseDuration(text) {
  const match = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$/.exec(text.trim());
  if (!match) return undefined;
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[match[2] ?? 'ms'];
  return Math.round(Number(match[1]) * unit);
}

function usage(problem) {
  console.error(`${problem}\n${USAGE}`);
  process.exit(2);
}
