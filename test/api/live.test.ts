import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { createParser } from 'eventsource-parser';
import { pino } from 'pino';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AdminServer } from '../../src/api/index.js';
import { hostRefusal, isLoopback, UI_DIR, UiAssets } from '../../src/api/ui.js';
import { parseConfig } from '../../src/config/index.js';
import { Understudy, type ServiceView } from '../../src/controller/index.js';
import type { UnderstudyEvent } from '../../src/core/index.js';
import type { RecentRequest, TrafficSecond } from '../../src/observe/index.js';
import { startModelServer, stopAll } from '../support/fixture.js';
import { waitUntil } from '../support/wait.js';

const TOKEN = 'live-test-token-0123456789';
const auth = { authorization: `Bearer ${TOKEN}` };

const withHost = (host: string | undefined) => ({ headers: host === undefined ? {} : { host } }) as IncomingMessage;

describe('the DNS rebinding guard', () => {
  it('knows a loopback address', () => {
    for (const host of ['127.0.0.1', '127.8.9.10', 'localhost', '::1']) expect(isLoopback(host), host).toBe(true);
    for (const host of ['0.0.0.0', '::', '192.168.1.10', '10.0.0.1', 'admin.example', '1270.0.0.1']) expect(isLoopback(host), host).toBe(false);
  });

  it('on a loopback listener, answers requests for loopback names, with or without a port', () => {
    for (const listen of ['127.0.0.1', 'localhost', '::1']) {
      for (const host of ['127.0.0.1:9901', 'localhost:9901', '[::1]:9901', 'LocalHost:9901', '127.0.0.2:9901', 'localhost', '127.0.0.1', '[::1]']) {
        expect(hostRefusal(withHost(host), listen, []), `${host} on ${listen}`).toBeUndefined();
      }
    }
  });

  it('on a loopback listener, refuses another name, one that only looks like loopback, and none at all', () => {
    for (const host of ['evil.example:9901', 'evil.example', 'localhost.evil.example:9901', '127.0.0.1.evil.example:9901', '127.0.0.1.nip.io']) {
      const refusal = hostRefusal(withHost(host), '127.0.0.1', []);
      expect(refusal, host).toContain(`not for "${host}" (a guard against DNS rebinding)`);
      expect(refusal).toContain('admin.allowedHosts');
    }
    expect(hostRefusal(withHost(undefined), '127.0.0.1', [])).toContain('not for ""');
  });

  it('answers a name listed in allowedHosts, in any case', () => {
    const allowed = ['tunnel.example'];
    expect(hostRefusal(withHost('tunnel.example:9901'), '127.0.0.1', allowed)).toBeUndefined();
    expect(hostRefusal(withHost('Tunnel.Example'), '127.0.0.1', allowed)).toBeUndefined();
    expect(hostRefusal(withHost('evil.example:9901'), '127.0.0.1', allowed)).toBeDefined();
  });

  it('on a listener bound elsewhere on purpose, takes any Host', () => {
    for (const listen of ['0.0.0.0', '::', '192.168.1.10']) {
      for (const host of ['evil.example:9901', '192.168.1.10:9901', undefined]) {
        expect(hostRefusal(withHost(host), listen, []), `${host} on ${listen}`).toBeUndefined();
      }
    }
  });
});

