import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { access, mkdir, open } from 'node:fs/promises';
import path from 'node:path';
import type { ProcessRuntimeConfig } from '../config/index.js';
import { StartError, type Runtime } from './runtime.js';

/**
 * Runs a model server as a child process in its own process group, so a stop
 * reaches the workers it forks too. Output goes to one log file per instance,
 * appended across restarts and kept when the instance is quarantined.
 */
export class ProcessRuntime implements Runtime {
  readonly kind = 'process';
  private child: ChildProcess | undefined;
  private stopping: Promise<void> | undefined;
  private exitListener: (code: number | null, signal: string | null) => void = () => {};
  /** Bumped by every stop, so a start still waiting (for the last stop, for the disk) gives up. */
  private stops = 0;

  constructor(
    private readonly config: ProcessRuntimeConfig,
    readonly logFile: string,
  ) {}

  get pid(): number | undefined {
    return this.child?.pid;
  }

  onExit(listener: (code: number | null, signal: string | null) => void): void {
    this.exitListener = listener;
  }

  async start(): Promise<void> {
    const ticket = this.stops;
    const stillWanted = () => {
      if (this.stops !== ticket) throw new StartError('stopped before it started', undefined, true);
    };
    await this.stopping;
    stillWanted();
    if (this.child) return;
    for (const required of this.config.requires) {
      try {
        await access(required);
      } catch {
        throw new StartError(`pre-start check failed: ${required} does not exist`);
      }
    }
    await mkdir(path.dirname(this.logFile), { recursive: true });
    stillWanted();
    const log = await open(this.logFile, 'a');
    const [program, ...args] = this.config.command;
    try {
      await log.write(`\n--- ${new Date().toISOString()} understudy starts: ${this.config.command.join(' ')}\n`);
      stillWanted();
      const child = spawn(program!, args, {
        cwd: this.config.cwd,
        env: { ...process.env, ...this.config.env },
        stdio: ['ignore', log.fd, log.fd],
        detached: true,
      });
      await Promise.race([once(child, 'spawn'), once(child, 'error').then(([error]) => Promise.reject(error))]);
      this.child = child;
      // After a successful spawn, 'error' only reports a failed kill; the exit still comes.
      child.on('error', () => {});
      child.once('exit', (code, signal) => {
        if (this.child !== child) return;
        this.child = undefined;
        this.exitListener(code, signal);
      });
    } catch (error) {
      if (error instanceof StartError) throw error;
      throw new StartError(`could not run ${program}: ${(error as Error).message}`, { cause: error });
    } finally {
      // The child holds its own copy of the descriptor.
      await log.close();
    }
  }

  stop(): Promise<void> {
    this.stops += 1;
    const child = this.child;
    if (!child) return this.stopping ?? Promise.resolve();
    this.child = undefined; // from here on its exit is expected, not a failure
    this.stopping = terminate(child, this.config.stopGrace).finally(() => {
      this.stopping = undefined;
    });
    return this.stopping;
  }
}

/** SIGTERM to the process group, SIGKILL after the grace period unless it exited first. */
async function terminate(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  const signal = (name: NodeJS.Signals) => {
    try {
      process.kill(-child.pid!, name);
    } catch {
      child.kill(name);
    }
  };
  // A stopped (SIGSTOPped) process cannot act on SIGTERM until it is continued.
  signal('SIGCONT');
  signal('SIGTERM');
  const timer = setTimeout(() => signal('SIGKILL'), graceMs);
  try {
    await exited;
  } finally {
    clearTimeout(timer);
  }
}
