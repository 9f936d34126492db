#!/usr/bin/env node
// A small, real text-to-speech model server (espeak-ng in WebAssembly) with an
// OpenAI-compatible POST /v1/audio/speech, for trying Understudy against.
import http from 'node:http';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';

const MAX_INPUT_CHARS = 20_000;
const MAX_BODY_BYTES = 1024 * 1024;
// A sentence longer than this is cut at a space, so that one piece of work stays short
// and a disconnected client stops synthesis soon.
const MAX_PIECE_CHARS = 400;
const DRAIN_TIMEOUT_MS = 5000;
// espeak-ng speaks 175 words a minute by default and accepts 80 to 450.
const DEFAULT_RATE = 175;
const MIN_RATE = 80;
const MAX_RATE = 450;
const ROUTES = { '/health': 'GET', '/version': 'GET', '/v1/audio/speech': 'POST' };
// Understudy's segmented streams (docs/streams.md): asked with this header, a streamed
// answer is framed so a gateway can continue it elsewhere from a given sentence.
const SEGMENTS_HEADER = 'x-understudy-segments';
const RESUME_HEADER = 'x-understudy-resume-from';
const sentences = new Intl.Segmenter('en', { granularity: 'sentence' });

const USAGE =
  'usage: node server.mjs [--port 7101] [--host 127.0.0.1] [--model-version 1.0] [--voice en-us] [--name primary] [--load-delay 0]';

const options = readOptions();
let state = 'loading'; // then 'ready', then 'draining'
let engine;

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

async function load() {
  const started = performance.now();
  engine = await startEngine();
  const initMs = performance.now() - started;
  if (!engine.voices.has(options.voice.toLowerCase())) throw new Error(`espeak-ng has no voice "${options.voice}"`);
  if (options.loadDelayMs > 0) await sleep(options.loadDelayMs);
  if (state !== 'loading') return;
  state = 'ready';
  console.error(
    `model espeak-ng ${options.modelVersion} loaded in ${Math.round(performance.now() - started)}ms ` +
      `(espeak-ng load and warm-up ${Math.round(initMs)}ms, load delay ${options.loadDelayMs}ms)`,
  );
  process.send?.({ type: 'ready' });
}

async function handle(req, res) {
  const { pathname } = new URL(req.url, 'http://localhost');
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
  if (pathname === '/version') return sendJson(res, 200, { model: 'espeak-ng', version: options.modelVersion });
  return speech(req, res);
}

async function speech(req, res) {
  const body = await readBody(req);
  if (body === undefined) {
    res.setHeader('Connection', 'close');
    return sendError(res, 413, `request body is over ${MAX_BODY_BYTES} bytes`);
  }
  let request;
  try {
    request = JSON.parse(body);
  } catch {
    return sendError(res, 400, 'request body is not valid JSON');
  }
  const parsed = parseSpeechRequest(request);
  if (parsed.error) return sendError(res, 400, parsed.error, 'invalid_request_error', parsed.param);
  const { pieces, voice, rate, format, stream } = parsed;
  const segments = parseSegmentHeaders(req, pieces.length, stream);
  if (segments.error) return sendError(res, 400, segments.error, 'invalid_request_error', segments.param);
  const { framed, resumeFrom } = segments;

  // Stop synthesising as soon as the client goes away.
  const abort = new AbortController();
  res.on('close', () => abort.abort());

  const contentType = format === 'wav' ? 'audio/wav' : 'audio/pcm';
  res.setHeader('X-Sample-Rate', String(engine.sampleRate));

  if (!stream) {
    const audio = [];
    for (const piece of pieces) {
      if (abort.signal.aborted) return;
      audio.push(await engine.synthesize(piece, voice, rate));
    }
    const pcm = Buffer.concat(audio);
    const head = format === 'wav' ? wavHeader(engine.sampleRate, pcm.length) : Buffer.alloc(0);
    res.writeHead(200, { 'Content-Type': contentType, 'Content-Length': head.length + pcm.length });
    return res.end(Buffer.concat([head, pcm]));
  }

  // Headers go out with the first sentence, so a failure before any audio is a clean error.
  // A resumed answer does not synthesise the sentences before resumeFrom at all.
  for (let index = resumeFrom; index < pieces.length; index++) {
    if (abort.signal.aborted) return;
    const pcm = await engine.synthesize(pieces[index], voice, rate);
    if (abort.signal.aborted) return;
    if (index === resumeFrom) {
      const headers = { 'Content-Type': contentType };
      if (framed) {
        headers['X-Understudy-Segments'] = '1';
        if (req.headers[RESUME_HEADER] !== undefined) headers['X-Understudy-Resume-From'] = String(resumeFrom);
      }
      res.writeHead(200, headers);
      if (format === 'wav') {
        const head = wavHeader(engine.sampleRate);
        res.write(framed ? Buffer.concat([frameLine(`H ${head.length}`), head]) : head);
      }
    }
    if (framed) res.write(frameLine(`S ${index} ${pcm.length}`));
    if (!res.write(pcm)) {
      try {
        await once(res, 'drain', { signal: abort.signal });
      } catch {
        return;
      }
    }
  }
  if (framed) res.write(frameLine(`E ${pieces.length}`));
  res.end();
}

