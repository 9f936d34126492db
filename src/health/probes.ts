import { execFile } from 'node:child_process';
import { connect } from 'node:net';
import { Agent, request } from 'undici';
import type { ReadyProbeConfig, VersionProbeConfig } from '../config/index.js';

export interface ProbeResult {
  ok: boolean;
  /** What was seen, in words: `200 in 3ms`, `connect ECONNREFUSED`, `timeout after 1000ms`. */
  detail: string;
  ms: number;
}

type Check = Pick<ReadyProbeConfig, 'http' | 'tcp' | 'command' | 'timeout'>;

/*
 * Probes get their own connection pool, one short-lived connection at a time, so a
 * probe never queues behind client traffic and always sees the instance as a new
 * client would (a hung server with an open port fails it).
 */
const probeAgent = new Agent({ pipelining: 0, keepAliveTimeout: 1, connections: 64 });

export async function runProbe(check: Check, base: URL): Promise<ProbeResult> {
  const started = performance.now();
  const finish = (ok: boolean, detail: string): ProbeResult => ({ ok, detail, ms: performance.now() - started });
  try {
    if (check.tcp) {
      await tcpConnect(base, check.timeout);
      return finish(true, `tcp connect to ${base.host}`);
    }
    if (check.command) {
      await runCommand(check.command, check.timeout);
      return finish(true, `${check.command[0]} exited 0`);
    }
    const http = check.http ?? { path: '/health' };
    const { status, body } = await httpGet(new URL(http.path, base), check.timeout);
    const statusOk = http.status === undefined ? status >= 200 && status < 300 : [http.status].flat().includes(status);
    if (!statusOk) return finish(false, `${http.path} answered ${status}`);
    if (http.body !== undefined && !body.includes(http.body)) {
      return finish(false, `${http.path} answered ${status} without ${JSON.stringify(http.body)} in its body`);
    }
    return finish(true, `${http.path} answered ${status}`);
  } catch (error) {
    return finish(false, describe(error, check.timeout));
  }
}

export interface VersionResult {
  version: string | undefined;
  detail: string;
}

/** Reads the model version an instance serves: a JSON field, a header, or a regex over the body. */
export async function readVersion(probe: VersionProbeConfig, base: URL): Promise<VersionResult> {
  try {
    const { status, body, headers } = await httpGet(new URL(probe.http.path, base), probe.timeout);
    if (status < 200 || status >= 300) return { version: undefined, detail: `${probe.http.path} answered ${status}` };
    let version: unknown;
    if (probe.header !== undefined) {
      version = headers[probe.header.toLowerCase()];
    } else if (probe.regex !== undefined) {
      version = new RegExp(probe.regex).exec(body)?.[1];
    } else {
      version = (probe.json ?? 'version').split('.').reduce<unknown>((value, key) => {
        return value !== null && typeof value === 'object' ? (value as Record<string, unknown>)[key] : undefined;
      }, JSON.parse(body));
    }
    if (typeof version === 'number') version = String(version);
    if (typeof version !== 'string' || version === '') {
      return { version: undefined, detail: `${probe.http.path} names no version` };
    }
    return { version, detail: `${probe.http.path} answered ${status}` };
  } catch (error) {
    return { version: undefined, detail: describe(error, probe.timeout) };
  }
}

/**
 * Who serves an OpenAI-compatible instance, from GET /v1/models: the first model's
 * `owned_by` (vLLM says "vllm", llama.cpp server "llamacpp", Ollama "library" or
 * "ollama"); undefined when it does not answer that way.
 */
export async function readOwner(base: URL, timeout = 1000): Promise<string | undefined> {
  try {
    const { status, body } = await httpGet(new URL('/v1/models', base), timeout);
    if (status < 200 || status >= 300) return undefined;
    const owner = (JSON.parse(body) as { data?: { owned_by?: unknown }[] }).data?.[0]?.owned_by;
    return typeof owner === 'string' ? owner : undefined;
  } catch {
    return undefined;
  }
}

async function httpGet(url: URL, timeout: number) {
  const response = await request(url, {
    dispatcher: probeAgent,
    method: 'GET',
    headers: { 'user-agent': 'understudy-probe' },
    signal: AbortSignal.timeout(timeout),
    headersTimeout: timeout,
    bodyTimeout: timeout,
  });
  const body = await response.body.text();
  return { status: response.statusCode, body: body.slice(0, 64 * 1024), headers: response.headers };
}

function tcpConnect(url: URL, timeout: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const port = Number(url.port || (url.protocol === 'https:' ? 443 : 80));
    const socket = connect({ host: url.hostname, port, timeout });
    socket.once('connect', () => {
      socket.destroy();
      resolve();
    });
    socket.once('timeout', () => {
      socket.destroy();
      reject(Object.assign(new Error('timeout'), { name: 'TimeoutError' }));
    });
    socket.once('error', reject);
  });
}

function runCommand(argv: readonly string[], timeout: number): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(argv[0]!, argv.slice(1), { timeout, killSignal: 'SIGKILL' }, (error, _stdout, stderr) => {
      if (!error) return resolve();
      const tail = stderr.trim().split('\n').pop()?.slice(0, 200);
      const how = error.killed ? `timeout after ${timeout}ms` : `exited ${error.code ?? error.signal}`;
      reject(new Error(`${argv[0]} ${how}${tail ? `: ${tail}` : ''}`));
    });
  });
}

function describe(error: unknown, timeout: number): string {
  const err = error as { name?: string; code?: string; message?: string };
  if (err.name === 'TimeoutError' || err.code === 'UND_ERR_HEADERS_TIMEOUT' || err.code === 'UND_ERR_BODY_TIMEOUT') {
    return `timeout after ${timeout}ms`;
  }
  if (err.code && err.code.startsWith('E')) return `connect ${err.code}`;
  return err.message ?? String(error);
}