describe('the dashboard files', () => {
  let dir: string;
  let server: Server;
  let base: string;
  const index = `<!doctype html><html><head><title>Understudy</title></head><body>${'<p>compressible</p>'.repeat(200)}</body></html>`;
  const png = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 1, 2, 3, 4, 5, 6, 7, 8]);

  async function serve(assets: UiAssets): Promise<void> {
    server = createServer((req, res) => void assets.serve(req, res, new URL(req.url ?? '/', 'http://ui').pathname));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  async function get(pathname: string, headers: Record<string, string> = {}, method: 'GET' | 'HEAD' = 'GET') {
    const response = await request(`${base}${pathname}`, { method, headers });
    return { status: response.statusCode, headers: response.headers, body: Buffer.from(await response.body.arrayBuffer()) };
  }

  function expectPageRules(headers: IncomingHttpHeaders | Record<string, string | string[] | undefined>): void {
    const csp = String(headers['content-security-policy']);
    expect(csp).toContain("frame-ancestors 'none'");
    expect(csp).toContain("default-src 'self'");
    expect(csp).toContain("script-src 'self'");
    expect(headers['x-frame-options']).toBe('DENY');
    expect(headers['x-content-type-options']).toBe('nosniff');
    expect(headers['referrer-policy']).toBe('no-referrer');
  }

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'understudy-ui-'));
    writeFileSync(path.join(dir, 'index.html'), index);
    writeFileSync(path.join(dir, 'app.js'), 'console.log("dashboard");\n');
    writeFileSync(path.join(dir, 'logo.png'), png);
    writeFileSync(path.join(dir, 'notes.txt'), 'not a dashboard file\n');
    mkdirSync(path.join(dir, 'icons'));
    writeFileSync(path.join(dir, 'icons', 'mark.svg'), '<svg xmlns="http://www.w3.org/2000/svg"/>');
    await serve(new UiAssets(dir));
  });

  afterAll(async () => {
    await new Promise<void>((resolve) => server?.close(() => resolve()));
    rmSync(dir, { recursive: true, force: true });
  });

  it('serves index.html at /ui/, plain when gzip is not accepted, with the page rules', async () => {
    const { status, headers, body } = await get('/ui/');
    expect(status).toBe(200);
    expect(headers['content-type']).toBe('text/html; charset=utf-8');
    expect(headers['content-encoding']).toBeUndefined();
    expect(headers['cache-control']).toBe('no-cache');
    expect(headers.vary).toBe('accept-encoding');
    expect(headers.etag).toMatch(/^"[\w-]{16}"$/);
    expect(Number(headers['content-length'])).toBe(Buffer.byteLength(index));
    expect(body.toString('utf8')).toBe(index);
    expectPageRules(headers);
  });

  it('sends gzip when the client accepts it', async () => {
    const { status, headers, body } = await get('/ui/', { 'accept-encoding': 'br, gzip;q=0.8' });
    expect(status).toBe(200);
    expect(headers['content-encoding']).toBe('gzip');
    expect(Number(headers['content-length'])).toBe(body.length);
    expect(body.length).toBeLessThan(Buffer.byteLength(index) / 4);
    expect(gunzipSync(body).toString('utf8')).toBe(index);
    expectPageRules(headers);
  });

  it('answers 304 to the same ETag, 200 to another', async () => {
    const { headers } = await get('/ui/app.js');
    expect(headers['content-type']).toBe('text/javascript; charset=utf-8');
    const etag = String(headers.etag);
    const same = await get('/ui/app.js', { 'if-none-match': etag });
    expect(same.status).toBe(304);
    expect(same.body.length).toBe(0);
    expect(same.headers.etag).toBe(etag);
    expectPageRules(same.headers);
    const other = await get('/ui/app.js', { 'if-none-match': '"something-else00"' });
    expect(other.status).toBe(200);
    expect(other.body.toString('utf8')).toBe('console.log("dashboard");\n');
    // Each file has its own tag.
    expect((await get('/ui/')).headers.etag).not.toBe(etag);
  });

  it('serves files in subfolders, and never gzips a PNG', async () => {
    const svg = await get('/ui/icons/mark.svg');
    expect(svg.status).toBe(200);
    expect(svg.headers['content-type']).toBe('image/svg+xml');
    const image = await get('/ui/logo.png', { 'accept-encoding': 'gzip' });
    expect(image.status).toBe(200);
    expect(image.headers['content-type']).toBe('image/png');
    expect(image.headers['content-encoding']).toBeUndefined();
    expect(image.body.equals(png)).toBe(true);
  });

  it('answers HEAD with the headers only', async () => {
    const { status, headers, body } = await get('/ui/', {}, 'HEAD');
    expect(status).toBe(200);
    expect(Number(headers['content-length'])).toBe(Buffer.byteLength(index));
    expect(body.length).toBe(0);
  });

  it('answers 404 for an unknown file and for a type it does not serve', async () => {
    for (const name of ['missing.js', 'notes.txt', 'icons/missing.svg']) {
      const { status, headers, body } = await get(`/ui/${name}`);
      expect(status, name).toBe(404);
      expect(headers['content-type']).toBe('text/plain; charset=utf-8');
      expect(body.toString('utf8')).toContain(`no file ${name} in the dashboard`);
      expectPageRules(headers);
    }
  });

  it('sends / and /ui on to /ui/', async () => {
    for (const pathname of ['/', '/ui']) {
      const { status, headers } = await get(pathname);
      expect(status, pathname).toBe(302);
      expect(headers.location).toBe('/ui/');
      expectPageRules(headers);
    }
  });

  it('says the dashboard is not built while its folder is empty, and serves it once built', async () => {
    const empty = mkdtempSync(path.join(tmpdir(), 'understudy-ui-empty-'));
    const assets = new UiAssets(empty);
    const previous = server;
    try {
      await serve(assets);
      const before = await get('/ui/');
      expect(before.status).toBe(404);
      expect(before.body.toString('utf8')).toContain('the dashboard is not built');
      expect(before.body.toString('utf8')).toContain('npm run build');
      writeFileSync(path.join(empty, 'index.html'), index);
      const after = await get('/ui/');
      expect(after.status).toBe(200);
      expect(after.body.toString('utf8')).toBe(index);
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      server = previous;
      base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      rmSync(empty, { recursive: true, force: true });
    }
  });
});