/**
 * Reads the segmented-stream request headers. framed: the answer is framed (asked for,
 * and streamed); resumeFrom: the first sentence to synthesise (0 unless resuming).
 */
function parseSegmentHeaders(req, pieceCount, stream) {
  const asked = req.headers[SEGMENTS_HEADER]?.trim() === '1';
  const resume = req.headers[RESUME_HEADER];
  if (resume === undefined) return { framed: asked && stream, resumeFrom: 0 };
  const param = 'X-Understudy-Resume-From';
  if (!asked) return { error: `${param} needs X-Understudy-Segments: 1`, param };
  const text = resume.trim();
  if (!/^\d+$/.test(text)) return { error: `${param} must be an integer of 0 or more, not ${JSON.stringify(resume)}`, param };
  const resumeFrom = Number(text);
  if (resumeFrom >= pieceCount) {
    return { error: `${param} is ${text}, but the answer has ${pieceCount} segment${pieceCount === 1 ? '' : 's'}`, param };
  }
  // One sentence, or "stream": false, is answered whole and unframed: there is nothing to resume.
  if (!stream) return { error: `${param} needs a streamed answer (more than one sentence, and "stream" not false)`, param };
  return { framed: true, resumeFrom };
}

const frameLine = (line) => Buffer.from(`${line}\n`, 'ascii');

// OpenAI's voice names, as clients and the SDKs' own examples send them, each mapped to
// one of espeak-ng's eight English voices (so some names share a voice).
const OPENAI_VOICES = {
  alloy: 'gmw/en-US',
  ash: 'gmw/en-GB-x-gbclan',
  ballad: 'gmw/en-GB-x-gbcwmd',
  cedar: 'gmw/en',
  coral: 'gmw/en-029',
  echo: 'gmw/en-US-nyc',
  fable: 'gmw/en-GB-x-rp',
  marin: 'gmw/en-US',
  nova: 'gmw/en-GB-scotland',
  onyx: 'gmw/en',
  sage: 'gmw/en-GB-x-rp',
  shimmer: 'gmw/en-029',
  verse: 'gmw/en-US-nyc',
};

function withOpenAiNames(voices) {
  const identifiers = new Set(voices.values());
  for (const [name, identifier] of Object.entries(OPENAI_VOICES)) {
    if (identifiers.has(identifier) && !voices.has(name)) voices.set(name, identifier);
  }
  return voices;
}

function parseSpeechRequest(request) {
  if (typeof request !== 'object' || request === null || Array.isArray(request)) {
    return { error: 'request body must be a JSON object' };
  }
  const { model, input, voice = options.voice, response_format: format = 'wav', speed = 1, stream } = request;
  if (model !== undefined && typeof model !== 'string') return { error: '"model" must be a string', param: 'model' };
  if (typeof input !== 'string' || input.trim() === '') {
    return { error: '"input" must be a non-empty string', param: 'input' };
  }
  if (input.length > MAX_INPUT_CHARS) {
    return { error: `"input" is ${input.length} characters; the limit is ${MAX_INPUT_CHARS}`, param: 'input' };
  }
  const espeakVoice = typeof voice === 'string' ? engine.voices.get(voice.toLowerCase()) : undefined;
  if (!espeakVoice) {
    return { error: `unknown voice ${JSON.stringify(voice)}; use one of OpenAI's (${Object.keys(OPENAI_VOICES).join(', ')}) or an espeak-ng voice such as "en-us"`, param: 'voice' };
  }
  if (format !== 'wav' && format !== 'pcm') {
    // No encoder here for mp3, opus, aac or flac: refused, never WAV bytes under another name.
    return { error: `unsupported response_format ${JSON.stringify(format)}; this server makes "wav" (the default) or "pcm"`, param: 'response_format' };
  }
  if (typeof speed !== 'number' || !(speed >= 0.25 && speed <= 4)) {
    return { error: '"speed" must be a number from 0.25 to 4.0', param: 'speed' };
  }
  if (stream !== undefined && typeof stream !== 'boolean') return { error: '"stream" must be a boolean', param: 'stream' };

  const pieces = splitSentences(input);
  return {
    pieces,
    voice: espeakVoice,
    rate: Math.min(MAX_RATE, Math.max(MIN_RATE, Math.round(DEFAULT_RATE * speed))),
    format,
    stream: stream !== false && pieces.length > 1,
  };
}

