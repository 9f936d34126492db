import { access } from 'node:fs/promises';
import { UnderstudyError } from '../core/index.js';

/** How an instance is run. One per instance; `start` and `stop` never overlap. */
export interface Runtime {
  readonly kind: 'external' | 'process' | 'docker';
  /** Starts the instance; rejects with a StartError when it cannot (a pre-start check failed). */
  start(): Promise<void>;
  /**
   * Makes a cold standby quick to start without running it: for docker, the container is
   * created but not started. Never starts anything; rejects with a StartError when it cannot.
   */
  prepare(): Promise<void>;
  /** Stops the instance: SIGTERM, the grace period, then SIGKILL. Safe to call when stopped. */
  stop(): Promise<void>;
  /** Deals with what an earlier Understudy left behind (a process still running); called at boot for every instance. */
  recover(): Promise<void>;
  /** Called when the instance ends without being asked to. */
  onExit(listener: (code: number | null, signal: string | null) => void): void;
  /** Process id while running, for status and drills. */
  readonly pid: number | undefined;
  /**
   * Sends a signal to what serves (a drill's fault): a process instance's whole process
   * group (a wrapper script and the server it runs alike), a container's model server
   * (SIGCONT to docker-init too). Throws when nothing runs or the signal is not permitted.
   */
  signal(name: NodeJS.Signals): void;
}

export class StartError extends UnderstudyError {
  override name = 'StartError';
  constructor(
    message: string,
    options?: { cause?: unknown },
    /** A stop came before the start could finish: nothing failed. */
    readonly cancelled = false,
  ) {
    super(cancelled ? 'START_CANCELLED' : 'START_FAILED', message, true, options);
  }
}

/** An instance someone else runs: Understudy only watches it. */
export class ExternalRuntime implements Runtime {
  readonly kind = 'external';
  readonly pid = undefined;
  async start(): Promise<void> {}
  async prepare(): Promise<void> {}
  async stop(): Promise<void> {}
  async recover(): Promise<void> {}
  onExit(): void {}
  signal(): void {
    throw new Error('an external instance runs outside Understudy: it has no process to signal');
  }
}

/** The pre-start check of `requires`: every path (a model directory, a config file) must exist. */
export async function checkRequired(paths: readonly string[]): Promise<void> {
  for (const required of paths) {
    try {
      await access(required);
    } catch {
      throw new StartError(`pre-start check failed: ${required} does not exist`);
    }
  }
}
