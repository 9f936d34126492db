#!/usr/bin/env node
// Smoke test: start the server on a free port, wait until the model has loaded,
// synthesise two sentences, check the WAV, and stop the server with SIGTERM.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';

const HEALTH_TRIES = 100;
const HEALTH_INTERVAL_MS = 100;

const child = spawn(process.execPath, [new URL('./server.mjs', import.meta.url).pathname, '--port', '0', '--name', 'smoke'], {
  stdio: ['ignore', 'pipe', 'inherit'],
});
const exited = once(child, 'exit');

try {
  const started = performance.now();
  const base = await listeningUrl();
  await waitUntilHealthy(base);
  console.log(`smoke: model ready ${Math.round(performance.now() - started)}ms after start`);

  const requestStarted = performance.now();
  const response = await fetch(`${base}/v1/audio/speech`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-Request-Id': 'smoke-1' },
    body: JSON.stringify({ model: 'espeak-ng', input: 'Hello world. This is Understudy.', voice: 'en-us' }),
  });
  const wav = Buffer.from(await response.arrayBuffer());
  const ms = Math.round(performance.now() - requestStarted);
  check(response.status === 200, `speech answered ${response.status}: ${wav.toString('utf8', 0, 200)}`);
  check(response.headers.get('content-type') === 'audio/wav', `content-type is ${response.headers.get('content-type')}`);
  check(response.headers.get('x-instance-name') === 'smoke', 'X-Instance-Name is missing');
  check(response.headers.get('x-model-version') === '1.0', 'X-Model-Version is missing');
  checkWav(wav);
  const seconds = (wav.length - 44) / (2 * wav.readUInt32LE(24));
  console.log(`smoke: ${seconds.toFixed(2)}s of speech (${wav.length} bytes) in ${ms}ms`);

  const empty = await fetch(`${base}/v1/audio/speech`, { method: 'POST', body: '{"input":""}' });
  const emptyBody = await empty.json();
  check(empty.status === 400 && emptyBody.error?.type === 'invalid_request_error', `empty input answered ${empty.status}`);
  const missing = await fetch(`${base}/no-such-path`);
  check(missing.status === 404, `unknown path answered ${missing.status}`);

  child.kill('SIGTERM');
  const [code, signal] = await exited;
  check(code === 0, `server exited with code ${code} signal ${signal} after SIGTERM`);
  console.log('smoke: ok');
} catch (error) {
  console.error(`smoke: FAILED: ${error.message}`);
  child.kill('SIGKILL');
  process.exitCode = 1;
}

async function listeningUrl() {
  const lines = createInterface({ input: child.stdout });
  const timeout = setTimeout(() => child.kill('SIGKILL'), 10_000);
  try {
    for await (const line of lines) {
      const match = /^listening (http:\/\/\S+)$/.exec(line);
      if (match) return match[1];
    }
  } finally {
    clearTimeout(timeout);
  }
  throw new Error('server exited before printing its listening line');
}

async function waitUntilHealthy(base) {
  let last;
  for (let attempt = 0; attempt < HEALTH_TRIES; attempt++) {
    const response = await fetch(`${base}/health`);
    last = `${response.status} ${await response.text()}`;
    if (response.status === 200) return;
    await sleep(HEALTH_INTERVAL_MS);
  }
  throw new Error(`/health did not answer 200 after ${HEALTH_TRIES} tries; last answer: ${last}`);
}

function checkWav(wav) {
  check(wav.length > 44 + 22050, `WAV is only ${wav.length} bytes`);
  check(wav.toString('ascii', 0, 4) === 'RIFF' && wav.toString('ascii', 8, 12) === 'WAVE', 'no RIFF/WAVE header');
  check(wav.toString('ascii', 12, 16) === 'fmt ' && wav.readUInt16LE(20) === 1, 'not PCM');
  check(wav.readUInt16LE(22) === 1 && wav.readUInt16LE(34) === 16, 'not 16-bit mono');
  check(wav.toString('ascii', 36, 40) === 'data', 'no data chunk');
  let loudest = 0;
  for (let i = 44; i + 1 < wav.length; i += 2) loudest = Math.max(loudest, Math.abs(wav.readInt16LE(i)));
  check(loudest > 1000, `audio is near silent (peak ${loudest})`);
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}
