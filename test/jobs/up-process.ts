import { fork, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import type { JobView } from '../../src/jobs/index.js';
import { captureTail, terminate } from '../support/process.js';

export const CLI = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url));

/** `understudy up` as a user runs it: the built CLI in its own process, so it can be SIGKILLed. */
export interface UpProcess {
  proc: ChildProcess;
  admin: string;
  api<T>(method: 'GET' | 'POST', route: string, body?: unknown): Promise<T>;
  job(id: string): Promise<JobView>;
  /** The body of a GET as text (results are JSON Lines). */
  text(route: string): Promise<string>;
  output(): string;
}

export async function startUp(configFile: string, stateDir: string, timeoutMs = 30_000, args: string[] = []): Promise<UpProcess> {
  const proc = fork(CLI, ['up', '-c', configFile, ...args], { stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
  const output = captureTail([proc.stdout, proc.stderr], 20_000);
  const message = await new Promise<{ admin: { port: number } }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`understudy up did not come up within ${timeoutMs}ms:\n${output()}`)), timeoutMs);
    proc.once('message', (m) => {
      clearTimeout(timer);
      resolve(m as { admin: { port: number } });
    });
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`understudy up exited with ${code}:\n${output()}`));
    });
  });
  const admin = `http://127.0.0.1:${message.admin.port}`;
  const token = readFileSync(path.join(stateDir, 'admin.token'), 'utf8').trim();
  const api = async <T>(method: 'GET' | 'POST', route: string, body?: unknown): Promise<T> => {
    const response = await request(`${admin}${route}`, {
      method,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = (await response.body.json()) as T;
    if (response.statusCode >= 400) throw new Error(`${method} ${route}: ${response.statusCode} ${JSON.stringify(data)}`);
    return data;
  };
  return {
    proc,
    admin,
    api,
    job: async (id) => (await api<{ job: JobView }>('GET', `/v1/jobs/${id}`)).job,
    text: async (route) => {
      const response = await request(`${admin}${route}`, { headers: { authorization: `Bearer ${token}` } });
      return response.body.text();
    },
    output,
  };
}

/** SIGTERM (it stops the instances it started), SIGKILL if it hangs. */
export async function stopUp(up: UpProcess | undefined): Promise<void> {
  if (up) await terminate(up.proc, { graceMs: 15_000 });
}
