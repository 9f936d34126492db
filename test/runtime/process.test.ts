import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, watch, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ProcessRuntime, StartError } from '../../src/runtime/index.js';
import { MODEL_SERVER_PATH } from '../support/fixture.js';
import { freePort } from '../support/ports.js';

function runtime(args: string[], options: { stopGrace?: number; requires?: string[]; command?: string[] } = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), 'understudy-rt-'));
  const log = path.join(dir, 'logs', 'svc.a.log');
  const rt = new ProcessRuntime(
    {
      type: 'process',
      command: options.command ?? [process.execPath, MODEL_SERVER_PATH, ...args],
      cwd: dir,
      env: { FIXTURE_MARK: 'from-config' },
      stopGrace: options.stopGrace ?? 5000,
      requires: options.requires ?? [],
      restartDelay: 1000,
      restartDelayMax: 30_000,
    },
    log,
    path.join(dir, 'run', 'svc.a.pid'),
  );
  return { rt, log, dir };
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** The processes of group `pgid` that still run (an exited one that init has not reaped yet does not). */
const livingInGroup = (pgid: number) =>
  execFileSync('ps', ['-eo', 'pgid=,stat=,args='], { encoding: 'utf8' })
    .split('\n')
    .map((line) => line.trim().split(/\s+/))
    .filter(([group, stat]) => Number(group) === pgid && !stat!.startsWith('Z'));

