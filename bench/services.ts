import { spawn, type ChildProcess } from 'node:child_process';
import { captureTail, hasExited, terminate } from '../test/support/process.js';
import { waitUntil } from '../test/support/wait.js';

export interface Service {
  name: string;
  proc: ChildProcess;
  output(): string;
  /** Polls check until it holds; fails early, with the service's output, if the service exits. */
  waitUntilReady(check: () => Promise<boolean>, timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

const live = new Set<ChildProcess>();

/**
 * Starts a long-running process in its own process group, so that stopping it also
 * ends whatever it started (nginx workers, Understudy's own model servers).
 */
export function spawnService(name: string, command: string, args: string[], cwd?: string): Service {
  const proc = spawn(command, args, { cwd, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(proc);
  const output = captureTail([proc.stdout, proc.stderr]);
  let stopping: Promise<void> | undefined;

  return {
    name,
    proc,
    output,
    async waitUntilReady(check, timeoutMs = 15_000) {
      try {
        await waitUntil(async () => hasExited(proc) || (await check()), { timeoutMs, what: `${name} to be ready` });
      } catch (error) {
        throw new Error(`${(error as Error).message}\n${output()}`);
      }
      if (hasExited(proc)) throw new Error(`${name} exited during start-up (${proc.signalCode ?? proc.exitCode}):\n${output()}`);
    },
    stop() {
      stopping ??= terminate(proc, { group: true }).finally(() => live.delete(proc));
      return stopping;
    },
  };
}

export async function stopAllServices(): Promise<void> {
  await Promise.all([...live].map((proc) => terminate(proc, { group: true }).finally(() => live.delete(proc))));
}

/** Last resort from a synchronous 'exit' handler. */
export function killAllServicesNow(): void {
  for (const proc of live) {
    try {
      if (proc.pid !== undefined) process.kill(-proc.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}
