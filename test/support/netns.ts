import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';

/* Network namespaces for tests that imitate several machines (a virtual IP, a partition): made, used and deleted by the test. */

const run = promisify(execFile);

/** The first `name` on PATH, /usr/sbin or /sbin. */
export function findCommand(name: string): string | undefined {
  for (const dir of [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin']) {
    const file = path.join(dir, name);
    if (dir !== '' && existsSync(file)) return file;
  }
  return undefined;
}

export const IP = findCommand('ip');

/** Why this machine cannot make network namespaces, or undefined when it can. */
export function cannotMakeNamespaces(): string | undefined {
  if (process.platform !== 'linux') return 'network namespaces are Linux only';
  if (process.getuid?.() !== 0) return 'needs root to make network namespaces';
  if (!IP) return 'ip (iproute2) is not installed';
  const probe = `us-probe-${process.pid}`;
  try {
    execFileSync(IP, ['netns', 'add', probe], { stdio: 'pipe' });
    execFileSync(IP, ['netns', 'del', probe], { stdio: 'pipe' });
  } catch (error) {
    return `cannot make a network namespace here (${(error as Error).message.split('\n')[0]})`;
  }
  return undefined;
}

export async function ip(...args: string[]): Promise<string> {
  const { stdout } = await run(IP!, args, { timeout: 10_000 });
  return stdout;
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export function kill(pid: number | undefined, signal: NodeJS.Signals = 'SIGKILL'): void {
  if (pid === undefined) return;
  try {
    process.kill(pid, signal);
  } catch {
    // ESRCH: already gone.
  }
}

/** Kills every process left in `name` and deletes it. */
export async function deleteNamespace(name: string): Promise<void> {
  const pids = await ip('netns', 'pids', name).catch(() => '');
  for (const pid of pids.split('\n').filter(Boolean)) kill(Number(pid));
  await ip('netns', 'del', name).catch(() => undefined);
}

/** Namespaces named `us-<role>-<pid>-<hex>` of test processes that died before their cleanup: their processes killed, the namespaces deleted. */
export async function removeLeftovers(roles: string[]): Promise<void> {
  const names = (await ip('netns', 'list')).split('\n').map((line) => line.split(' ')[0] ?? '');
  const pattern = new RegExp(`^us-(?:${roles.join('|')})-(\\d+)-[0-9a-f]+$`);
  for (const name of names) {
    const match = pattern.exec(name);
    if (!match || alive(Number(match[1]))) continue;
    await deleteNamespace(name);
  }
}

/** Runs `command` inside `ns`; `ip netns exec` execs it, so the pid is the command's and an IPC channel passes through. */
export function inNamespace(ns: string, command: string, args: string[], env: NodeJS.ProcessEnv = process.env): ChildProcess {
  return spawn(IP!, ['netns', 'exec', ns, command, ...args], { stdio: ['ignore', 'pipe', 'pipe', 'ipc'], env });
}

/** Runs `command` inside `ns` to its end; its stdout. */
export async function execIn(ns: string, command: string, args: string[], timeoutMs = 5000): Promise<string> {
  const { stdout } = await run(IP!, ['netns', 'exec', ns, command, ...args], { timeout: timeoutMs });
  return stdout;
}

/** Waits for `understudy up` (run with an IPC channel, e.g. by inNamespace) to say it is up; fails with its output if it exits or stays silent for 20 s. */
export function waitForUp(up: ChildProcess, name: string, output: () => string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name}: understudy up sent nothing within 20 s:\n${output()}`)), 20_000);
    up.once('message', () => {
      clearTimeout(timer);
      resolve();
    });
    up.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${name}: understudy up exited with ${code}:\n${output()}`));
    });
  });
}
