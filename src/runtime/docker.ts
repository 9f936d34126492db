import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { createWriteStream, type WriteStream } from 'node:fs';
import { mkdir, readdir, readFile } from 'node:fs/promises';
import { constants } from 'node:os';
import path from 'node:path';
import Docker from 'dockerode';
import type { DockerRuntimeConfig } from '../config/index.js';
import { checkRequired, StartError, type Runtime } from './runtime.js';

export interface DockerRuntimeOptions {
  /** The Docker Engine's Unix socket, e.g. /var/run/docker.sock. */
  socket: string;
  /** The container's output is appended here, across restarts, as the process runtime does. */
  logFile: string;
  /** Hears of a container left running by an earlier Understudy, as it is stopped. */
  onOrphan?: (pid: number, detail: string) => void;
}

/** Longest wait for one short engine request (inspect, create, start); a pull has none. */
const ENGINE_TIMEOUT_MS = 60_000;
/** How long a stop waits beyond the grace period before it stops asking the engine. */
const STOP_SLACK_MS = 5000;
/** How long the end of a container's output may take to reach the log after it exited. */
const LOG_DRAIN_MS = 2000;

const SIGNAL_NAMES = new Map(Object.entries(constants.signals).map(([name, number]) => [number, name]));

/** A start of the container that this runtime made and has not seen end. */
interface Run {
  container: Docker.Container;
  /** The start request: a stop waits for it, so the engine never starts a container after it was stopped. */
  started: Promise<unknown>;
  /** The model server's pid on this machine, once known. */
  pid: number | undefined;
  /** The engine's pid of the container (docker-init with `init`): a SIGCONT reaches it too. */
  enginePid: number | undefined;
  startedAt: string | undefined;
  /** A stop gave up waiting for the engine to start it: the start stops it when the engine is done. */
  abandoned: boolean;
  log: ContainerLog;
  /** Settles once the exit was seen and the log is complete. */
  ended: Promise<void>;
}

/**
 * Runs a model server as a Docker container named `understudy-<service>.<instance>` (a service name has no dot, so two never clash).
 * A stop keeps the container (exited, with its logs), so the next start of the same
 * spec only starts it again; a cold standby is created ahead of time by prepare().
 * Labels carry a hash of the spec, so a changed config replaces the container.
 */
