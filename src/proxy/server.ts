import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { ProxyError } from './errors.js';
import { forward, respondError, type ProxyHooks } from './forward.js';
import { requestIdOf } from './headers.js';
import type { Upstreams } from './types.js';
import { forwardUpgrade } from './websocket.js';

export interface Route {
  upstreams: Upstreams;
  pathPrefix?: string | undefined;
  host?: string | undefined;
  stripPrefix: boolean;
}

export interface ListenerSpec {
  host: string;
  port: number;
  routes: Route[];
}

/** The data plane's listeners. Routes a request by host and longest path prefix, then forwards it. */
export class Gateway {
  private readonly servers: Server[] = [];
  /** Client sockets of proxied WebSockets: the HTTP server no longer tracks them once upgraded. */
  private readonly tunnels = new Set<Duplex>();
  private closing: Promise<void> | undefined;

  constructor(
    private readonly listeners: ListenerSpec[],
    private readonly hooks: ProxyHooks,
  ) {}

  async start(): Promise<void> {
    for (const listener of this.listeners) {
      // Longer prefixes first, and host routes before host-less ones.
      const routes = [...listener.routes].sort(
        (a, b) => Number(b.host !== undefined) - Number(a.host !== undefined) || (b.pathPrefix ?? '').length - (a.pathPrefix ?? '').length,
      );
      const server = createServer({ keepAliveTimeout: 65_000, requestTimeout: 0 });
      server.on('request', (req, res) => this.onRequest(routes, req, res));
      server.on('upgrade', (req, socket, head) => this.onUpgrade(routes, req, socket, head));
      server.on('clientError', (error: NodeJS.ErrnoException, socket) => rejectMalformed(error, socket));
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(listener.port, listener.host, () => {
          server.off('error', reject);
          server.on('error', (error) => this.hooks.onError(`the listener on ${listener.host}:${listener.port} failed`, error));
          resolve();
        });
      });
      this.servers.push(server);
    }
  }

  addresses(): { host: string; port: number }[] {
    return this.servers.map((server) => {
      const address = server.address();
      return typeof address === 'object' && address ? { host: address.address, port: address.port } : { host: '', port: 0 };
    });
  }

  /** Where each service is reached, as a client would write it: `http://127.0.0.1:8080/` (own port), with its host name or path prefix. */
  serviceUrls(): { service: string; url: string }[] {
    return this.listeners.flatMap((listener, i) => {
      const address = this.servers[i]?.address();
      const bound = typeof address === 'object' && address ? address : { address: listener.host, port: listener.port };
      const host = bound.address.includes(':') ? `[${bound.address}]` : bound.address;
      return listener.routes.map((route) => ({
        service: route.upstreams.config.name,
        url: `http://${route.host ?? host}:${bound.port}${route.pathPrefix ?? '/'}`,
      }));
    });
  }

  /** Stops accepting, lets in-flight requests and WebSockets finish until the deadline, then cuts the rest. Safe to call twice. */
  close(deadlineMs = 10_000): Promise<void> {
    this.closing ??= Promise.all(
      this.servers.map(
        (server) =>
          new Promise<void>((resolve) => {
            const force = setTimeout(() => {
              server.closeAllConnections();
              for (const socket of this.tunnels) socket.destroy();
            }, deadlineMs);
            server.close(() => {
              clearTimeout(force);
              resolve();
            });
            server.closeIdleConnections();
          }),
      ),
    ).then(() => undefined);
    return this.closing;
  }

  private onRequest(routes: Route[], req: IncomingMessage, res: ServerResponse): void {
    const requestId = requestIdOf(req);
    const match = matchRoute(routes, req);
    if (!match) {
      const url = req.url ?? '/';
      respondError(res, new ProxyError('NO_ROUTE', 404, `no service is routed at ${url.split('?')[0]} on ${req.headers.host ?? 'this listener'}`), requestId);
      req.resume();
      return;
    }
    forward(req, res, match.route.upstreams, match.path, requestId, this.hooks).catch((error: unknown) => {
      respondError(res, new ProxyError('GATEWAY_ERROR', 500, (error as Error).message), requestId);
    });
  }

  private onUpgrade(routes: Route[], req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const requestId = requestIdOf(req);
    const match = matchRoute(routes, req);
    if (!match) {
      socket.end('HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
      return;
    }
    this.tunnels.add(socket);
    socket.once('close', () => this.tunnels.delete(socket));
    forwardUpgrade(req, socket, head, match.route.upstreams, match.path, requestId, this.hooks).catch(() => socket.destroy());
  }
}

function matchRoute(routes: Route[], req: IncomingMessage): { route: Route; path: string } | undefined {
  const url = req.url ?? '/';
  const host = (req.headers.host ?? '').replace(/:\d+$/, '').toLowerCase();
  for (const route of routes) {
    if (route.host !== undefined && route.host.toLowerCase() !== host) continue;
    const prefix = route.pathPrefix;
    if (prefix === undefined || prefix === '/') return { route, path: url };
    const base = prefix.endsWith('/') ? prefix.slice(0, -1) : prefix;
    const next = url.charAt(base.length);
    if (!url.startsWith(base) || (next !== '' && next !== '/' && next !== '?')) continue;
    if (!route.stripPrefix) return { route, path: url };
    const rest = url.slice(base.length);
    return { route, path: rest.startsWith('/') ? rest : `/${rest}` };
  }
  return undefined;
}

/** Malformed requests never reach a service: answer in JSON and close. */
function rejectMalformed(error: NodeJS.ErrnoException, socket: Duplex): void {
  if (!socket.writable || error.code === 'ECONNRESET') {
    socket.destroy();
    return;
  }
  const tooLarge = error.code === 'HPE_HEADER_OVERFLOW';
  const status = tooLarge ? 431 : 400;
  const body = JSON.stringify({
    error: {
      code: tooLarge ? 'HEADERS_TOO_LARGE' : 'MALFORMED_REQUEST',
      message: tooLarge ? 'the request headers are too large' : `the request could not be parsed: ${error.code ?? error.message}`,
    },
  });
  socket.end(
    `HTTP/1.1 ${status} ${tooLarge ? 'Request Header Fields Too Large' : 'Bad Request'}\r\n` +
      `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
  );
}
