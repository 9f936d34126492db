import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders } from 'node:http';

/** RFC 9110 §7.6.1 connection-specific headers, never forwarded. */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  // Answered by the gateway itself (Node sends 100 Continue); not forwarded.
  'expect',
]);

/** Whether a header is connection-specific: always-hop-by-hop, or named in the Connection header. */
function hopByHop(headers: IncomingHttpHeaders): (name: string) => boolean {
  const connection = headers.connection;
  if (connection === undefined || connection === 'keep-alive' || connection === 'close') return (name) => HOP_BY_HOP.has(name);
  const named = new Set(
    String(connection)
      .split(',')
      .map((token) => token.trim().toLowerCase()),
  );
  return (name) => HOP_BY_HOP.has(name) || named.has(name);
}

/** Headers for the instance: hop-by-hop stripped, Host set by the client library, X-Forwarded-* added. */
export function upstreamHeaders(req: IncomingMessage, requestId: string, keepUpgrade = false): Record<string, string | string[]> {
  const drop = hopByHop(req.headers);
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(req.headers)) {
    if (value === undefined || name === 'host' || (drop(name) && !(keepUpgrade && (name === 'upgrade' || name === 'connection')))) {
      continue;
    }
    out[name] = value;
  }
  const peer = req.socket.remoteAddress ?? '';
  const prior = req.headers['x-forwarded-for'];
  out['x-forwarded-for'] = prior ? `${String(prior)}, ${peer}` : peer;
  out['x-forwarded-proto'] ??= 'encrypted' in req.socket ? 'https' : 'http';
  if (req.headers.host) out['x-forwarded-host'] ??= req.headers.host;
  out['x-request-id'] = requestId;
  return out;
}

/** Headers for the client: hop-by-hop stripped (Node frames the body itself). */
export function downstreamHeaders(headers: Record<string, string | string[] | undefined>): OutgoingHttpHeaders {
  const drop = hopByHop(headers as IncomingHttpHeaders);
  const out: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined && !drop(name)) out[name] = value;
  }
  return out;
}

const REQUEST_ID = /^[\w.:-]{1,128}$/;

/** The client's request id when it sent a sane one, else a new one. */
export function requestIdOf(req: IncomingMessage): string {
  const given = req.headers['x-request-id'];
  return typeof given === 'string' && REQUEST_ID.test(given) ? given : crypto.randomUUID();
}
