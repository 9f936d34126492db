import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { parseDuration } from '../config/index.js';
import type { Understudy } from '../controller/index.js';
import { tokenMatches } from './token.js';

/**
 * The admin API. Everything but `/healthz` and `/metrics` needs the bearer token;
 * it listens on 127.0.0.1 unless configured otherwise.
 *
 *   GET  /v1/status                                      services, instances, active
 *   GET  /v1/events?service=&type=&since=10m&limit=      the event timeline
 *   POST /v1/services/:service/switchover   {"to"?}      move traffic on purpose
 *   POST /v1/services/:service/instances/:name/drain     take out of rotation, then stop
 *   POST /v1/services/:service/instances/:name/resume    bring back a drained or quarantined instance
 */
export class AdminServer {
  private server: Server | undefined;

  constructor(
    private readonly app: Understudy,
    private readonly token: string,
  ) {}

  async start(): Promise<{ host: string; port: number }> {
    const { host, port } = this.app.config.admin.listen;
    const server = createServer((req, res) => {
      this.handle(req, res).catch((error: unknown) => send(res, 500, { error: { code: 'INTERNAL', message: String(error) } }));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    this.server = server;
    const address = server.address();
    return typeof address === 'object' && address ? { host: address.address, port: address.port } : { host, port };
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://admin');
    const route = `${req.method} ${url.pathname}`;
    if (route === 'GET /healthz') return send(res, 200, { status: 'ok' });
    if (route === 'GET /metrics') {
      const registry = this.app.metrics.registry;
      const text = await registry.metrics();
      res.writeHead(200, { 'content-type': registry.contentType }).end(text);
      return;
    }
    if (!tokenMatches(req.headers.authorization, this.token)) {
      return send(res, 401, { error: { code: 'UNAUTHORIZED', message: 'send Authorization: Bearer <admin token>' } });
    }
    if (route === 'GET /v1/status') {
      return send(res, 200, { services: Object.fromEntries(this.app.status().map((s) => [s.name, s])) });
    }
    if (route === 'GET /v1/events') return this.events(url, res);

    const command = /^\/v1\/services\/([^/]+)(?:\/instances\/([^/]+))?\/(switchover|drain|resume)$/.exec(url.pathname);
    if (req.method === 'POST' && command) {
      const [, serviceName, instance, verb] = command;
      const service = this.app.service(decodeURIComponent(serviceName!));
      if (!service) return send(res, 404, { error: { code: 'NO_SERVICE', message: `no service named ${serviceName}` } });
      const body = await readJson(req);
      if (body === undefined) return send(res, 400, { error: { code: 'BAD_JSON', message: 'the body is not JSON' } });
      let rejected: string | undefined;
      if (verb === 'switchover' && instance === undefined) {
        const to = (body as { to?: unknown }).to;
        if (to !== undefined && typeof to !== 'string') {
          return send(res, 400, { error: { code: 'BAD_FIELD', message: '"to" must be an instance name' } });
        }
        rejected = service.dispatch({ type: 'switchover', to });
      } else if ((verb === 'drain' || verb === 'resume') && instance !== undefined) {
        rejected = service.dispatch({ type: verb, instance: decodeURIComponent(instance) });
      } else {
        return notFound(res);
      }
      if (rejected !== undefined) return send(res, 409, { error: { code: 'REFUSED', message: rejected } });
      return send(res, 200, { ok: true, service: service.view() });
    }
    return notFound(res);
  }

  private events(url: URL, res: ServerResponse): void {
    const since = url.searchParams.get('since');
    const limit = url.searchParams.get('limit');
    let sinceTime: number | undefined;
    if (since !== null) {
      const ago = /^\d+$/.test(since) ? undefined : parseDuration(since);
      sinceTime = ago !== undefined ? Date.now() - ago : Number(since);
      if (!Number.isFinite(sinceTime)) {
        return send(res, 400, { error: { code: 'BAD_FIELD', message: 'since is a duration ago ("10m") or epoch milliseconds' } });
      }
    }
    if (limit !== null && !/^\d+$/.test(limit)) {
      return send(res, 400, { error: { code: 'BAD_FIELD', message: 'limit is a whole number' } });
    }
    const events = this.app.events.list({
      service: url.searchParams.get('service') ?? undefined,
      type: url.searchParams.get('type') ?? undefined,
      since: sinceTime,
      limit: limit === null ? undefined : Number(limit),
    });
    send(res, 200, { events });
  }
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text);
}

function notFound(res: ServerResponse): void {
  send(res, 404, { error: { code: 'NOT_FOUND', message: 'no such admin endpoint; see `understudy --help`' } });
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  let text = '';
  for await (const chunk of req) {
    text += String(chunk);
    if (text.length > 64 * 1024) return undefined;
  }
  if (text.trim() === '') return {};
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}
