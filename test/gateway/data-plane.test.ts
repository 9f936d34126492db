import { request as httpRequest, type IncomingMessage } from 'node:http';
import { connect } from 'node:net';
import { Readable } from 'node:stream';
import { once } from 'node:events';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { startModelServer, stopAll, type ModelServer } from '../support/fixture.js';
import { closeAllGateways, inferService, on, startGateway, type RunningGateway } from '../support/gateway.js';
import { waitUntil } from '../support/wait.js';

let model: ModelServer;
let gateway: RunningGateway;

beforeAll(async () => {
  model = await startModelServer({ name: 'primary', latencyMs: 10, waitFor: 'ready' });
  gateway = await startGateway(`
stateDir: STATE
gateway: { listen: "127.0.0.1:0" }
services:
  llm:
    route: { pathPrefix: /llm, stripPrefix: true }
    limits: { body: 64KiB }
    retry: { bodyLimit: 1KiB }
    timeouts: { idle: 500ms }
    instances:
      primary: { tier: primary, url: "${model.url}" }
  tts:
    route: { host: tts.example }
    instances:
      primary: { tier: primary, url: "${model.url}" }
`);
  await gateway.event(on.active('primary'));
  await gateway.event((e) => e.service === 'tts' && e.type === 'active-changed');
});

afterAll(async () => {
  await closeAllGateways();
  await stopAll();
});

