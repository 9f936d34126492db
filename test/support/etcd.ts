import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { accessSync, closeSync, constants, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePorts } from './ports.js';
import { hasExited, waitForExit } from './process.js';

/* Real etcd clusters for tests (Debian's etcd-server, etcd 3.4; scripts/cluster-parts.sh installs it). */

export interface EtcdMember {
  /** m1, m2, m3. */
  name: string;
  /** http://127.0.0.1:PORT */
  clientUrl: string;
  peerUrl: string;
  /** undefined while the member is killed. */
  pid: number | undefined;
  dataDir: string;
}

export interface EtcdCluster {
  /** Client URLs of all members. */
  endpoints: string[];
  members: EtcdMember[];
  /**
   * Sends signal (default SIGKILL) and resolves once the process has exited.
   * SIGSTOP and SIGCONT resolve once sent: they pause and resume the member.
   */
  kill(name: string, signal?: NodeJS.Signals): Promise<void>;
  /**
   * Restarts a killed member with the same data dir and flags; resolves once its
   * /health says true, which needs a quorum: to bring back several members of a
   * cluster that lost its quorum, start them together (Promise.all).
   */
  start(name: string): Promise<void>;
  /** Kills every member and removes the temp dir; safe to call twice. */
  stop(): Promise<void>;
}

export interface StartEtcdOptions {
  /** @default 3 */
  members?: 1 | 3;
  /** Names the cluster in its temp dir and its initial cluster token. @default 'etcd' */
  name?: string;
}

const START_TIMEOUT_MS = 15_000;
const POLL_INTERVAL_MS = 50;
const EXIT_TIMEOUT_MS = 10_000;
const LOG_TAIL_CHARS = 4000;
/** Signals after which an etcd process lives on. */
const NON_FATAL = new Set<NodeJS.Signals>(['SIGSTOP', 'SIGCONT', 'SIGTSTP']);

/** /usr/bin/etcd, else the first `etcd` on PATH; undefined when there is none. */
function etcdPath(): string | undefined {
  const dirs = ['/usr/bin', ...(process.env.PATH ?? '').split(path.delimiter).filter(Boolean)];
  for (const dir of dirs) {
    const candidate = path.join(dir, 'etcd');
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** Whether an etcd binary is there to start. */
export function etcdAvailable(): boolean {
  return etcdPath() !== undefined;
}

// Go's names for the architectures etcd 3.4 refuses without ETCD_UNSUPPORTED_ARCH.
const GO_ARCH: Partial<Record<NodeJS.Architecture, string>> = { arm64: 'arm64', arm: 'arm', ppc64: 'ppc64le', s390x: 's390x', ia32: '386' };

function etcdEnv(): NodeJS.ProcessEnv {
  // etcd 3.4 refuses to start when an ETCD_* variable shadows one of our flags.
  const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('ETCD_')));
  if (process.arch !== 'x64') env.ETCD_UNSUPPORTED_ARCH = GO_ARCH[process.arch] ?? process.arch;
  return env;
}

// Members left running when the test process exits (a crashed run, a forgotten stop()).
const live = new Set<ChildProcess>();
const dirs = new Set<string>();
let hooked = false;