function splitSentences(text) {
  const pieces = [];
  for (const { segment } of sentences.segment(text)) {
    let rest = segment.trim();
    while (rest.length > MAX_PIECE_CHARS) {
      const space = rest.lastIndexOf(' ', MAX_PIECE_CHARS);
      const cut = space > 0 ? space : MAX_PIECE_CHARS;
      pieces.push(rest.slice(0, cut));
      rest = rest.slice(cut).trim();
    }
    if (rest) pieces.push(rest);
  }
  return pieces;
}

// A streamed WAV's length is unknown when its header is sent; like other streaming
// TTS servers, it then claims the largest size and players read until the stream ends.
function wavHeader(sampleRate, dataBytes = 0xffffffff) {
  const header = Buffer.alloc(44);
  header.write('RIFF', 0, 'ascii');
  header.writeUInt32LE(Math.min(0xffffffff, 36 + dataBytes), 4);
  header.write('WAVE', 8, 'ascii');
  header.write('fmt ', 12, 'ascii');
  header.writeUInt32LE(16, 16); // fmt chunk size
  header.writeUInt16LE(1, 20); // PCM
  header.writeUInt16LE(1, 22); // mono
  header.writeUInt32LE(sampleRate, 24);
  header.writeUInt32LE(sampleRate * 2, 28); // bytes per second
  header.writeUInt16LE(2, 32); // bytes per frame
  header.writeUInt16LE(16, 34); // bits per sample
  header.write('data', 36, 'ascii');
  header.writeUInt32LE(dataBytes, 40);
  return header;
}

/** Starts the espeak-ng worker; resolves once it has loaded. */
async function startEngine() {
  const worker = new Worker(new URL('./engine.mjs', import.meta.url));
  const pending = new Map();
  let nextId = 0;

  const [ready] = await Promise.race([
    once(worker, 'message'),
    once(worker, 'exit').then(([code]) => Promise.reject(new Error(`model worker exited with code ${code}`))),
  ]);

  worker.on('message', ({ id, pcm, error }) => {
    const job = pending.get(id);
    pending.delete(id);
    if (error) job?.reject(new Error(error));
    else job?.resolve(Buffer.from(pcm.buffer, pcm.byteOffset, pcm.byteLength));
  });
  worker.on('error', (error) => console.error(`model worker failed: ${error.stack ?? error}`));
  // Like a crashed GPU process, a dead model takes the server down, so a supervisor can see it.
  worker.on('exit', (code) => {
    if (state === 'draining') return;
    console.error(`model worker exited with code ${code}`);
    process.exit(1);
  });

  return {
    sampleRate: ready.sampleRate,
    voices: withOpenAiNames(new Map(Object.entries(ready.voices))),
    // The worker takes jobs in order, so requests in flight together take turns sentence by sentence.
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

function shutdown(signal) {
  if (state === 'draining') return;
  state = 'draining';
  console.error(`${signal}: no longer accepting; finishing requests in flight`);
  setTimeout(() => {
    console.error(`requests still in flight after ${DRAIN_TIMEOUT_MS}ms; closing them`);
    server.closeAllConnections(); // then server.close's callback exits
    setTimeout(() => process.exit(0), 1000).unref();
  }, DRAIN_TIMEOUT_MS).unref();
  server.close(async () => {
    await engine?.terminate();
    process.exit(0);
  });
}

/** Resolves to the body as text, or undefined when it is too large. */
async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) return undefined;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
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
        port: { type: 'string', default: '7101' },
        host: { type: 'string', default: '127.0.0.1' },
        'model-version': { type: 'string', default: '1.0' },
        voice: { type: 'string', default: 'en-us' },
        name: { type: 'string', default: 'primary' },
        'load-delay': { type: 'string', default: '0' },
      },
    }));
  } catch (error) {
    usage(error.message);
  }
  const port = Number(values.port);
  if (!/^\d+$/.test(values.port) || port > 65535) usage('--port must be 0 (any free port) to 65535');
  const loadDelayMs = parseDuration(values['load-delay']);
  if (loadDelayMs === undefined) usage('--load-delay must be a duration such as 2s, 500ms or 0');
  return {
    port,
    host: values.host,
    modelVersion: values['model-version'],
    voice: values.voice,
    name: values.name,
    loadDelayMs,
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
