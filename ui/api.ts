import { createParser } from 'eventsource-parser';

/** The token and name live in sessionStorage: kept for this tab only, gone when it closes. */
const TOKEN_KEY = 'understudy.token';
const NAME_KEY = 'understudy.name';

export interface Session {
  token: string;
  name: string;
}

export function loadSession(): Session | undefined {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) return undefined;
  return { token, name: sessionStorage.getItem(NAME_KEY) ?? '' };
}

export function saveSession(session: Session): void {
  sessionStorage.setItem(TOKEN_KEY, session.token);
  sessionStorage.setItem(NAME_KEY, session.name);
}

export function clearSession(): void {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(NAME_KEY);
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

function headers(session: Session, json = false): Record<string, string> {
  return {
    authorization: `Bearer ${session.token}`,
    'x-understudy-client': 'dashboard',
    ...(session.name ? { 'x-understudy-actor': session.name } : {}),
    ...(json ? { 'content-type': 'application/json' } : {}),
  };
}

/** One admin API call with the tab's token; a refusal becomes an ApiError with the server's own words. */
export async function api<T>(session: Session, method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> {
  const response = await fetch(path, { method, headers: headers(session, body !== undefined), body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.ok) return (await response.json()) as T;
  let code = 'HTTP';
  let message = `${response.status} ${response.statusText}`;
  try {
    const error = ((await response.json()) as { error?: { code?: string; message?: string } }).error;
    code = error?.code ?? code;
    message = error?.message ?? message;
  } catch {
    // Not JSON: the status says it.
  }
  throw new ApiError(response.status, code, message);
}

/** A file the admin API serves (a drill's picture, job results) as text, with the token. */
export async function apiText(session: Session, path: string): Promise<string> {
  const response = await fetch(path, { headers: headers(session) });
  if (!response.ok) throw new ApiError(response.status, 'HTTP', `${response.status} ${response.statusText}`);
  return response.text();
}

export type LiveState = 'connecting' | 'live' | 'reconnecting' | 'refused';

/**
 * Follows `GET /v1/live` (server-sent events) with the token in a header, which
 * EventSource cannot send; reconnects after a second when the stream ends, and gets
 * a fresh `hello` each time, so nothing is missed for long.
 */
export function follow(session: Session, onMessage: (event: string, data: unknown) => void, onState: (state: LiveState) => void): () => void {
  let stopped = false;
  let controller: AbortController | undefined;
  let retry: ReturnType<typeof setTimeout> | undefined;
  const connect = async () => {
    controller = new AbortController();
    try {
      const response = await fetch('/v1/live', { headers: headers(session), signal: controller.signal });
      if (response.status === 401) {
        onState('refused');
        return;
      }
      if (!response.ok || !response.body) throw new Error(`${response.status}`);
      onState('live');
      const parser = createParser({
        onEvent: (message) => {
          try {
            onMessage(message.event ?? 'message', JSON.parse(message.data));
          } catch {
            // A damaged message is skipped; the next status repairs the view.
          }
        },
      });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.feed(value);
      }
    } catch {
      // Dropped (Understudy restarting, the network): try again below.
    }
    if (stopped) return;
    onState('reconnecting');
    retry = setTimeout(() => void connect(), 1000);
  };
  onState('connecting');
  void connect();
  return () => {
    stopped = true;
    clearTimeout(retry);
    controller?.abort();
  };
}