export class DockerRuntime implements Runtime {
  readonly kind = 'docker';
  readonly name: string;
  private readonly docker: Docker;
  private readonly socket: string;
  private readonly logFile: string;
  private readonly onOrphan: (pid: number, detail: string) => void;
  private readonly labels: Record<string, string>;
  private run: Run | undefined;
  private stopping: Promise<void> | undefined;
  private exitListener: (code: number | null, signal: string | null) => void = () => {};
  /** Bumped by every stop, so a start still on its way (pull, create, attach) gives up. */
  private stops = 0;
  /** The check for a container left running by an earlier Understudy: once it succeeded, never again. */
  private orphanCheck: Promise<void> | undefined;
  /** start() and prepare() both replace the container: one at a time. */
  private containerQueue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly config: DockerRuntimeConfig,
    ids: { service: string; instance: string },
    options: DockerRuntimeOptions,
  ) {
    this.name = `understudy-${ids.service}.${ids.instance}`;
    this.socket = options.socket;
    this.logFile = options.logFile;
    this.onOrphan = options.onOrphan ?? (() => {});
    this.docker = new Docker({ socketPath: options.socket });
    this.labels = {
      'understudy.service': ids.service,
      'understudy.instance': ids.instance,
      'understudy.spec': specHash(config),
    };
  }

  get pid(): number | undefined {
    return this.run?.pid;
  }

  signal(name: NodeJS.Signals): void {
    const run = this.run;
    if (run?.pid === undefined) throw new Error('the container has no running model server');
    // The model server itself: killed, docker-init exits with it and the container ends, as when it dies on its own.
    process.kill(run.pid, name);
    if (name === 'SIGCONT' && run.enginePid !== undefined) process.kill(run.enginePid, name);
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
    if (this.run) return;
    await checkRequired(this.config.requires);
    await mkdir(path.dirname(this.logFile), { recursive: true });
    await this.recover();
    stillWanted();
    const container = await this.serially(() => this.readyContainer(true));
    stillWanted();

    const log = await ContainerLog.open(this.logFile, `understudy starts: ${this.config.image} ${(this.config.command ?? []).join(' ')}`.trimEnd());
    // Attached before the start, so not even the first line of output is lost.
    let output: NodeJS.ReadableStream;
    try {
      output = await this.engine('attach', container.attach({ stream: true, stdout: true, stderr: true }));
    } catch (error) {
      await log.close();
      throw this.startError(`could not attach to container ${this.name}`, error);
    }
    log.follow(output, this.docker.modem);
    if (this.stops !== ticket) {
      log.detach();
      await log.close();
      stillWanted();
    }

    const run: Run = {
      container,
      started: this.engine('start', container.start()),
      pid: undefined,
      enginePid: undefined,
      startedAt: undefined,
      abandoned: false,
      log,
      ended: Promise.resolve(),
    };
    this.run = run;
    try {
      await run.started;
    } catch (error) {
      if (this.run === run) this.run = undefined;
      log.detach();
      await log.close();
      stillWanted();
      throw this.startError(`container ${this.name} (${this.config.image}) could not start`, error);
    }
    run.ended = this.watch(run);
    try {
      const info = await this.engine('inspect', container.inspect());
      run.startedAt = info.State.StartedAt;
      if (info.State.Running) {
        const pids = await hostPids(info);
        run.pid = pids?.main;
        run.enginePid = pids?.engine;
      }
    } catch {
      // Without the pid only drills and status lack it; the container runs.
    }
    if (run.abandoned) void this.halt(container, [run.pid, run.enginePid], this.config.stopGrace + STOP_SLACK_MS);
    stillWanted();
  }

  /** Creates the container for the current spec, if it is not there yet, without starting it. */
  async prepare(): Promise<void> {
    await this.recover();
    if (this.run) return;
    await this.serially(() => this.readyContainer(false));
  }

  /**
   * An Understudy that was SIGKILLed leaves its containers running: they would hold
   * the port and the GPU. Stops ours (keeping it, for its logs and a quick start).
   */
  recover(): Promise<void> {
    this.orphanCheck ??= this.stopOrphan().catch((error: unknown) => {
      // An engine that is not up yet is asked again by the next start.
      this.orphanCheck = undefined;
      throw error;
    });
    return this.orphanCheck;
  }

  private async stopOrphan(): Promise<void> {
    const info = await this.inspectOurs();
    if (!info?.State.Running || info.Id === this.run?.container.id) return;
    const pids = await hostPids(info);
    this.onOrphan(pids?.main ?? info.State.Pid, `stopping container ${this.name} (${info.Config.Image}), left running by an Understudy that did not shut down`);
    await this.halt(this.docker.getContainer(info.Id), [pids?.main, pids?.engine], this.config.stopGrace + STOP_SLACK_MS);
  }

  stop(): Promise<void> {
    this.stops += 1;
    const run = this.run;
    if (!run) return this.stopping ?? Promise.resolve();
    this.run = undefined; // from here on its exit is expected, not a failure
    this.stopping = this.end(run).finally(() => {
      this.stopping = undefined;
    });
    return this.stopping;
  }

  /** Stops a start of ours, its log complete; bounded by the grace period + 5 s, whatever the engine does. */
  private async end(run: Run): Promise<void> {
    const deadline = Date.now() + this.config.stopGrace + STOP_SLACK_MS;
    const left = () => Math.max(0, deadline - Date.now());
    // The engine may still be starting it: a stop sent before that would find nothing to stop.
    const started = await withTimeout(
      run.started.then(
        () => true,
        () => false,
      ),
      left(),
    ).catch(() => undefined);
    if (started === undefined) run.abandoned = true;
    if (!started) return;
    await this.halt(run.container, [run.pid, run.enginePid], left());
    await withTimeout(run.ended, Math.min(LOG_DRAIN_MS, left())).catch(() => {});
  }

  /**
   * The engine's stop (SIGTERM, the grace period, SIGKILL) within budgetMs: an engine that
   * does not answer in time gets the SIGKILL from us, since the pids are this machine's.
   */
  private async halt(container: Docker.Container, pids: (number | undefined)[], budgetMs: number): Promise<void> {
    const deadline = Date.now() + budgetMs;
    // A stopped (SIGSTOPped) process cannot act on SIGTERM until it is continued.
    for (const pid of pids) signal(pid, 'SIGCONT');
    await withTimeout(container.kill({ signal: 'SIGCONT' }), Math.min(1000, budgetMs)).catch(() => {});
    try {
      await withTimeout(container.stop({ t: Math.ceil(this.config.stopGrace / 1000) }), Math.max(0, deadline - Date.now()));
    } catch (error) {
      const status = statusOf(error);
      // 304: not running; 404: gone.
      if (status === 304 || status === 404) return;
      for (const pid of pids) signal(pid, 'SIGKILL');
    }
  }

  /**
   * The container to start (or keep, for prepare): ours with the current spec and image
   * if it is there and not running, else a new one. A running one is replaced only for a
   * start; prepare never stops anything.
   */
  private async readyContainer(forStart: boolean): Promise<Docker.Container> {
    const imageId = await this.ensureImage();
    const info = await this.inspectOurs();
    if (info) {
      const container = this.docker.getContainer(info.Id);
      const sameSpec = info.Config.Labels?.['understudy.spec'] === this.labels['understudy.spec'] && info.Image === imageId;
      const reusable = info.State.Status === 'created' || info.State.Status === 'exited';
      if (sameSpec && reusable) return container;
      if (info.State.Running && !forStart) return container;
      try {
        await this.engine('remove', container.remove({ force: true }));
      } catch (error) {
        if (statusOf(error) !== 404) throw this.startError(`could not remove the old container ${this.name}`, error);
      }
    }
    try {
      return await this.engine('create', this.docker.createContainer(this.createOptions()));
    } catch (error) {
      throw this.startError(`could not create container ${this.name} (${this.config.image})`, error);
    }
  }

  private createOptions(): Docker.ContainerCreateOptions {
    const c = this.config;
    const exposed: Record<string, object> = {};
    const bindings: Record<string, { HostIp: string; HostPort: string }[]> = {};
    for (const port of c.ports) {
      const key = `${port.containerPort}/${port.protocol}`;
      exposed[key] = {};
      (bindings[key] ??= []).push({ HostIp: port.hostIp, HostPort: String(port.hostPort) });
    }
    return {
      name: this.name,
      Image: c.image,
      Cmd: c.command,
      Entrypoint: c.entrypoint,
      Env: Object.entries(c.env).map(([key, value]) => `${key}=${value}`),
      Labels: this.labels,
      User: c.user,
      ExposedPorts: exposed,
      StopTimeout: Math.ceil(c.stopGrace / 1000),
      HostConfig: {
        PortBindings: bindings,
        Binds: c.volumes.map((v) => `${v.host}:${v.container}:${v.readOnly ? 'ro' : 'rw'}`),
        NetworkMode: c.network,
        Init: c.init,
        Memory: c.memory,
        // No swap on top: the limit is the point where the container is killed, not where it starts swapping.
        MemorySwap: c.memory,
        ShmSize: c.shmSize,
        DeviceRequests: c.gpus === undefined ? undefined : [gpuRequest(c.gpus)],
        // Understudy keeps the output in its own log file; the engine's copy is only bounded.
        LogConfig: { Type: 'json-file', Config: { 'max-size': '10m', 'max-file': '2' } },
      },
    };
  }

  /** The image's id, pulled first as `pull` says. */
  private async ensureImage(): Promise<string> {
    const { image, pull } = this.config;
    if (pull === 'always') await this.pull();
    let id = await this.imageId();
    if (id === undefined && pull === 'missing') {
      await this.pull();
      id = await this.imageId();
    }
    if (id !== undefined) return id;
    if (pull === 'never') throw new StartError(`image ${image} is not on this machine (pull: never); build it, load it or restore a snapshot`);
    throw new StartError(`image ${image} is not on this machine after a pull`);
  }

  private async imageId(): Promise<string | undefined> {
    try {
      const info = await this.engine('image inspect', this.docker.getImage(this.config.image).inspect());
      return info.Id;
    } catch (error) {
      if (statusOf(error) === 404) return undefined;
      throw this.startError(`could not look up image ${this.config.image}`, error);
    }
  }

  private async pull(): Promise<void> {
    const { image } = this.config;
    try {
      const progress = (await this.engine('pull', this.docker.pull(image))) as NodeJS.ReadableStream;
      const events = await new Promise<PullEvent[]>((resolve, reject) =>
        this.docker.modem.followProgress(progress, (error: Error | null, output: PullEvent[]) => (error ? reject(error) : resolve(output))),
      );
      const failed = events.find((event) => event.error !== undefined || event.errorDetail !== undefined);
      if (failed) throw new Error(failed.errorDetail?.message ?? failed.error);
    } catch (error) {
      throw this.startError(`could not pull image ${image}`, error);
    }
  }

  /** Our container, if there is one; one of this name that is not ours is left alone and refused. */
  private async inspectOurs(): Promise<Docker.ContainerInspectInfo | undefined> {
    let info: Docker.ContainerInspectInfo;
    try {
      info = await this.engine('inspect', this.docker.getContainer(this.name).inspect());
    } catch (error) {
      if (statusOf(error) === 404) return undefined;
      throw this.startError(`could not inspect container ${this.name}`, error);
    }
    const labels = info.Config.Labels ?? {};
    if (labels['understudy.service'] !== this.labels['understudy.service'] || labels['understudy.instance'] !== this.labels['understudy.instance']) {
      const owner = labels['understudy.service'] ? `instance ${labels['understudy.instance']} of service ${labels['understudy.service']}` : 'something other than Understudy';
      throw new StartError(`container name ${this.name} is taken by ${owner}; rename or remove that container`);
    }
    return info;
  }

  /** Waits for the container to end, completes its log, and reports the exit if nobody asked for it. */
  private async watch(run: Run): Promise<void> {
    let code: number | null = null;
    for (;;) {
      try {
        const result = (await run.container.wait({ condition: 'not-running' })) as { StatusCode?: number };
        code = result.StatusCode ?? null;
        break;
      } catch {
        // The connection broke (an engine restart): ask whether this start of the container still runs.
        const info = await withTimeout(run.container.inspect(), ENGINE_TIMEOUT_MS).catch(() => undefined);
        if (!info?.State.Running || info.State.StartedAt !== run.startedAt) {
          code = info?.State.ExitCode ?? null;
          break;
        }
        await sleep(1000);
      }
    }
    const unexpected = this.run === run;
    if (unexpected) this.run = undefined;
    let oomKilled = false;
    if (unexpected) {
      const info = await withTimeout(run.container.inspect(), ENGINE_TIMEOUT_MS).catch(() => undefined);
      oomKilled = info?.State.OOMKilled === true;
      if (info && !info.State.Running) code = info.State.ExitCode;
    }
    await withTimeout(run.log.drained, LOG_DRAIN_MS).catch(() => {});
    if (oomKilled) {
      const limit = this.config.memory === undefined ? 'the machine ran out of memory' : `exceeding its memory limit (${this.config.memory} bytes)`;
      run.log.line(`--- understudy: container was killed for ${limit}`);
    }
    run.log.detach();
    await run.log.close();
    if (!unexpected) return;
    // The engine only knows exit codes: 128 + n is how a shell and docker-init report a death by signal n.
    const signalName = code !== null && code > 128 ? SIGNAL_NAMES.get(code - 128) : undefined;
    this.exitListener(signalName ? null : code, signalName ?? null);
  }

  private serially<T>(task: () => Promise<T>): Promise<T> {
    const next = this.containerQueue.then(task, task);
    this.containerQueue = next.catch(() => {});
    return next;
  }

  /** One short engine request, bounded, with an unreachable engine named as such. */
  private async engine<T>(what: string, request: Promise<T>): Promise<T> {
    try {
      return await withTimeout(request, ENGINE_TIMEOUT_MS, `the Docker Engine at ${this.socket} did not answer ${what} within ${ENGINE_TIMEOUT_MS / 1000}s`);
    } catch (error) {
      if (unreachable(error)) throw new StartError(`Docker Engine not reachable at ${this.socket}: ${(error as Error).message}`, { cause: error });
      throw error;
    }
  }

  private startError(context: string, error: unknown): StartError {
    if (error instanceof StartError) return error;
    return new StartError(`${context}: ${engineMessage(error)}`, { cause: error });
  }
}

