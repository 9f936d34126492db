import type { ChildProcess } from 'node:child_process';

export function hasExited(proc: ChildProcess): boolean {
  return proc.exitCode !== null || proc.signalCode !== null;
}

/** Resolves true once the process has exited, false if it is still running after timeoutMs. */
export function waitForExit(proc: ChildProcess, timeoutMs: number): Promise<boolean> {
  if (hasExited(proc)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const onExit = () => {
      clearTimeout(timer);
      resolve(true);
    };
    const timer = setTimeout(() => {
      proc.off('exit', onExit);
      resolve(false);
    }, timeoutMs);
    proc.once('exit', onExit);
  });
}

export interface TerminateOptions {
  /** How long SIGTERM gets before SIGKILL. */
  graceMs?: number;
  /** The process leads its own process group (spawned detached): SIGKILL the whole group at the end. */
  group?: boolean;
}

function signal(proc: ChildProcess, sig: NodeJS.Signals, group: boolean): void {
  try {
    if (group && proc.pid !== undefined) process.kill(-proc.pid, sig);
    else proc.kill(sig);
  } catch {
    // ESRCH: nothing left to signal.
  }
}

/**
 * SIGTERM, then SIGKILL after graceMs. A stopped (SIGSTOP) process cannot act on
 * SIGTERM, so it gets SIGCONT first. For a group leader, whatever it leaves behind
 * in its group is killed too.
 */
export async function terminate(proc: ChildProcess, { graceMs = 3000, group = false }: TerminateOptions = {}): Promise<void> {
  if (!hasExited(proc)) {
    signal(proc, 'SIGCONT', group);
    signal(proc, 'SIGTERM', false);
    if (!(await waitForExit(proc, graceMs))) {
      signal(proc, 'SIGKILL', false);
      await waitForExit(proc, graceMs);
    }
  }
  if (group) signal(proc, 'SIGKILL', true);
}

/** Keeps the last maxChars of the streams' text, for error messages. */
export function captureTail(streams: (NodeJS.ReadableStream | null)[], maxChars = 4000): () => string {
  let text = '';
  for (const stream of streams) {
    stream?.setEncoding('utf8');
    stream?.on('data', (chunk: string) => {
      text = (text + chunk).slice(-maxChars);
    });
  }
  return () => text;
}