function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.once('exit', () => {
    for (const proc of live) {
      try {
        proc.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });
}

interface MemberState {
  member: EtcdMember;
  args: string[];
  logPath: string;
  proc: ChildProcess | undefined;
}

function logTail(state: MemberState): string {
  try {
    return readFileSync(state.logPath, 'utf8').slice(-LOG_TAIL_CHARS);
  } catch {
    return '';
  }
}

/** GET /health; true only for {"health":"true"} (etcd 3.4 answers it once a quorum read goes through). */
function healthy(clientUrl: string): Promise<boolean> {
  return new Promise((resolve) => {
    // agent: false, so no kept-alive socket outlives the check.
    const req = http.get(`${clientUrl}/health`, { agent: false, timeout: 1000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => {
        try {
          resolve(res.statusCode === 200 && (JSON.parse(body) as { health?: unknown }).health === 'true');
        } catch {
          resolve(false);
        }
      });
      res.on('error', () => resolve(false));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
  });
}

function spawnMember(binary: string, state: MemberState): void {
  // A file rather than a pipe: etcd never blocks on output the test process is too busy to read.
  const log = openSync(state.logPath, 'a');
  try {
    const proc = spawn(binary, state.args, { detached: false, stdio: ['ignore', log, log], env: etcdEnv() });
    state.proc = proc;
    state.member.pid = proc.pid;
    live.add(proc);
    proc.once('exit', () => {
      live.delete(proc);
      if (state.proc === proc) state.member.pid = undefined;
    });
    // A spawn failure (ENOENT) arrives as 'error'; waitHealthy reports it through the exit.
    proc.once('error', () => live.delete(proc));
  } finally {
    closeSync(log);
  }
}

/** Polls /health until true; fails early when the process exits, with the log's tail. */
async function waitHealthy(state: MemberState, timeoutMs = START_TIMEOUT_MS): Promise<void> {
  const { member, proc } = state;
  const deadline = Date.now() + timeoutMs;
  let spawnError: Error | undefined;
  proc?.once('error', (error) => (spawnError = error));
  while (Date.now() < deadline) {
    if (await healthy(member.clientUrl)) return;
    if (!proc || hasExited(proc) || spawnError) {
      const how = spawnError ? `could not start (${spawnError.message})` : `exited (${proc?.signalCode ?? proc?.exitCode})`;
      throw new Error(`etcd member ${member.name} ${how} before it was healthy\n--- ${state.logPath} (tail) ---\n${logTail(state)}`);
    }
    await sleep(POLL_INTERVAL_MS);
  }
  throw new Error(`etcd member ${member.name} did not report healthy at ${member.clientUrl}/health within ${timeoutMs} ms\n--- ${state.logPath} (tail) ---\n${logTail(state)}`);
}

async function killMember(state: MemberState, signal: NodeJS.Signals): Promise<void> {
  const { proc } = state;
  if (!proc || hasExited(proc)) return;
  try {
    proc.kill(signal);
  } catch {
    // ESRCH: gone already
  }
  if (NON_FATAL.has(signal)) return;
  if (!(await waitForExit(proc, EXIT_TIMEOUT_MS))) {
    throw new Error(`etcd member ${state.member.name} (pid ${proc.pid}) did not exit within ${EXIT_TIMEOUT_MS} ms of ${signal}`);
  }
}

/** Starts a fresh etcd cluster on free loopback ports in a temp dir; resolves once every member is healthy. */
export async function startEtcd(options: StartEtcdOptions = {}): Promise<EtcdCluster> {
  const binary = etcdPath();
  if (!binary) throw new Error('etcd not found (/usr/bin/etcd or PATH); scripts/cluster-parts.sh installs it');
  const count = options.members ?? 3;
  const label = options.name ?? 'etcd';
  hookExit();

  const dir = mkdtempSync(path.join(tmpdir(), `understudy-${label}-`));
  dirs.add(dir);
  const ports = await freePorts(count * 2);
  const token = `${label}-${randomBytes(6).toString('hex')}`;
  const members: EtcdMember[] = Array.from({ length: count }, (_, i) => ({
    name: `m${i + 1}`,
    clientUrl: `http://127.0.0.1:${ports[2 * i]}`,
    peerUrl: `http://127.0.0.1:${ports[2 * i + 1]}`,
    pid: undefined,
    dataDir: path.join(dir, `m${i + 1}`),
  }));
  const initialCluster = members.map((m) => `${m.name}=${m.peerUrl}`).join(',');
  const states = members.map<MemberState>((member) => ({
    member,
    logPath: path.join(dir, `${member.name}.log`),
    proc: undefined,
    args: [
      ['--name', member.name],
      ['--data-dir', member.dataDir],
      ['--listen-client-urls', member.clientUrl],
      ['--advertise-client-urls', member.clientUrl],
      ['--listen-peer-urls', member.peerUrl],
      ['--initial-advertise-peer-urls', member.peerUrl],
      ['--initial-cluster', initialCluster],
      ['--initial-cluster-state', 'new'],
      ['--initial-cluster-token', token],
      // Fast elections for tests (defaults 100 / 1000 ms).
      ['--heartbeat-interval', '50'],
      ['--election-timeout', '500'],
      ['--snapshot-count', '10000'],
      ['--logger', 'zap'],
      ['--log-level', 'error'],
    ].flat(),
  }));
  const byName = new Map(states.map((s) => [s.member.name, s]));
  const find = (name: string): MemberState => {
    const state = byName.get(name);
    if (!state) throw new Error(`no etcd member ${name} (members: ${[...byName.keys()].join(', ')})`);
    return state;
  };

  let stopping: Promise<void> | undefined;
  const cluster: EtcdCluster = {
    endpoints: members.map((m) => m.clientUrl),
    members,
    kill: (name, signal = 'SIGKILL') => killMember(find(name), signal),
    async start(name) {
      const state = find(name);
      if (stopping) throw new Error(`etcd cluster ${label} is stopped`);
      if (state.proc && !hasExited(state.proc)) throw new Error(`etcd member ${name} is running (pid ${state.proc.pid})`);
      spawnMember(binary, state);
      await waitHealthy(state);
    },
    stop() {
      stopping ??= (async () => {
        const results = await Promise.allSettled(states.map((s) => killMember(s, 'SIGKILL')));
        rmSync(dir, { recursive: true, force: true });
        dirs.delete(dir);
        const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
        if (failed) throw failed.reason;
      })();
      return stopping;
    },
  };

  // All at once: no member of a new cluster is healthy before a quorum has joined.
  for (const state of states) spawnMember(binary, state);
  try {
    await Promise.all(states.map((s) => waitHealthy(s)));
  } catch (error) {
    await cluster.stop().catch(() => undefined);
    throw error;
  }
  return cluster;
}