describe('forwarding', () => {
  it('adds X-Forwarded-* and a request id, strips hop-by-hop headers, and sends the id back', async () => {
    // node:http, because undici will not send a Connection header that names other headers.
    const req = httpRequest(`${gateway.url}/llm/v1/infer`, {
      method: 'POST',
      headers: { 'x-request-id': 'trace-42', connection: 'keep-alive, x-private', 'x-private': 'secret', 'x-kept': 'yes' },
    });
    req.end('hello');
    const [response] = (await once(req, 'response')) as [IncomingMessage];
    expect(response.statusCode).toBe(200);
    expect(response.headers['x-request-id']).toBe('trace-42');
    expect(response.headers['x-understudy-instance']).toBe('primary');
    let text = '';
    for await (const chunk of response) text += String(chunk);
    const seen = JSON.parse(text) as { requestId: string; bodyBytes: number; headers: Record<string, string> };
    expect(seen.requestId).toBe('trace-42');
    expect(seen.bodyBytes).toBe(5);
    expect(seen.headers['x-forwarded-for']).toBe('127.0.0.1');
    expect(seen.headers['x-forwarded-proto']).toBe('http');
    expect(seen.headers['x-forwarded-host']).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(seen.headers['x-kept']).toBe('yes');
    expect(seen.headers['x-private']).toBeUndefined();
  });

  it('routes by host name', async () => {
    const response = await request(`${gateway.url}/v1/infer`, { headers: { host: 'tts.example' } });
    expect(response.statusCode).toBe(200);
    await response.body.dump();
  });

  it('streams a body larger than the retry limit straight through', async () => {
    const body = Buffer.alloc(32 * 1024, 'a');
    const response = await request(`${gateway.url}/llm/v1/infer`, { method: 'PUT', body });
    expect(((await response.body.json()) as { bodyBytes: number }).bodyBytes).toBe(body.length);
  });

  it('passes server-sent events through chunk by chunk, ending with [DONE]', async () => {
    const response = await request(`${gateway.url}/llm/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'm', stream: true, max_tokens: 4, messages: [{ role: 'user', content: 'hi' }] }),
    });
    expect(response.headers['content-type']).toMatch(/^text\/event-stream/);
    const arrivals: number[] = [];
    let text = '';
    for await (const chunk of response.body) {
      arrivals.push(Date.now());
      text += String(chunk);
    }
    const events = text.split('\n\n').filter(Boolean);
    expect(events.at(-1)).toBe('data: [DONE]');
    expect(events.filter((e) => e.includes('chat.completion.chunk')).length).toBeGreaterThanOrEqual(4);
    // Not buffered: the chunks arrived spread over time, not all at once at the end.
    expect(arrivals.length).toBeGreaterThan(1);
  });

  it('passes a WebSocket through', async () => {
    const socket = new WebSocket(`${gateway.url.replace('http', 'ws')}/llm/ws`);
    await once(socket, 'open');
    socket.send('ping');
    const [message] = await once(socket, 'message');
    expect(String(message)).toBe('primary:ping');
    socket.close();
  });
});

describe('failures the client must see', () => {
  it('a response cut after bytes were sent reaches the client as an error, not a clean end', async () => {
    const response = await request(`${gateway.url}/llm/v1/cut?bytes=2048`);
    expect(response.statusCode).toBe(200);
    await expect(response.body.arrayBuffer()).rejects.toThrow();
  });

  it('a stream that stalls longer than timeouts.idle is cut', async () => {
    const response = await request(`${gateway.url}/llm/v1/slow-stream?delay=3000`);
    await expect(response.body.text()).rejects.toThrow();
  });

  it('a client that disconnects cancels the upstream request', async () => {
    const before = (await model.stats()).aborted;
    const controller = new AbortController();
    const pending = request(`${gateway.url}/llm/v1/long?ms=5000`, { signal: controller.signal });
    // Abort once the request has reached the model server.
    await waitUntil(async () => ((await model.stats()).byPath['/v1/long'] ?? 0) > 0, { what: 'the request to reach the model' });
    controller.abort();
    await expect(pending).rejects.toThrow();
    await waitUntil(async () => (await model.stats()).aborted > before, { what: 'the model server to see the abort' });
  });
});

describe('bad requests get clear errors and leave Understudy running', () => {
  it('unknown route: 404 in JSON', async () => {
    const response = await request(`${gateway.url}/nowhere`);
    expect(response.statusCode).toBe(404);
    expect(await response.body.json()).toMatchObject({ error: { code: 'NO_ROUTE', message: 'no service is routed at /nowhere on ' + new URL(gateway.url).host } });
  });

  it('oversized body: 413 in JSON, declared or streamed', async () => {
    const declared = await request(`${gateway.url}/llm/v1/infer`, { method: 'POST', body: Buffer.alloc(100 * 1024) });
    expect(declared.statusCode).toBe(413);
    expect(await declared.body.json()).toMatchObject({ error: { code: 'BODY_TOO_LARGE' } });
    async function* chunks() {
      for (let i = 0; i < 100; i++) yield Buffer.alloc(1024);
    }
    const streamed = await request(`${gateway.url}/llm/v1/infer`, { method: "POST", body: Readable.from(chunks()) });
    expect(streamed.statusCode).toBe(413);
    await streamed.body.dump();
  });

  it('malformed request: 400 in JSON', async () => {
    const socket = connect(Number(new URL(gateway.url).port), '127.0.0.1');
    socket.end('GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n');
    let text = '';
    for await (const chunk of socket) text += String(chunk);
    expect(text).toMatch(/^HTTP\/1\.1 400 Bad Request/);
    expect(text).toContain('"code":"MALFORMED_REQUEST"');
  });

  it('still serves after all of that', async () => {
    const response = await request(`${gateway.url}/llm/v1/infer`);
    expect(response.statusCode).toBe(200);
    await response.body.dump();
  });
});

describe('bounds', () => {
  it('a request past timeouts.total gets 504 and is not tried again elsewhere', async () => {
    const [slow, other] = await Promise.all([
      startModelServer({ name: 'slow', waitFor: 'ready' }),
      startModelServer({ name: 'other', waitFor: 'ready' }),
    ]);
    const bounded = await startGateway(inferService(`
timeouts: { total: 300ms }
instances:
  slow: { tier: primary, url: "${slow.url}" }
  other: { tier: hot, url: "${other.url}" }
`));
    await bounded.event(on.active('slow'));
    const response = await request(`${bounded.url}/v1/long?ms=3000`);
    expect(response.statusCode).toBe(504);
    await response.body.dump();
    expect((await other.stats()).byPath['/v1/long']).toBeUndefined();

    // A client that stops sending its body is bounded the same way.
    const socket = connect(Number(new URL(bounded.url).port), '127.0.0.1');
    socket.write('POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten b');
    let text = '';
    for await (const chunk of socket) {
      text += String(chunk);
      if (text.includes('}')) break;
    }
    socket.destroy();
    expect(text).toMatch(/^HTTP\/1\.1 504/);
    expect(text).toContain('timeouts.total');
  });

  it('shuts down on time with a WebSocket still open', async () => {
    const upstream = await startModelServer({ name: 'ws', waitFor: 'ready' });
    const withSocket = await startGateway(inferService(`
instances:
  ws: { tier: primary, url: "${upstream.url}" }
`));
    await withSocket.event(on.active('ws'));
    const socket = new WebSocket(`${withSocket.url.replace('http', 'ws')}/ws`);
    await once(socket, 'open');
    const closed = once(socket, 'close');
    await withSocket.app.close(500);
    await closed;
  });
});
