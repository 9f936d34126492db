import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { freePort } from './ports.js';
import { captureTail, hasExited, waitForExit } from './process.js';

/* A throwaway PostgreSQL server for tests (Debian's postgresql; scripts/cluster-parts.sh installs it), started by pid. */

const PG_USER = 'understudy-pg';

export interface TestPostgres {
  url: string;
  port: number;
  dataDir: string;
  /** Stops the server (fast shutdown) and removes its data; safe twice. */
  stop(): Promise<void>;
  /** Stops the server as `pg_ctl stop -m fast` would, keeping its data: PostgreSQL is down. */
  pause(): Promise<void>;
  /** Starts it again on the same port and data. */
  resume(): Promise<void>;
}

function binDir(): string | undefined {
  try {
    const versions = readdirSync('/usr/lib/postgresql').sort((a, b) => Number(b) - Number(a));
    for (const version of versions) {
      const dir = `/usr/lib/postgresql/${version}/bin`;
      if (existsSync(`${dir}/postgres`) && existsSync(`${dir}/initdb`)) return dir;
    }
  } catch {
    // not installed
  }
  return undefined;
}

export function postgresAvailable(): boolean {
  return binDir() !== undefined;
}

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const proc of running) proc.kill('SIGKILL');
});

/** `command` as the PostgreSQL user when this process is root (postgres refuses to run as root). */
function asUser(command: string, args: string[]): [string, string[]] {
  if (process.getuid?.() !== 0) return [command, args];
  try {
    execFileSync('id', ['-u', PG_USER], { stdio: 'ignore' });
  } catch {
    execFileSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', PG_USER]);
  }
  return ['runuser', ['-u', PG_USER, '--', command, ...args]];
}

export async function startPostgres(): Promise<TestPostgres> {
  const bin = binDir();
  if (!bin) throw new Error('PostgreSQL is not installed: run scripts/cluster-parts.sh');
  const root = mkdtempSync(path.join(tmpdir(), 'understudy-pg-'));
  const dataDir = path.join(root, 'data');
  let owner: { uid?: number; gid?: number } = {};
  if (process.getuid?.() === 0) {
    asUser('true', []); // makes the user when it is missing
    owner = { uid: Number(execFileSync('id', ['-u', PG_USER], { encoding: 'utf8' }).trim()), gid: Number(execFileSync('id', ['-g', PG_USER], { encoding: 'utf8' }).trim()) };
    chownSync(root, owner.uid!, owner.gid!);
  }
  const [initdb, initArgs] = asUser(`${bin}/initdb`, ['-D', dataDir, '--auth=trust', '--username=understudy', '-E', 'UTF8', '--no-sync', '--no-instructions']);
  execFileSync(initdb, initArgs, { stdio: 'pipe' });
  const port = await freePort();
  const url = `postgres://understudy@127.0.0.1:${port}/postgres`;
  let proc: ChildProcess | undefined;
  let output: () => string = () => '';

  const start = async () => {
    // Spawned as the PostgreSQL user directly (not through runuser), so signals reach postgres itself.
    const child = spawn(`${bin}/postgres`, ['-D', dataDir, '-c', 'listen_addresses=127.0.0.1', '-c', `port=${port}`, '-c', `unix_socket_directories=${root}`, '-c', 'fsync=on', '-c', 'max_connections=200'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      ...owner,
    });
    proc = child;
    running.add(child);
    output = captureTail([child.stdout, child.stderr]);
    // Ready when a connection is answered: polled, bounded.
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (hasExited(child)) throw new Error(`postgres exited before it was ready:\n${output()}`);
      const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1000 });
      try {
        await client.connect();
        await client.end();
        return;
      } catch {
        await client.end().catch(() => undefined);
      }
      if (Date.now() > deadline) throw new Error(`postgres was not ready within 20s:\n${output()}`);
      await sleep(50);
    }
  };

  const halt = async () => {
    const child = proc;
    proc = undefined;
    if (!child || hasExited(child)) return;
    // SIGINT is PostgreSQL's fast shutdown (what pg_ctl stop -m fast sends).
    child.kill('SIGINT');
    if (!(await waitForExit(child, 10_000))) child.kill('SIGKILL');
    await waitForExit(child, 5000);
    running.delete(child);
  };

  await start();
  let stopped = false;
  return {
    url,
    port,
    dataDir,
    pause: halt,
    resume: start,
    async stop() {
      if (stopped) return;
      stopped = true;
      await halt();
      rmSync(root, { recursive: true, force: true });
    },
  };
}
