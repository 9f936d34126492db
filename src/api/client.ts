import { request, type Dispatcher } from 'undici';
import type { Config } from '../config/index.js';
import { readToken, TOKEN_ENV, tokenFile } from './token.js';
import { UnderstudyError } from '../core/index.js';

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

  async call<T>(method: 'GET' | 'POST', path: string, body?: unknown, headers: Record<string, string> = {}): Promise<T> {
    let response;
    try {
      response = await request(`${this.base}${path}`, {
        method,
        headers: { authorization: `Bearer ${this.token}`, 'content-type': 'application/json', ...headers },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(60_000),
      });
    } catch (error) {
      throw new UnderstudyError(
        'NOT_RUNNING',
        `cannot reach Understudy's admin API at ${this.base} (${(error as Error).message}); is \`understudy up\` running?`,
        true,
        { cause: error },
      );
    }
    const data = (await response.body.json()) as T & { error?: { message: string; code: string } };
    if (response.statusCode >= 400) {
      throw new UnderstudyError(data.error?.code ?? 'API_ERROR', data.error?.message ?? `HTTP ${response.statusCode}`);
    }
    return data;
  }

  /** A GET whose body is read as a stream (results, outputs, server-sent events); no timeout once it answers. */
  async stream(path: string): Promise<Dispatcher.ResponseData['body']> {
    let response;
    try {
      response = await request(`${this.base}${path}`, { headers: { authorization: `Bearer ${this.token}` }, headersTimeout: 60_000, bodyTimeout: 0 });
    } catch (error) {
      throw new UnderstudyError('NOT_RUNNING', `cannot reach Understudy's admin API at ${this.base} (${(error as Error).message}); is \`understudy up\` running?`, true, {
        cause: error,
      });
    }
    if (response.statusCode >= 400) {
      const data = (await response.body.json().catch(() => ({}))) as { error?: { message: string; code: string } };
      throw new UnderstudyError(data.error?.code ?? 'API_ERROR', data.error?.message ?? `HTTP ${response.statusCode}`);
    }
    return response.body;
  }
}
