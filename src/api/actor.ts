import type { IncomingMessage } from 'node:http';

/** Who a person says they are (the dashboard asks at login; the CLI sends user@host). */
export const ACTOR_HEADER = 'x-understudy-actor';
/** What they used: dashboard, cli; anything else is recorded as "api". */
export const CLIENT_HEADER = 'x-understudy-client';

const CLIENTS = new Set(['dashboard', 'cli']);

/**
 * Who asked, for the `operator-action` event. The admin token is shared, so the name is
 * what the caller says; the address it came from is recorded beside it.
 */
export function actorOf(req: IncomingMessage): { by: string; via: string } {
  const raw = req.headers[ACTOR_HEADER];
  const said = typeof raw === 'string' ? raw.replace(/[^\p{L}\p{N} ._@+-]/gu, '').trim().slice(0, 64) : '';
  const from = req.socket.remoteAddress ?? 'unknown address';
  const client = req.headers[CLIENT_HEADER];
  return { by: `${said || 'someone'} (${from})`, via: typeof client === 'string' && CLIENTS.has(client) ? client : 'api' };
}
