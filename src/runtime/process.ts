import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir, open, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { ProcessRuntimeConfig } from '../config/index.js';
import { checkRequired, StartError, type Runtime } from './runtime.js';

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
  /** The check for a process left by an earlier Understudy: once, at boot or before the first start. */
  private orphanCheck: Promise<void> | undefined;

  constructor(
    private readonly config: ProcessRuntimeConfig,
    readonly logFile: string,
    /** Names the running process, so one left behind by an Understudy that was killed is found and stopped. */
    readonly pidFile: string,
    private readonly onOrphan: (pid: number, detail: string) => void = () => {},
  ) {}

  get pid(): number | undefined {
    return this.child?.pid;
  }

  signal(name: NodeJS.Signals): void {
    const pid = this.pid;
    if (pid === undefined || this.child?.exitCode !== null || this.child.signalCode !== null) throw new Error('the instance has no running process');
    // The group: the process was started detached, as its own group leader (see start()).
    process.kill(-pid, name);
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
    await checkRequired(this.config.requires);
    await mkdir(path.dirname(this.logFile), { recursive: true });
    await this.recover();
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
      // Recorded in the same tick as the fork: an Understudy killed a moment later still finds it at the next start.
      if (child.pid !== undefined) this.writePidFile(child.pid);
      try {
        await Promise.race([once(child, 'spawn'), once(child, 'error').then(([error]) => Promise.reject(error))]);
      } catch (error) {
        if (child.pid !== undefined) this.removePidFile(child.pid);
        throw error;
      }
      this.child = child;
      // After a successful spawn, 'error' only reports a failed kill; the exit still comes.
      child.on('error', () => {});
      child.once('exit', (code, signal) => {
        this.removePidFile(child.pid!);
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

  /** Nothing to get ready ahead of time: a process starts from its command. */
  async prepare(): Promise<void> {}

  /**
   * An Understudy that was SIGKILLed leaves its instances running (each is in its own
   * process group): they would hold the port and the GPU. Stops the one this runtime
   * started last time, if it still runs the same command.
   */
  recover(): Promise<void> {
    this.orphanCheck ??= this.stopOrphan();
    return this.orphanCheck;
  }

  private async stopOrphan(): Promise<void> {
    let record: PidRecord;
    try {
      record = JSON.parse(await readFile(this.pidFile, 'utf8')) as PidRecord;
    } catch {
      return;
    }
    const { pid } = record;
    if (Number.isInteger(pid) && pid > 1 && (await sameProcess(pid, record.startTime))) {
      this.onOrphan(pid, `stopping ${record.command.join(' ')} (pid ${pid}), left running by an Understudy that did not shut down`);
      await terminateGroup(pid, this.config.stopGrace);
    }
    this.removePidFile(pid);
  }

  private writePidFile(pid: number): void {
    try {
      mkdirSyncFor(this.pidFile);
      const record: PidRecord = { pid, command: this.config.command, startedAt: Date.now(), startTime: startTimeOf(pid) };
      writeFileSync(this.pidFile, `${JSON.stringify(record)}\n`);
    } catch {
      // Without it an orphan is not found after a crash; the instance itself runs fine.
    }
  }

  private removePidFile(pid: number): void {
    try {
      const record = JSON.parse(readFileSync(this.pidFile, 'utf8')) as PidRecord;
      if (record.pid === pid) rmSync(this.pidFile, { force: true });
    } catch {
      // already gone
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

export interface PidRecord {
  pid: number;
  command: string[];
  startedAt: number;
  /** The kernel's start time of the process (/proc/PID/stat field 22): tells it from a later process given the same pid. */
  startTime: string | null;
}

/**
 * SIGTERM to the process group, SIGKILL after the grace period unless the whole group
 * exited first. The leader's exit is not enough: a wrapper script dies at once while the
 * model server it started is still closing, and a restart would meet it on the port (and
 * the GPU).
 */
async function terminate(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  const deadline = Date.now() + graceMs;
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
  await awaitGroupGone(child.pid!, deadline);
}

/**
 * Whether `pid` is still the process we started: it leads its own process group and
 * has the start time we recorded (a pid can be reused by anything later). The command
 * line is not compared: a script run through its shebang shows the interpreter there.
 */
async function sameProcess(pid: number, startTime: string | null | undefined): Promise<boolean> {
  if (!startTime) return false;
  try {
    const fields = statFields(await readFile(`/proc/${pid}/stat`, 'utf8'));
    return Number(fields[2]) === pid && fields[19] === startTime;
  } catch {
    return false;
  }
}

/** The fields of /proc/PID/stat after "pid (comm)": comm may hold spaces and parentheses. */
function statFields(stat: string): string[] {
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

function startTimeOf(pid: number): string | null {
  try {
    return statFields(readFileSync(`/proc/${pid}/stat`, 'utf8'))[19] ?? null;
  } catch {
    return null;
  }
}

/** SIGTERM to a process group we are not the parent of, then SIGKILL after the grace period. */
async function terminateGroup(pid: number, graceMs: number): Promise<void> {
  try {
    process.kill(-pid, 'SIGCONT');
    process.kill(-pid, 'SIGTERM');
  } catch {
    return; // gone
  }
  await awaitGroupGone(pid, Date.now() + graceMs);
}

/** Waits until no process of group `pgid` is left, sending SIGKILL to the group at `deadline`. */
async function awaitGroupGone(pgid: number, deadline: number): Promise<void> {
  // The group, not just its leader: forked workers may hold the GPU too.
  const alive = () => {
    try {
      process.kill(-pgid, 0);
    } catch {
      return false;
    }
    return livingMembers(pgid);
  };
  while (alive() && Date.now() < deadline) await sleep(20);
  if (!alive()) return;
  try {
    process.kill(-pgid, 'SIGKILL');
  } catch {
    return;
  }
  // A process stuck in the kernel (a hung GPU driver) may never go: give up after 5 s rather than block the start.
  const killed = Date.now() + 5000;
  while (alive() && Date.now() < killed) await sleep(20);
}

/** Whether any process of group `pgid` is alive (a zombie, exited but not yet reaped, is not). */
function livingMembers(pgid: number): boolean {
  let pids: string[];
  try {
    pids = readdirSync('/proc').filter((name) => /^\d+$/.test(name));
  } catch {
    return true; // no /proc to read: the group answered the signal, so trust that
  }
  return pids.some((pid) => {
    try {
      const fields = statFields(readFileSync(`/proc/${pid}/stat`, 'utf8'));
      return fields[0] !== 'Z' && Number(fields[2]) === pgid;
    } catch {
      return false; // gone while we looked
    }
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function mkdirSyncFor(file: string): void {
  mkdirSync(path.dirname(file), { recursive: true });
}