interface Frame {
  event: string;
  data: unknown;
}

interface LiveStream {
  status: number;
  headers: IncomingHttpHeaders;
  /** The body, for an answer that is not a stream. */
  text: string;
  frames: Frame[];
  /** The first frame after the last one matched that matches; bounded by timeoutMs. */
  next<T = unknown>(event: string, match?: (data: T) => boolean, timeoutMs?: number): Promise<T>;
  /** Like next, but any frame since the stream began, in any order; moves no cursor. */
  find<T = unknown>(event: string, match?: (data: T) => boolean, timeoutMs?: number): Promise<T>;
  close(): void;
}

const streams = new Set<LiveStream>();

/** GET /v1/live, parsed as it arrives; resolves once the headers are in (and the body, for a refusal). */
function openLive(base: string, headers: Record<string, string>): Promise<LiveStream> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${base}/v1/live`, { headers });
    const timer = setTimeout(() => {
      req.destroy();
      reject(new Error('GET /v1/live did not answer within 5 s'));
    }, 5000);
    req.once('error', reject);
    req.once('response', (res) => {
      const frames: Frame[] = [];
      let cursor = 0;
      const waiters = new Set<() => void>();
      const parser = createParser({
        onEvent(message) {
          frames.push({ event: message.event ?? 'message', data: JSON.parse(message.data) as unknown });
          for (const waiter of [...waiters]) waiter();
        },
      });
      const wait = <T>(event: string, match: (data: T) => boolean, timeoutMs: number, ordered: boolean) =>
        new Promise<T>((found, fail) => {
          const look = () => {
            for (let i = ordered ? cursor : 0; i < frames.length; i++) {
              const frame = frames[i]!;
              if (frame.event !== event || !match(frame.data as T)) continue;
              if (ordered) cursor = i + 1;
              done();
              found(frame.data as T);
              return;
            }
          };
          const done = () => {
            clearTimeout(giveUp);
            waiters.delete(look);
          };
          const giveUp = setTimeout(() => {
            done();
            fail(new Error(`no matching ${event} frame within ${timeoutMs} ms; frames so far: ${frames.map((f) => f.event).join(', ')}`));
          }, timeoutMs);
          waiters.add(look);
          look();
        });
      const stream: LiveStream = {
        status: res.statusCode ?? 0,
        headers: res.headers,
        text: '',
        frames,
        next: (event, match = () => true, timeoutMs = 3000) => wait(event, match, timeoutMs, true),
        find: (event, match = () => true, timeoutMs = 3000) => wait(event, match, timeoutMs, false),
        close() {
          streams.delete(stream);
          req.destroy();
        },
      };
      streams.add(stream);
      res.setEncoding('utf8');
      if (res.statusCode === 200) {
        clearTimeout(timer);
        res.on('data', (chunk: string) => parser.feed(chunk));
        res.on('error', () => {});
        resolve(stream);
        return;
      }
      res.on('data', (chunk: string) => (stream.text += chunk));
      res.once('end', () => {
        clearTimeout(timer);
        resolve(stream);
      });
    });
    req.end();
  });
}

/** A request over node:http, which sends the Host header it is given. */
function rawGet(url: string, headers: Record<string, string>): Promise<{ status: number; headers: IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { headers, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.once('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.once('timeout', () => req.destroy(new Error(`GET ${url} timed out`)));
    req.once('error', reject);
    req.end();
  });
}

describe('the admin API and its live feed, over HTTP, on a running Understudy', () => {
  let app: Understudy;
  let admin: AdminServer;
  let base: string;
  let gateway: string;
  let stateDir: string;

  /** The first event (past or future) that matches, published at or after `since`; bounded. */
  function eventWhere(match: (event: UnderstudyEvent) => boolean, since: number, timeoutMs = 3000): Promise<UnderstudyEvent> {
    const past = app.events.list({ since }).find(match);
    if (past) return Promise.resolve(past);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        stop();
        reject(new Error(`no matching event within ${timeoutMs} ms; since then: ${app.events.list({ since }).map((e) => e.type).join(', ')}`));
      }, timeoutMs);
      const stop = app.events.subscribe((event) => {
        if (!match(event)) return;
        clearTimeout(timer);
        stop();
        resolve(event);
      });
    });
  }

  async function post(pathname: string, body: unknown, headers: Record<string, string> = {}) {
    const response = await fetch(`${base}${pathname}`, {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json', ...headers },
      body: JSON.stringify(body),
    });
    return { status: response.status, body: (await response.json()) as { ok?: boolean; error?: { code: string; message: string }; service?: ServiceView } };
  }

  const active = () => app.service('infer')!.view().active;

  beforeAll(async () => {
    const [primary, hot] = await Promise.all([
      startModelServer({ name: 'primary', latencyMs: 5, waitFor: 'ready' }),
      startModelServer({ name: 'hot', latencyMs: 5, waitFor: 'ready' }),
    ]);
    stateDir = mkdtempSync(path.join(tmpdir(), 'understudy-live-'));
    const config = parseConfig(
      `
