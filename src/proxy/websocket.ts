import { STATUS_CODES, request, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { Duplex } from 'node:stream';
import { ProxyError } from './errors.js';
import { upstreamHeaders } from './headers.js';
import { reporter, type ProxyHooks } from './forward.js';
import type { Upstreams } from './types.js';

/**
 * Proxies an HTTP upgrade (WebSocket): the handshake may be retried on another
 * instance on a connect error; once switched, bytes flow both ways untouched and
 * either side closing closes the other.
 */
export async function forwardUpgrade(
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
  upstreams: Upstreams,
  path: string,
  requestId: string,
  hooks: ProxyHooks,
): Promise<void> {
  const config = upstreams.config;
  const started = performance.now();
  const report = reporter(hooks, config.name, req, path, requestId);
  const gone = new AbortController();
  socket.once('close', () => gone.abort(new ProxyError('CLIENT_GONE', 499, 'the client closed the connection')));
  socket.on('error', () => socket.destroy());
  const tried = new Set<string>();

  let refused = 0;
  for (let n = 1; n <= config.retry.attempts + refused; n++) {
    let attempt;
    try {
      attempt = await upstreams.acquire(tried, gone.signal);
    } catch (error) {
      if (gone.signal.aborted) return report(499, 'client-abort', null, n - 1);
      const failure = error instanceof ProxyError ? error : new ProxyError('GATEWAY_ERROR', 500, String(error));
      writeRaw(socket, failure.status, failure.body(requestId));
      return report(failure.status, 'error', null, n - 1, failure.message);
    }
    tried.add(attempt.instance);
    const send = attempt.url.protocol === 'https:' ? httpsRequest : request;
    const upstream = send(new URL(path, attempt.url), {
      method: req.method,
      headers: { ...upstreamHeaders(req, requestId, true), host: attempt.url.host },
      signal: AbortSignal.any([gone.signal, attempt.signal]),
    });
    // The handshake gets the same bound as a response head; past it the attempt fails as a timeout.
    upstream.setTimeout(config.timeouts.firstByte, () =>
      upstream.destroy(Object.assign(new Error(`no answer to the upgrade within timeouts.firstByte (${config.timeouts.firstByte}ms)`), { code: 'ETIMEDOUT' })),
    );
    upstream.end();
    const result = await new Promise<
      | { kind: 'upgrade'; res: IncomingMessage; upSocket: Duplex; upHead: Buffer }
      | { kind: 'response'; res: IncomingMessage }
      | { kind: 'error'; error: NodeJS.ErrnoException }
    >((resolve) => {
      upstream.once('upgrade', (res, upSocket, upHead) => resolve({ kind: 'upgrade', res, upSocket, upHead }));
      upstream.once('response', (res) => resolve({ kind: 'response', res }));
      upstream.once('error', (error) => resolve({ kind: 'error', error }));
    });

    upstream.setTimeout(0);
    if (result.kind === 'error') {
      if (gone.signal.aborted) {
        attempt.finish('client-abort', 'the client closed the connection');
        return report(499, 'client-abort', attempt.instance, n);
      }
      // A refused connection did no work: it takes the instance out and does not count (as in forward.ts).
      const connect = result.error.code === 'ECONNREFUSED';
      const timedOut = result.error.code === 'ETIMEDOUT';
      attempt.finish(connect ? 'connect' : timedOut ? 'timeout' : 'reset', `upgrade failed: ${result.error.message}`);
      if (timedOut) {
        const failure = new ProxyError('UPSTREAM_TIMEOUT', 504, `${attempt.instance}: ${result.error.message}`, { service: config.name });
        writeRaw(socket, 504, failure.body(requestId));
        return report(504, 'error', attempt.instance, n, failure.message);
      }
      if (connect && refused < 10) {
        refused += 1;
        hooks.onRetry(config.name, 'connect');
        continue;
      }
      if (n < config.retry.attempts + refused) {
        hooks.onRetry(config.name, 'reset');
        continue;
      }
      const failure = new ProxyError('UPSTREAM_UNAVAILABLE', 502, `${attempt.instance}: ${result.error.message}`, {
        service: config.name,
      });
      writeRaw(socket, 502, failure.body(requestId));
      return report(502, 'error', attempt.instance, n, failure.message);
    }

    const { res } = result;
    attempt.firstByte(performance.now() - started);
    if (result.kind === 'response') {
      // The instance refused the upgrade: pass its answer on as it is.
      attempt.finish(res.statusCode! >= 500 ? 'status' : 'ok', `answered ${res.statusCode}`);
      socket.write(statusLine(res) + headerLines(res.rawHeaders) + '\r\n');
      res.pipe(socket);
      return report(res.statusCode ?? 502, 'ok', attempt.instance, n);
    }

    const { upSocket, upHead } = result;
    attempt.finish('ok', 'switched protocols');
    socket.write(statusLine(res) + headerLines(res.rawHeaders) + '\r\n');
    if (upHead.length > 0) socket.write(upHead);
    if (head.length > 0) upSocket.write(head);
    upSocket.on('error', () => socket.destroy());
    socket.on('error', () => upSocket.destroy());
    upSocket.once('close', () => socket.destroy());
    socket.once('close', () => upSocket.destroy());
    upSocket.pipe(socket);
    socket.pipe(upSocket);
    return report(101, 'ok', attempt.instance, n);
  }
}

function statusLine(res: IncomingMessage): string {
  return `HTTP/1.1 ${res.statusCode} ${res.statusMessage ?? ''}\r\n`;
}

function headerLines(raw: string[]): string {
  let out = '';
  for (let i = 0; i + 1 < raw.length; i += 2) out += `${raw[i]}: ${raw[i + 1]}\r\n`;
  return out;
}

function writeRaw(socket: Duplex, status: number, body: string): void {
  if (socket.destroyed) return;
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\n` +
      `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
  );
}