describe('process runtime', () => {
  it('stops a model server that ignores SIGTERM with SIGKILL after the grace period', async () => {
    const port = await freePort();
    const { rt, log } = runtime(['--port', String(port), '--ignore-sigterm'], { stopGrace: 400 });
    await rt.start();
    const pid = rt.pid!;
    // Its log file gets the server's output: once it says it listens, its SIGTERM handler is in place.
    await fileContains(log, `listening ${port}`);
    const started = Date.now();
    await rt.stop();
    expect(Date.now() - started).toBeGreaterThanOrEqual(400);
    expect(alive(pid)).toBe(false);
    expect(readFileSync(log, 'utf8')).toContain('understudy starts:');
  });

  it('stops a well-behaved server with SIGTERM alone, without waiting for the grace period', async () => {
    const { rt } = runtime(['--port', String(await freePort())], { stopGrace: 10_000 });
    await rt.start();
    const started = Date.now();
    await rt.stop();
    expect(Date.now() - started).toBeLessThan(5000);
    await rt.stop(); // twice is fine
  });

  it('reports an exit it did not ask for, and not one it did', async () => {
    const { rt } = runtime(['--port', String(await freePort()), '--exit-after', '100', '--exit-code', '7']);
    const exits: (number | null)[] = [];
    const exited = new Promise<void>((resolve) =>
      rt.onExit((code) => {
        exits.push(code);
        resolve();
      }),
    );
    await rt.start();
    await exited;
    expect(exits).toEqual([7]);
    await rt.start();
    await rt.stop();
    expect(exits).toEqual([7]);
  });

  it('a stop cancels a start still waiting for the previous stop, so no process outlives it', async () => {
    const port = await freePort();
    const { rt, log } = runtime(['--port', String(port), '--ignore-sigterm'], { stopGrace: 500 });
    await rt.start();
    await fileContains(log, `listening ${port}`);
    const firstStop = rt.stop();
    const restart = rt.start(); // waits for the first stop (SIGTERM is ignored: 500ms)
    const secondStop = rt.stop();
    await expect(restart).rejects.toMatchObject({ code: 'START_CANCELLED' });
    await Promise.all([firstStop, secondStop]);
    expect(rt.pid).toBeUndefined();
    expect(readFileSync(log, 'utf8').match(/understudy starts/g)).toHaveLength(1);
  });

  it('refuses to start when a required path is missing, naming it', async () => {
    const { rt } = runtime(['--port', '0'], { requires: ['/nonexistent/model-dir'] });
    await expect(rt.start()).rejects.toThrow(new StartError('pre-start check failed: /nonexistent/model-dir does not exist'));
    expect(rt.pid).toBeUndefined();
  });

  it('stops the process an earlier Understudy left running (same pid file, same command) before starting', async () => {
    const { rt: first, dir } = runtime(['--port', '0']);
    await first.start();
    const orphan = first.pid!;
    // A second runtime on the same pid file: what `up` builds after the first Understudy was SIGKILLed.
    const seen: number[] = [];
    const second = new ProcessRuntime(
      { type: 'process', command: [process.execPath, MODEL_SERVER_PATH, '--port', '0'], cwd: dir, env: {}, stopGrace: 5000, requires: [], restartDelay: 1, restartDelayMax: 1 },
      path.join(dir, 'logs', 'svc.a.log'),
      path.join(dir, 'run', 'svc.a.pid'),
      (pid) => seen.push(pid),
    );
    await second.start();
    expect(seen).toEqual([orphan]);
    expect(alive(orphan)).toBe(false);
    expect(alive(second.pid!)).toBe(true);
    await second.stop();
  });

  it('leaves alone a live process that is not what the pid file says (a reused pid)', async () => {
    const { rt: first, dir } = runtime(['--port', '0']);
    await first.start();
    const other = first.pid!;
    const pidFile = path.join(dir, 'run', 'svc.a.pid');
    writeFileSync(pidFile, JSON.stringify({ pid: other, command: ['python', 'serve.py'], startedAt: 0 }));
    const seen: number[] = [];
    const second = new ProcessRuntime(
      { type: 'process', command: [process.execPath, MODEL_SERVER_PATH, '--port', '0'], cwd: dir, env: {}, stopGrace: 5000, requires: [], restartDelay: 1, restartDelayMax: 1 },
      path.join(dir, 'logs', 'svc.a.log'),
      pidFile,
      (pid) => seen.push(pid),
    );
    await second.start();
    expect(seen).toEqual([]);
    expect(alive(other)).toBe(true);
    await second.stop();
    await first.stop();
  });

  it('says so when the program does not exist', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'understudy-rt-'));
    const rt = new ProcessRuntime(
      { type: 'process', command: ['/no/such/program'], cwd: dir, env: {}, stopGrace: 100, requires: [], restartDelay: 1, restartDelayMax: 1 },
      path.join(dir, 'x.log'),
      path.join(dir, 'x.pid'),
    );
    await expect(rt.start()).rejects.toThrow(/could not run \/no\/such\/program: spawn \/no\/such\/program ENOENT/);
  });

  it('a stop returns only once the whole group is gone, not when a wrapper shell exits before its server', async () => {
    const port = await freePort();
    // The shell dies of SIGTERM at once; the model server under it ignores SIGTERM.
    const server = [process.execPath, MODEL_SERVER_PATH, '--port', String(port), '--ignore-sigterm'].join(' ');
    const { rt, log } = runtime([], { stopGrace: 400, command: ['sh', '-c', `${server}; echo server exited`] });
    await rt.start();
    const group = rt.pid!;
    await fileContains(log, `listening ${port}`);
    await rt.stop();
    expect(livingInGroup(group)).toEqual([]);
  }, 15_000);

  it('stops a SIGSTOPped server (SIGCONT first, so SIGTERM can act)', async () => {
    const { rt } = runtime(['--port', String(await freePort())], { stopGrace: 10_000 });
    await rt.start();
    process.kill(rt.pid!, 'SIGSTOP');
    const started = Date.now();
    await rt.stop();
    expect(Date.now() - started).toBeLessThan(5000);
  }, 15_000);
});

/** Resolves when the file contains the text, woken by file changes (fs.watch), bounded. */
function fileContains(file: string, text: string, timeoutMs = 10_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const check = () => {
      if (!readFileSync(file, 'utf8').includes(text)) return;
      watcher.close();
      clearTimeout(timer);
      resolve();
    };
    const watcher = watch(file, check);
    const timer = setTimeout(() => {
      watcher.close();
      reject(new Error(`${file} did not contain ${JSON.stringify(text)} within ${timeoutMs}ms`));
    }, timeoutMs);
    check();
  });
}