/**
 * The container's output, demultiplexed into the instance's log file. The file stays
 * open after the output ends, for the line that says how the container ended.
 */
class ContainerLog {
  /** Settles when the container's output has ended (or was detached). */
  drained: Promise<void> = Promise.resolve();
  private output: NodeJS.ReadableStream | undefined;

  private constructor(private readonly file: WriteStream) {}

  static async open(file: string, header: string): Promise<ContainerLog> {
    const stream = createWriteStream(file, { flags: 'a' });
    await Promise.race([once(stream, 'open'), once(stream, 'error').then(([error]) => Promise.reject(error))]);
    const log = new ContainerLog(stream);
    log.line(`\n--- ${new Date().toISOString()} ${header}`);
    return log;
  }

  follow(output: NodeJS.ReadableStream, modem: Docker['modem']): void {
    this.output = output;
    this.drained = new Promise((resolve) => {
      output.once('end', resolve);
      output.once('close', resolve);
      output.once('error', resolve);
    });
    (modem as { demuxStream(stream: NodeJS.ReadableStream, stdout: NodeJS.WritableStream, stderr: NodeJS.WritableStream): void }).demuxStream(output, this.file, this.file);
  }

  line(text: string): void {
    if (!this.file.writableEnded) this.file.write(`${text}\n`);
  }

