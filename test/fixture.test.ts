import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { startModelServer, stopAll, type ModelServer } from './support/fixture.js';
import { disruptionWindow, percentile, runLoad, type RequestResult } from './support/load.js';
import { freePort } from './support/ports.js';
import { waitUntil } from './support/wait.js';

afterEach(stopAll);

const post = (server: ModelServer, path: string, body: unknown, signal?: AbortSignal) =>
  fetch(`${server.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal });

const health = async (server: ModelServer) => (await fetch(`${server.url}/health`)).status;

const faultIs = (server: ModelServer, mode: string) => async () => (await server.stats()).fault.mode === mode;

function result(start: number, end: number, status: number | null, error: string | null = null): RequestResult {
  return { start, end, status, error, bytes: 0, tag: null };
}

describe('model-server fixture', () => {
  it('answers inference with what it received', async () => {
    const server = await startModelServer({ name: 'alpha', latencyMs: 0, modelVersion: '2.1' });
    const response = await fetch(`${server.url}/v1/infer`, { method: 'PUT', headers: { 'x-request-id': 'r-1' }, body: 'hello' });
    expect(response.headers.get('x-served-by')).toBe('alpha');
    expect(await response.json()).toMatchObject({ name: 'alpha', version: '2.1', method: 'PUT', bodyBytes: 5, requestId: 'r-1' });
    expect(await (await fetch(`${server.url}/version`)).json()).toEqual({ version: '2.1', name: 'alpha' });
  });

  it('listens at once but reports loading until the model is loaded', async () => {
    const server = await startModelServer({ loadDelayMs: 300 });
    expect(await health(server)).toBe(503);
    await waitUntil(async () => (await health(server)) === 200, { what: 'health 200' });
    const stats = await server.stats();
    expect(stats.readyAt! - stats.startedAt).toBeGreaterThanOrEqual(300);
  });

  it('resolves on ready when asked to', async () => {
    const server = await startModelServer({ loadDelayMs: 200, waitFor: 'ready' });
    expect(await health(server)).toBe(200);
  });

  it('binds the requested port', async () => {
    const port = await freePort();
    const server = await startModelServer({ port });
    expect(server.port).toBe(port);
  });

  it('streams OpenAI chat completion chunks', async () => {
    const server = await startModelServer({ name: 'llm', latencyMs: 0 });
    const response = await post(server, '/v1/chat/completions', { model: 'm', stream: true, max_tokens: 3, x_chunk_delay_ms: 5 });
    expect(response.headers.get('content-type')).toBe('text/event-stream');
    const events = (await response.text()).split('\n\n').filter(Boolean);
    expect(events.at(-1)).toBe('data: [DONE]');
    const chunks = events.slice(0, -1).map((event) => JSON.parse(event.replace(/^data: /, '')));
    expect(chunks).toHaveLength(4);
    expect(chunks[0]).toMatchObject({ object: 'chat.completion.chunk', model: 'm', choices: [{ index: 0, delta: { role: 'assistant' } }] });
    expect(chunks.slice(0, 3).map((c) => c.choices[0].delta.content).join('')).toBe('tok0 tok1 tok2 ');
    expect(chunks[3].choices[0]).toMatchObject({ delta: {}, finish_reason: 'length' });
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1);
  });

  it('answers a non-streaming chat completion', async () => {
    const server = await startModelServer({ latencyMs: 0 });
    const body = await (await post(server, '/v1/chat/completions', { max_tokens: 2 })).json();
    expect(body).toMatchObject({ object: 'chat.completion', choices: [{ message: { role: 'assistant', content: 'tok0 tok1 ' } }], usage: { completion_tokens: 2 } });
  });

  it('serves chunked audio, cut streams and slow streams', async () => {
    const server = await startModelServer({ latencyMs: 0 });
    const audio = await fetch(`${server.url}/v1/audio/chunked?chunks=3&delay=5`);
    expect(audio.headers.get('content-type')).toBe('audio/wav');
    expect((await audio.arrayBuffer()).byteLength).toBe(3 * 1024);

    const cut = await fetch(`${server.url}/v1/cut?bytes=10`);
    await expect(cut.arrayBuffer()).rejects.toThrow();

    const slow = await fetch(`${server.url}/v1/slow-stream?delay=50`);
    expect(await slow.text()).toBe('start\nend\n');
    expect((await server.stats()).aborted).toBe(0);
  });

  it('counts a client that disconnects before the answer', async () => {
    const server = await startModelServer();
    await expect(fetch(`${server.url}/v1/long?ms=5000`, { signal: AbortSignal.timeout(100) })).rejects.toThrow();
    await waitUntil(async () => (await server.stats()).aborted === 1, { what: 'aborted = 1' });
    expect((await server.stats()).byPath['/v1/long']).toBe(1);
  });

  it('echoes WebSocket messages with its name', async () => {
    const server = await startModelServer({ name: 'ws1' });
    const socket = new WebSocket(`ws://127.0.0.1:${server.port}/ws`);
    await new Promise((resolve, reject) => socket.once('open', resolve).once('error', reject));
    socket.send('ping');
    const [reply] = await new Promise<[WebSocket.RawData]>((resolve) => socket.once('message', (...args) => resolve([args[0]])));
    expect(String(reply)).toBe('ws1:ping');
    socket.close();
  });

  it('switches fault modes by request and by signal while health stays fine', async () => {
    const server = await startModelServer({ latencyMs: 0 });
    await server.fault('error500');
    expect((await post(server, '/v1/infer', {})).status).toBe(500);
    expect(await health(server)).toBe(200);

    await server.fault('slow', 200);
    const started = Date.now();
    expect((await post(server, '/v1/infer', {})).status).toBe(200);
    expect(Date.now() - started).toBeGreaterThanOrEqual(190);

    await server.fault('hang');
    await expect(post(server, '/v1/infer', {}, AbortSignal.timeout(200))).rejects.toThrow();
    expect(await health(server)).toBe(200);

    server.kill('SIGUSR1');
    await waitUntil(faultIs(server, 'error500'), { what: 'error500 after SIGUSR1' });
    server.kill('SIGUSR2');
    await waitUntil(faultIs(server, 'slow'), { what: 'slow after SIGUSR2' });
    expect((await server.stats()).fault.slowMs).toBe(3000);
    server.kill('SIGHUP');
    await waitUntil(faultIs(server, 'none'), { what: 'none after SIGHUP' });
    expect((await post(server, '/v1/infer', {})).status).toBe(200);
  });

  it('starts already faulty and exits on cue', async () => {
    const faulty = await startModelServer({ fault: 'error500' });
    expect((await post(faulty, '/v1/infer', {})).status).toBe(500);

    const crashing = await startModelServer({ exitAfterMs: 100, exitCode: 3 });
    const [code] = await new Promise<[number | null]>((resolve) => crashing.proc.once('exit', (c) => resolve([c])));
    expect(code).toBe(3);
  });

  it('stops a stopped server, a deaf one, and twice', async () => {
    const stopped = await startModelServer();
    stopped.kill('SIGSTOP');
    await stopped.stop();
    expect(stopped.proc.exitCode).toBe(0);
    await stopped.stop();

    const deaf = await startModelServer({ ignoreSigterm: true });
    await deaf.stop(200);
    expect(deaf.proc.signalCode).toBe('SIGKILL');
  });
});

