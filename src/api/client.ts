import { hostname, userInfo } from 'node:os';
import { request, type Dispatcher } from 'undici';
import { ACTOR_HEADER, CLIENT_HEADER } from './actor.js';
import type { Config } from '../config/index.js';
import { readToken, TOKEN_ENV, tokenFile } from './token.js';
import { UnderstudyError } from '../core/index.js';

/** Who asks, recorded with every action (the `operator-action` event): $UNDERSTUDY_ACTOR, else user@host. */
function actor(): string {
  if (process.env.UNDERSTUDY_ACTOR) return process.env.UNDERSTUDY_ACTOR;
  try {
    return `${userInfo().username}@${hostname()}`;
  } catch {
    return `unknown@${hostname()}`;
  }
}

const ACTOR_HEADERS = { [ACTOR_HEADER]: actor(), [CLIENT_HEADER]: 'cli' };

/** Talks to a running Understudy's admin API, found through its config file. */
export class AdminClient {
  private readonly base: string;
  private readonly token: string;

  constructor(config: Config) {
    const { host, port } = config.admin.listen;
    const connectHost = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host;
    this.base = `http://${connectHost.includes(':') ? `[${connectHost}]` : connectHost}:${port}`;
    const token = readToken(config);
    if (!token) {
      throw new UnderstudyError(
        'NO_TOKEN',
        `no admin token: set admin.token, $${TOKEN_ENV}, or start Understudy once so it writes ${tokenFile(config)}`,
      );
    }
    this.token = token;
  }

  /**
   * One admin API call. In a cluster, an action only the leader takes that reaches a
   * follower (`409 NOT_LEADER` with the leader's admin URL) is sent once more to the
   * leader, with the same token: give every node the same `admin.token` for that.
   */
  async call<T>(method: 'GET' | 'POST', path: string, body?: unknown, headers: Record<string, string> = {}): Promise<T> {
    try {
      return await this.callAt<T>(this.base, method, path, body, headers);
    } catch (error) {
      if (!(error instanceof NotLeaderError) || new URL(error.leaderUrl).origin === new URL(this.base).origin) throw error;
      const leaderUrl = error.leaderUrl;
      try {
        return await this.callAt<T>(new URL(leaderUrl).origin, method, path, body, headers);
      } catch (again) {
        if (again instanceof UnderstudyError && again.code === 'UNAUTHORIZED') {
          throw new UnderstudyError('NOT_LEADER', `${error.message}; the leader at ${leaderUrl} refused this node's admin token (give every node the same admin.token)`);
        }
        throw again;
      }
    }
  }

  private async callAt<T>(base: string, method: 'GET' | 'POST', path: string, body?: unknown, headers: Record<string, string> = {}): Promise<T> {
    let response;
    try {
      response = await request(`${base}${path}`, {
        method,
        headers: { authorization: `Bearer ${this.token}`, 'content-type': 'application/json', ...ACTOR_HEADERS, ...headers },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(60_000),
      });
    } catch (error) {
      throw new UnderstudyError(
        'NOT_RUNNING',
        `cannot reach Understudy's admin API at ${base} (${(error as Error).message}); is \`understudy up\` running?`,
        true,
        { cause: error },
      );
    }
    const data = (await response.body.json()) as T & ErrorBody;
    if (response.statusCode >= 400) throw apiError(response.statusCode, data);
    return data;
  }

  /** A GET whose body is read as a stream (results, outputs, server-sent events); no timeout once it answers. Sent on to the leader like `call`. */
  async stream(path: string): Promise<Dispatcher.ResponseData['body']> {
    try {
      return await this.streamAt(this.base, path);
    } catch (error) {
      if (!(error instanceof NotLeaderError) || new URL(error.leaderUrl).origin === new URL(this.base).origin) throw error;
      return this.streamAt(new URL(error.leaderUrl).origin, path);
    }
  }

  private async streamAt(base: string, path: string): Promise<Dispatcher.ResponseData['body']> {
    let response;
    try {
      response = await request(`${base}${path}`, { headers: { authorization: `Bearer ${this.token}` }, headersTimeout: 60_000, bodyTimeout: 0 });
    } catch (error) {
      throw new UnderstudyError('NOT_RUNNING', `cannot reach Understudy's admin API at ${base} (${(error as Error).message}); is \`understudy up\` running?`, true, {
        cause: error,
      });
    }
    if (response.statusCode >= 400) {
      throw apiError(response.statusCode, (await response.body.json().catch(() => ({}))) as ErrorBody);
    }
    return response.body;
  }
}

/** A follower's answer to an action only the leader takes: where the leader's admin API is. */
class NotLeaderError extends UnderstudyError {
  constructor(
    message: string,
    readonly leaderUrl: string,
  ) {
    super('NOT_LEADER', message);
  }
}

interface ErrorBody {
  error?: { message: string; code: string; url?: string | null };
}

/** The error an answer of `status` carries: NotLeaderError when a follower names the leader's admin URL. */
function apiError(status: number, data: ErrorBody): UnderstudyError {
  const message = data.error?.message ?? `HTTP ${status}`;
  if (data.error?.code === 'NOT_LEADER' && typeof data.error.url === 'string' && URL.canParse(data.error.url)) return new NotLeaderError(message, data.error.url);
  return new UnderstudyError(data.error?.code ?? 'API_ERROR', message);
}