  /** Stops copying output (a start that did not happen, or an end already seen). */
  detach(): void {
    const output = this.output as (NodeJS.ReadableStream & { destroy?: () => void }) | undefined;
    output?.destroy?.();
  }

  async close(): Promise<void> {
    if (this.file.writableEnded) return;
    this.file.end();
    await once(this.file, 'close').catch(() => {});
  }
}

interface PullEvent {
  status?: string;
  error?: string;
  errorDetail?: { message?: string };
}

/** What `docker run --gpus` sends (docker/cli opts/gpus.go). */
function gpuRequest(gpus: NonNullable<DockerRuntimeConfig['gpus']>): Docker.DeviceRequest {
  const ids = Array.isArray(gpus) ? gpus : undefined;
  return {
    Driver: '',
    Count: gpus === 'all' ? -1 : typeof gpus === 'number' ? gpus : 0,
    DeviceIDs: ids,
    Capabilities: [['gpu']],
    Options: {},
  };
}

/** Short hash of everything that makes the container what it is: another value means another container. */
function specHash(c: DockerRuntimeConfig): string {
  const spec = {
    image: c.image,
    command: c.command ?? null,
    entrypoint: c.entrypoint ?? null,
    env: Object.entries(c.env).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
    ports: c.ports,
    volumes: c.volumes,
    network: c.network,
    gpus: c.gpus ?? null,
    init: c.init,
    memory: c.memory ?? null,
    shmSize: c.shmSize ?? null,
    user: c.user ?? null,
  };
  return createHash('sha256').update(JSON.stringify(spec)).digest('hex').slice(0, 12);
}