describe('load generator', () => {
  it('computes percentiles and the disruption window', () => {
    expect(percentile([5, 1, 4, 2, 3], 50)).toBe(3);
    expect(percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90)).toBe(9);
    expect(percentile([], 99)).toBeNaN();
    expect(disruptionWindow([result(0, 10, 200), result(5, 20, 200)])).toBe(0);
    expect(disruptionWindow([result(0, 10, 200), result(20, 30, 500), result(25, 40, null, 'timeout'), result(26, 27, 200)])).toBe(20);
  });

  it('keeps an open-loop schedule and counts successes', async () => {
    const server = await startModelServer({ latencyMs: 5 });
    const run = await runLoad({ url: `${server.url}/v1/infer`, body: '{}', rate: 100, durationMs: 500, tagHeader: 'x-served-by' });
    expect(run.results).toHaveLength(50);
    expect(run.failed).toBe(0);
    expect(run.results.every((r) => r.tag === 'model' && r.bytes > 0)).toBe(true);
    const span = run.results.at(-1)!.start - run.results[0]!.start;
    expect(span).toBeGreaterThan(450);
    expect(span).toBeLessThan(600);
    expect(run.summary().p50).toBeGreaterThanOrEqual(5);
  });

  it('counts 500s as failures', async () => {
    const server = await startModelServer({ latencyMs: 0, fault: 'error500' });
    const run = await runLoad({ url: `${server.url}/v1/infer`, body: '{}', rate: 100, durationMs: 200 });
    expect(run.failed).toBe(20);
    expect(run.summary().failures).toEqual({ '500': 20 });
  });

  it('times out a hung server without slipping the schedule, within the outstanding cap', async () => {
    const server = await startModelServer({ fault: 'hang' });
    const run = await runLoad({ url: `${server.url}/v1/infer`, rate: 100, durationMs: 300, timeoutMs: 150, maxOutstanding: 10 });
    const { failures, total } = run.summary();
    expect(total).toBe(30);
    expect(run.ok).toBe(0);
    expect(failures['timeout']).toBeGreaterThan(0);
    expect(failures['outstanding-cap']).toBeGreaterThan(0);
    expect(failures['timeout']! + failures['outstanding-cap']!).toBe(30);
  });

  it('counts refused connections and runs a closed loop within its bounds', async () => {
    const closedPort = await freePort();
    const refused = await runLoad({ url: `http://127.0.0.1:${closedPort}/v1/infer`, rate: 50, durationMs: 100 });
    expect(refused.summary().failures).toEqual({ ECONNREFUSED: 5 });

    const server = await startModelServer({ latencyMs: 0 });
    const closed = await runLoad({ url: `${server.url}/v1/infer`, concurrency: 4, durationMs: 5000, maxRequests: 40 });
    expect(closed.results).toHaveLength(40);
    expect(closed.ok).toBe(40);
  });
});