stateDir: ${stateDir}
gateway: { listen: "127.0.0.1:0" }
admin: { listen: "127.0.0.1:0" }
log: { level: info, access: true }
services:
  infer:
    route: { pathPrefix: / }
    instances:
      primary: { tier: primary, url: "${primary.url}" }
      hot: { tier: hot, url: "${hot.url}" }
`,
      path.join(stateDir, 'understudy.yaml'),
    );
    // The app's own log ring gets the lines (as createLogger's multistream would give them), without stdout.
    let ring: Understudy['logLines'] | undefined;
    const log = pino({ level: config.log.level, base: { app: 'understudy' }, timestamp: pino.stdTimeFunctions.isoTime }, { write: (line: string) => ring?.write(line) });
    app = new Understudy(config, { log });
    ring = app.logLines;
    await app.start();
    admin = new AdminServer(app, TOKEN);
    base = `http://127.0.0.1:${(await admin.start()).port}`;
    gateway = `http://127.0.0.1:${app.gatewayAddresses()[0]!.port}`;
    await app.service('infer')!.waitFor((s) => s.active === 'primary' && s.instances.hot!.state === 'ready', 15_000, undefined, 'primary active, hot ready');
  });

  afterEach(async () => {
    for (const stream of [...streams]) stream.close();
    await waitUntil(() => admin.live.open === 0, { timeoutMs: 3000, intervalMs: 10, what: 'the live pages to be gone' });
  });

  afterAll(async () => {
    await admin?.close();
    await app?.close(2000);
    await stopAll();
    if (stateDir) rmSync(stateDir, { recursive: true, force: true });
  });

  it('refuses /v1/live without the token, and starts no stream', async () => {
    const attempts: Record<string, string>[] = [{}, { authorization: 'Bearer not-the-token-at-all' }, { authorization: TOKEN }];
    for (const headers of attempts) {
      const live = await openLive(base, headers);
      expect(live.status).toBe(401);
      expect(live.headers['content-type']).toBe('application/json');
      expect(JSON.parse(live.text)).toEqual({ error: { code: 'UNAUTHORIZED', message: 'send Authorization: Bearer <admin token>' } });
      expect(live.frames).toEqual([]);
      expect(admin.live.open).toBe(0);
    }
  });

  it('sends hello first, with the services, the traffic so far and how many pages watch', async () => {
    const before = Date.now();
    const live = await openLive(base, auth);
    expect(live.status).toBe(200);
    expect(live.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    expect(live.headers['cache-control']).toBe('no-cache, no-store');
    const hello = await live.next<{ time: number; node: string | null; services: ServiceView[]; traffic: unknown; last: unknown; live: number }>('hello');
    expect(live.frames[0]!.event).toBe('hello');
    expect(Object.keys(hello).sort()).toEqual(['last', 'live', 'node', 'services', 'time', 'traffic']);
    expect(hello.time).toBeGreaterThanOrEqual(before);
    expect(hello.node).toBeNull();
    expect(hello.live).toBe(1);
    expect(hello.services).toHaveLength(1);
    expect(hello.services[0]).toMatchObject({ name: 'infer', active: 'primary' });
    expect(hello.services[0]!.instances.map((i) => [i.name, i.tier, i.state])).toEqual([
      ['primary', 'primary', 'ready'],
      ['hot', 'hot', 'ready'],
    ]);
    expect(typeof hello.traffic).toBe('object');
    expect(typeof hello.last).toBe('object');
    expect(admin.live.open).toBe(1);

    const second = await openLive(base, auth);
    expect((await second.next<{ live: number }>('hello')).live).toBe(2);
    second.close();
    await waitUntil(() => admin.live.open === 1, { timeoutMs: 3000, intervalMs: 10, what: 'the second page to be gone' });
    // Once a second: a status, and the traffic of the second just closed.
    await live.next('traffic', undefined, 2500);
    const status = await live.next<{ time: number; services: ServiceView[] }>('status', undefined, 2500);
    expect(status.services[0]!.name).toBe('infer');
  });

  it('streams a switchover as it happens: the event, then a status with the new active instance, and who asked', async () => {
    expect(active()).toBe('primary');
    const live = await openLive(base, auth);
    await live.next('hello');
    const since = Date.now();
    const answer = await post('/v1/services/infer/switchover', { to: 'hot' }, { 'x-understudy-actor': 'alice <script>', 'x-understudy-client': 'dashboard', 'x-request-id': 'op-trace-0001' });
    expect(answer.status).toBe(200);
    expect(answer.body.ok).toBe(true);
    expect(answer.body.service!.active).toBe('hot');

    const moved = await live.next<UnderstudyEvent>('event', (e) => e.type === 'active-changed');
    expect(moved).toMatchObject({ type: 'active-changed', service: 'infer', from: 'primary', to: 'hot', kind: 'switchover', reason: 'switchover requested by alice script (127.0.0.1) via dashboard' });
    const status = await live.next<{ services: ServiceView[] }>('status');
    expect(status.services[0]!.active).toBe('hot');
    expect(status.services[0]!.mode).toBe('pinned');

    const action = await eventWhere((e) => e.type === 'operator-action', since);
    expect(action).toMatchObject({
      type: 'operator-action',
      action: 'switchover',
      target: 'infer',
      service: 'infer',
      by: 'alice script (127.0.0.1)',
      via: 'dashboard',
      outcome: 'accepted',
      reason: 'switchover infer requested by alice script (127.0.0.1) via dashboard',
      traceId: 'op-trace-0001',
    });
    // The page hears of it too.
    expect(await live.find<UnderstudyEvent>('event', (e) => e.type === 'operator-action', 1000)).toMatchObject({ by: 'alice script (127.0.0.1)', via: 'dashboard' });
    expect(active()).toBe('hot');
  });

  it('records a refused action as refused, with why, and changes nothing', async () => {
    const was = active();
    const since = Date.now();
    // No actor said, an unknown client: someone, via api.
    const answer = await post('/v1/services/infer/switchover', { to: 'nope' }, { 'x-understudy-client': 'curl' });
    expect(answer.status).toBe(409);
    expect(answer.body.error).toEqual({ code: 'REFUSED', message: 'service infer has no instance nope' });
    const action = await eventWhere((e) => e.type === 'operator-action' && e.service === 'infer' && e.outcome === 'refused', since);
    expect(action).toMatchObject({
      action: 'switchover',
      target: 'infer',
      by: 'someone (127.0.0.1)',
      via: 'api',
      outcome: 'refused',
      reason: 'switchover infer refused (409): service infer has no instance nope',
    });

    const noService = await post('/v1/services/nothing-here/switchover', { to: 'hot' }, { 'x-understudy-actor': 'bob', 'x-understudy-client': 'cli' });
    expect(noService.status).toBe(404);
    const refused = await eventWhere((e) => e.type === 'operator-action' && e.service === 'nothing-here', since);
    expect(refused).toMatchObject({ by: 'bob (127.0.0.1)', via: 'cli', outcome: 'refused', reason: 'switchover nothing-here refused (404): no service named nothing-here' });

    expect(active()).toBe(was);
    expect(app.events.list({ since, type: 'active-changed' })).toEqual([]);
  });

  it('finds the log lines of a request made through the gateway by its x-request-id', async () => {
    const id = `logs-test-${Date.now()}`;
    const response = await request(`${gateway}/v1/infer`, { method: 'POST', headers: { 'x-request-id': id }, body: 'hello' });
    expect(response.statusCode).toBe(200);
    expect(response.headers['x-request-id']).toBe(id);
    const instance = String(response.headers['x-understudy-instance']);
    expect(((await response.body.json()) as { requestId: string }).requestId).toBe(id);

    type Logs = { request: string; lines: Record<string, unknown>[]; access: boolean };
    const logs = async (request: string): Promise<{ status: number; body: Logs }> => {
      const answer = await fetch(`${base}/v1/logs?request=${encodeURIComponent(request)}`, { headers: auth });
      return { status: answer.status, body: (await answer.json()) as Logs };
    };
    // The access line is written when the answer ends, a moment after the client has it.
    let found: Logs | undefined;
    await waitUntil(async () => (found = (await logs(id)).body).lines.length > 0, { timeoutMs: 3000, intervalMs: 20, what: `the log line of ${id}` });
    expect(found!.request).toBe(id);
    expect(found!.access).toBe(true);
    expect(found!.lines).toHaveLength(1);
    expect(found!.lines[0]).toMatchObject({ level: 30, app: 'understudy', msg: 'request', requestId: id, service: 'infer', instance, method: 'POST', path: '/v1/infer', status: 200, outcome: 'ok' });

    expect((await logs('logs-test-unknown')).body.lines).toEqual([]);
    const bad = await logs('x');
    expect(bad.status).toBe(400);
    expect(bad.body).toMatchObject({ error: { code: 'BAD_FIELD' } });
    expect((await fetch(`${base}/v1/logs?request=${id}`)).status).toBe(401);
  });

  it('counts a request under the instance that answered it', async () => {
    const live = await openLive(base, auth);
    await live.next('hello');
    const id = `traffic-test-${Date.now()}`;
    const response = await request(`${gateway}/v1/infer`, { headers: { 'x-request-id': id } });
    expect(response.statusCode).toBe(200);
    await response.body.dump();
    const instance = String(response.headers['x-understudy-instance']);
    expect(instance).toBe(active());
    const other = instance === 'primary' ? 'hot' : 'primary';

    // The second closes on the feed's next tick, which sends it to the page.
    type Tick = { seconds: Record<string, Record<string, TrafficSecond>>; last: Record<string, RecentRequest[]> };
    const mine = (t: Tick) => t.last.infer?.find((r) => r.requestId === id);
    const tick = await live.next<Tick>('traffic', (t) => mine(t) !== undefined && t.seconds.infer?.[instance]?.t === Math.floor(mine(t)!.time / 1000), 3500);
    const second = tick.seconds.infer![instance]!;
    expect(mine(tick)).toMatchObject({ instance, status: 200, outcome: 'ok' });
    // Every request that instance answered in that second, and no other (an earlier test may have sent one too).
    const inThatSecond = tick.last.infer!.filter((r) => r.instance === instance && Math.floor(r.time / 1000) === second.t);
    expect(second).toMatchObject({ n: inThatSecond.length, errors: 0 });
    expect(second.p50).toBeGreaterThan(0);
    expect(second.p95).toBeGreaterThanOrEqual(second.p50!);
    expect(tick.seconds.infer![other]).toBeUndefined();

    const answer = await fetch(`${base}/v1/traffic`, { headers: auth });
    expect(answer.status).toBe(200);
    const traffic = (await answer.json()) as { series: Record<string, Record<string, TrafficSecond[]>>; last: Record<string, RecentRequest[]> };
    expect(traffic.series.infer![instance]).toContainEqual(second);
    expect(traffic.series.infer![other]?.some((s) => s.t === second.t) ?? false).toBe(false);
    expect(traffic.last.infer!.find((r) => r.requestId === id)).toMatchObject({ instance, method: 'GET', path: '/v1/infer', status: 200, outcome: 'ok' });
    expect((await fetch(`${base}/v1/traffic`)).status).toBe(401);
  });

  it('answers OPTIONS with 405 and no CORS headers', async () => {
    for (const pathname of ['/v1/status', '/v1/live', '/v1/services/infer/switchover']) {
      const response = await fetch(`${base}${pathname}`, {
        method: 'OPTIONS',
        headers: { origin: 'https://evil.example', 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization' },
      });
      expect(response.status, pathname).toBe(405);
      expect(((await response.json()) as { error: { code: string } }).error.code).toBe('NO_CORS');
      expect([...response.headers.keys()].filter((name) => name.startsWith('access-control-')), pathname).toEqual([]);
    }
    // Nor does a plain answer name any origin.
    const status = await fetch(`${base}/v1/status`, { headers: { ...auth, origin: 'https://evil.example' } });
    expect(status.status).toBe(200);
    expect([...status.headers.keys()].filter((name) => name.startsWith('access-control-'))).toEqual([]);
  });

  it('sends / on to the dashboard, and serves the built one without a token', async () => {
    const root = await fetch(`${base}/`, { redirect: 'manual' });
    expect(root.status).toBe(302);
    expect(root.headers.get('location')).toBe('/ui/');
    const page = await fetch(`${base}/ui/`);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toBe('text/html; charset=utf-8');
    expect(page.headers.get('content-security-policy')).toContain("frame-ancestors 'none'");
    expect(await page.text()).toBe(readFileSync(path.join(UI_DIR, 'index.html'), 'utf8'));
  });

  it('answers requests for another Host name with 403 (DNS rebinding), even with the token', async () => {
    const port = new URL(base).port;
    for (const pathname of ['/v1/status', '/ui/', '/v1/live']) {
      const refused = await rawGet(`${base}${pathname}`, { ...auth, host: `evil.example:${port}` });
      expect(refused.status, pathname).toBe(403);
      expect(JSON.parse(refused.body)).toMatchObject({ error: { code: 'WRONG_HOST' } });
    }
    expect(admin.live.open).toBe(0);
    for (const host of [`localhost:${port}`, `127.0.0.1:${port}`]) {
      expect((await rawGet(`${base}/v1/status`, { ...auth, host })).status, host).toBe(200);
    }
  });
});