/**
 * The container's pids on this machine: the engine's (its pid 1) and the model server's,
 * which with `init` is the child of docker-init (a SIGSTOP drill must reach the server, not
 * the init). Undefined when the engine's pid is not this container's here (Understudy in
 * another pid namespace than the engine): signalling it would hit some other process.
 */
async function hostPids(info: Docker.ContainerInspectInfo): Promise<{ main: number; engine: number } | undefined> {
  const engine = info.State.Pid;
  if (!(engine > 0) || !(await inContainer(engine, info.Id))) return undefined;
  if (info.HostConfig.Init !== true) return { main: engine, engine };
  // docker-init forks the server as it starts: give the fork a moment.
  const deadline = Date.now() + 2000;
  do {
    const child = await childOf(engine);
    if (child !== undefined) return { main: child, engine };
    await sleep(10);
  } while (Date.now() < deadline);
  return { main: engine, engine };
}

async function inContainer(pid: number, containerId: string): Promise<boolean> {
  try {
    return (await readFile(`/proc/${pid}/cgroup`, 'utf8')).includes(containerId);
  } catch {
    return false;
  }
}

async function childOf(pid: number): Promise<number | undefined> {
  try {
    const children = (await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8')).trim().split(' ');
    if (children[0]) return Number(children[0]);
  } catch {
    // The kernel may lack /proc/PID/task/TID/children: look through every process.
  }
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = await readFile(`/proc/${entry}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) return Number(entry);
    } catch {
      // gone meanwhile
    }
  }
  return undefined;
}

function signal(pid: number | undefined, name: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(pid, name);
  } catch {
    // gone, or not ours to signal (the engine's stop still comes)
  }
}

function statusOf(error: unknown): number | undefined {
  const status = (error as { statusCode?: unknown } | undefined)?.statusCode;
  return typeof status === 'number' ? status : undefined;
}

/** No engine at the socket, or not ours to talk to: as opposed to an engine that answered no. */
function unreachable(error: unknown): boolean {
  const code = (error as { code?: unknown } | undefined)?.code;
  return statusOf(error) === undefined && typeof code === 'string' && ['ENOENT', 'ECONNREFUSED', 'EACCES', 'ECONNRESET', 'EPIPE', 'ENOTSOCK'].includes(code);
}

/** The engine's own words: docker-modem wraps them in "(HTTP code 500) server error - ...". */
function engineMessage(error: unknown): string {
  const json = (error as { json?: unknown } | undefined)?.json;
  if (json && typeof json === 'object' && typeof (json as { message?: unknown }).message === 'string') return (json as { message: string }).message.trim();
  return error instanceof Error ? error.message.trim() : String(error);
}

function withTimeout<T>(promise: Promise<T>, ms: number, message = `no answer within ${ms} ms`): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
