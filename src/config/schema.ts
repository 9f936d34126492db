import { Cron } from 'croner';
import { z } from 'zod';
import { parseDuration, parseListen, parseSize } from './units.js';

/*
 * What the user writes in understudy.yaml, with the defaults applied and units
 * compiled to numbers (milliseconds, bytes). Every default names where it comes from
 * in docs/configuration.md; change both together.
 */

const duration = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const ms = parseDuration(value);
  if (ms === undefined) {
    ctx.addIssue({
      code: 'custom',
      message: `expected a duration such as "750ms", "30s", "5m", "1h" or "30d", got ${JSON.stringify(value)}`,
    });
    return z.NEVER;
  }
  return ms;
});

const positiveDuration = duration.refine((ms) => ms > 0, { message: 'must be longer than 0ms' });

const size = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const bytes = parseSize(value);
  if (bytes === undefined) {
    ctx.addIssue({ code: 'custom', message: `expected a size such as "512KiB" or "1MiB", got ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return bytes;
});

const listen = (defaultHost: string) =>
  z.union([z.string(), z.number()]).transform((value, ctx) => {
    const address = parseListen(value, defaultHost);
    if (!address) {
      ctx.addIssue({ code: 'custom', message: `expected "host:port" or a port number, got ${JSON.stringify(value)}` });
      return z.NEVER;
    }
    return address;
  });

const count = (min: number) => z.number().int().min(min);

const regex = z.string().refine((source) => {
  try {
    new RegExp(source);
    return true;
  } catch {
    return false;
  }
}, 'is not a valid regular expression');

/**
 * What OpenAI-compatible servers say when a prompt does not fit: OpenAI's and vLLM's
 * "maximum context length", llama.cpp's "exceeds the available context size", TGI's
 * "must be <= N" on inputs and max_new_tokens, Ollama's and others' "context window".
 */
const CONTEXT_LENGTH_MATCH =
  'context_length_exceeded|maximum context length|context size|context window|exceed_context_size|tokens \\+ `max_new_tokens` must be|prompt is too long';

const httpUrl = z.string().refine((value) => URL.canParse(value) && /^https?:$/.test(new URL(value).protocol), {
  message: 'expected an http:// or https:// URL',
});

// ---------------------------------------------------------------- probes

const httpCheck = z.strictObject({
  /** Path requested with GET, e.g. `/health`. */
  path: z.string().startsWith('/', { message: 'must start with "/"' }),
  /** Statuses that count as healthy. Default: any 2xx. */
  status: z.union([count(100), z.array(count(100)).min(1)]).optional(),
  /** Text the body must contain to count as healthy. */
  body: z.string().optional(),
});

const checkFields = {
  http: httpCheck.optional(),
  /** Healthy when a TCP connection opens. Cannot see a hung process (the kernel still accepts). */
  tcp: z.literal(true).optional(),
  /** A command (argv) that exits 0 when healthy, e.g. a GPU check with nvidia-smi. */
  command: z.array(z.string()).min(1).optional(),
  /** Longest wait for one probe. Default 1s. */
  timeout: positiveDuration.default(1000),
};

function exactlyOneCheck(probe: { http?: unknown; tcp?: unknown; command?: unknown }, ctx: z.RefinementCtx): void {
  const kinds = ['http', 'tcp', 'command'].filter((kind) => probe[kind as keyof typeof probe] !== undefined);
  if (kinds.length > 1) {
    ctx.addIssue({ code: 'custom', message: `choose one of http, tcp or command, not ${kinds.join(' and ')}` });
  }
}

const readyProbe = z
  .strictObject({
    ...checkFields,
    /** Time between probes while the instance is ready. Default 2s (HAProxy's `inter`). */
    interval: positiveDuration.default(2000),
    /** Time between probes while the instance is suspect or down. Default 500ms. */
    suspectInterval: positiveDuration.default(500),
    /** Consecutive successes that bring a down external instance back (a process is restarted instead). Default 2 (HAProxy's `rise`). */
    rise: count(1).default(2),
    /** Consecutive failures that take a ready instance down. Default 3 (HAProxy's `fall`). */
    fall: count(1).default(3),
  })
  .superRefine(exactlyOneCheck);

const startupProbe = z
  .strictObject({
    ...checkFields,
    /** Time between probes while the model loads. Default 500ms. */
    interval: positiveDuration.default(500),
    /** Longest time a start may take, model loading included, before it counts as failed. Default 5m. */
    budget: positiveDuration.default(300_000),
  })
  .superRefine(exactlyOneCheck);

const versionProbe = z.strictObject({
  /** GET this path; any 2xx answer is read. */
  http: z.strictObject({ path: z.string().startsWith('/', { message: 'must start with "/"' }) }).default({ path: '/version' }),
  /** Dotted field of the JSON body that holds the version. Default `version`. */
  json: z.string().min(1).optional(),
  /** Header that holds the version instead of the body. */
  header: z.string().min(1).optional(),
  /** Regular expression whose first group is the version, applied to the body. */
  regex: regex.optional(),
  timeout: positiveDuration.default(2000),
  /** Time between version checks of a ready instance. Default 60s. */
  interval: positiveDuration.default(60_000),
});

// ---------------------------------------------------------------- runtimes

const processRuntime = z.strictObject({
  type: z.literal('process'),
  /** argv of the model server; no shell is involved. */
  command: z.array(z.string().min(1)).min(1, { message: 'needs at least the program to run' }),
  /** Working directory, relative to the config file. Default: the config file's directory. */
  cwd: z.string().optional(),
  env: z.record(z.string(), z.string()).default({}),
  /** Time between SIGTERM and SIGKILL when stopping. Default 10s. */
  stopGrace: duration.default(10_000),
  /** Paths that must exist before a start (e.g. the model directory), relative to cwd. */
  requires: z.array(z.string().min(1)).default([]),
  /** First delay before restarting a failed instance; doubles each time. Default 1s. */
  restartDelay: duration.default(1000),
  /** Longest delay between restarts. Default 30s. */
  restartDelayMax: duration.default(30_000),
});

const externalRuntime = z.strictObject({ type: z.literal('external') });

/** `[host-ip:]host-port:container-port[/tcp]`, as `docker run -p` takes it. */
const portMapping = z.string().transform((value, ctx) => {
  const match = /^(?:(\d{1,3}(?:\.\d{1,3}){3}):)?(\d{1,5}):(\d{1,5})(?:\/(tcp|udp))?$/.exec(value.trim());
  const hostPort = Number(match?.[2]);
  const containerPort = Number(match?.[3]);
  if (!match || hostPort > 65535 || containerPort > 65535 || containerPort === 0) {
    ctx.addIssue({ code: 'custom', message: `expected "[host-ip:]host-port:container-port" such as "127.0.0.1:7001:8000", got ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return { hostIp: match[1] ?? '127.0.0.1', hostPort, containerPort, protocol: (match[4] ?? 'tcp') as 'tcp' | 'udp' };
});

/** `host-path:container-path[:ro|:rw]`, as `docker run -v` takes it; the host path is relative to the config file. */
const volumeMount = z.string().transform((value, ctx) => {
  const parts = value.split(':');
  const mode = parts.length === 3 ? parts[2] : 'rw';
  if (parts.length < 2 || parts.length > 3 || !parts[0] || !parts[1]?.startsWith('/') || (mode !== 'ro' && mode !== 'rw')) {
    ctx.addIssue({ code: 'custom', message: `expected "host-path:/container/path[:ro]", got ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return { host: parts[0], container: parts[1], readOnly: mode === 'ro' };
});

/** GPUs for the container, as `docker run --gpus` takes them: "all", a count, or device ids. */
const GPUS_MESSAGE = 'expected "all", a count of 1 or more, or a list of device ids';
const gpus = z
  .union([z.literal('all'), z.number(), z.array(z.string().min(1)).min(1)], { error: GPUS_MESSAGE })
  .refine((value) => typeof value !== 'number' || (Number.isInteger(value) && value >= 1), { message: GPUS_MESSAGE });

const dockerRuntime = z.strictObject({
  type: z.literal('docker'),
  /** Image to run, e.g. "tts-server:1.4". Never pulled from outside unless `pull` says so. */
  image: z.string().min(1),
  /** Replaces the image's CMD. */
  command: z.array(z.string()).optional(),
  /** Replaces the image's ENTRYPOINT. */
  entrypoint: z.array(z.string()).optional(),
  env: z.record(z.string(), z.string()).default({}),
  /** Published ports; the instance's url must reach one of them. Not used with network: host. */
  ports: z.array(portMapping).default([]),
  /** Bind mounts, e.g. "models/tts:/models:ro" (host path relative to the config file). */
  volumes: z.array(volumeMount).default([]),
  /** "bridge" (default, with published ports) or "host" (the container shares this machine's network). */
  network: z.string().min(1).default('bridge'),
  /** GPUs passed through (the `--gpus` equivalent); none unless set. */
  gpus: gpus.optional(),
  /** Run an init process as PID 1 that reaps zombies and forwards signals (`--init`). Default true. */
  init: z.boolean().default(true),
  /** Memory limit, e.g. "8GiB"; the container is killed past it. Default: no limit. */
  memory: size.optional(),
  /** Size of /dev/shm, e.g. "1GiB" (PyTorch data loaders need more than Docker's 64MiB). */
  shmSize: size.optional(),
  /** Container user, e.g. "1000:1000". Default: the image's. */
  user: z.string().min(1).optional(),
  /** When to pull the image: "never" (default: images are built or restored locally), "missing", "always". */
  pull: z.enum(['never', 'missing', 'always']).default('never'),
  /** Time between SIGTERM and SIGKILL when stopping. Default 10s. */
  stopGrace: duration.default(10_000),
  /** Paths on this machine that must exist before a start (e.g. the model directory), relative to the config file. */
  requires: z.array(z.string().min(1)).default([]),
  /** First delay before restarting a failed instance; doubles each time. Default 1s. */
  restartDelay: duration.default(1000),
  /** Longest delay between restarts. Default 30s. */
  restartDelayMax: duration.default(30_000),
});

const runtime = z.discriminatedUnion('type', [externalRuntime, processRuntime, dockerRuntime], {
  error: (issue) => (issue.code === 'invalid_union' ? 'type must be "external", "process" or "docker"' : undefined),
});

// ---------------------------------------------------------------- instances and services

const tier = z.enum(['primary', 'hot', 'cold'], {
  error: (issue) => (issue.input === undefined ? 'is required' : 'must be one of primary, hot, cold'),
});

// ---------------------------------------------------------------- backups

const cron = z.string().refine(
  (value) => {
    try {
      new Cron(value, { paused: true }).stop();
      return true;
    } catch {
      return false;
    }
  },
  { message: 'expected a cron schedule such as "0 3 * * *" (minute hour day month weekday)' },
);

const retention = z.strictObject({
  /** The newest snapshots kept, whatever their age. Default 5. */
  last: count(0).default(5),
  /** The newest snapshot of each of this many days that have one. Default 7. */
  daily: count(0).default(7),
  /** The newest snapshot of each of this many ISO weeks that have one. Default 4. */
  weekly: count(0).default(4),
});

const RETENTION_DEFAULT = { last: 5, daily: 7, weekly: 4 };

const serviceBackup = z.strictObject({
  /** Files and directories an instance needs to serve (model directory, config, state), relative to the config file. */
  paths: z.array(z.string().min(1)).default([]),
  /** Also keep the container image of the service's docker instances (commit, tag, push to backup.registry). Default false. */
  images: z.boolean().default(false),
  /** When to take a snapshot, in cron syntax (e.g. "0 3 * * *" for 03:00 every day, local time). Default: no schedule. */
  schedule: cron.optional(),
  /** Take a snapshot when `understudy up` finds the service's config changed since the last one. Default true. */
  onConfigChange: z.boolean().default(true),
  /** This service's retention instead of backup.retention. */
  retention: retention.optional(),
});

const backup = z.strictObject({
  /** Where snapshots are kept. Default `snapshots` inside stateDir; a separate disk is better. */
  dir: z.string().min(1).optional(),
  /** Registry that image snapshots are pushed to, e.g. "127.0.0.1:5000". Needed by services with images: true. */
  registry: z.string().min(1).optional(),
  /** What prune keeps; the newest known-good snapshot of each service is always kept. */
  retention: retention.default(RETENTION_DEFAULT),
});

// ---------------------------------------------------------------- deploys

const smoke = z.strictObject({
  method: z.enum(['GET', 'POST', 'PUT']).default('GET'),
  /** Path requested on the new instance itself, before it gets traffic, e.g. "/v1/audio/speech". */
  path: z.string().startsWith('/', { message: 'must start with "/"' }),
  headers: z.record(z.string(), z.string()).default({}),
  /** Request body: a string is sent as is, anything else as JSON. */
  body: z.unknown().optional(),
  /** Statuses that pass. Default: any 2xx. */
  status: z.union([count(100), z.array(count(100)).min(1)]).optional(),
  /** Text the answer must contain. */
  contains: z.string().optional(),
  /** Longest wait for the whole answer. Default 60s (a first request may load the model). */
  timeout: positiveDuration.default(60_000),
});

const deploy = z.strictObject({
  /**
   * How long a new version is watched with the previous one kept ready; a version that
   * survives it becomes known-good. Default 5m.
   */
  watch: positiveDuration.default(300_000),
  /** A request each new instance must answer before it takes traffic. Default: none (health and version only). */
  smoke: smoke.optional(),
  rollback: z
    .strictObject({
      /** Roll back when this share of attempts on the new version fail (5xx, resets, timeouts). Default 0.1. */
      errorRate: z.number().gt(0).max(1).default(0.1),
      /** Attempts on the new version before the error rate is judged. Default 20. */
      minRequests: count(1).default(20),
      /**
       * Roll back when instances on the new version go down (a crash, failing probes, passive
       * ejection) this many times. Default 1: with the old version kept ready, one is enough.
       */
      downs: count(1).default(1),
    })
    .default({ errorRate: 0.1, minRequests: 20, downs: 1 }),
});

// ---------------------------------------------------------------- drills

/** What a drill can do to an instance: see docs/recovery.md#drills. */
export const FAULT_KINDS = ['kill', 'hang', 'error', 'slow', 'cold-start'] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

/**
 * The fault kinds instances allow: kill and hang hit the active instance by default, so
 * every warm instance must run under Understudy; cold-start needs a cold standby it runs.
 */
export function faultsAllowed(instances: readonly { tier: string; runtime: { type: string } }[]): FaultKind[] {
  const warmSupervised = instances.filter((i) => i.tier !== 'cold').every((i) => i.runtime.type !== 'external');
  const cold = instances.some((i) => i.tier === 'cold' && i.runtime.type !== 'external');
  return FAULT_KINDS.filter((kind) => {
    if (kind === 'kill' || kind === 'hang') return warmSupervised;
    if (kind === 'cold-start') return cold && warmSupervised;
    return true;
  });
}

const drill = z.strictObject({
  /** The probe request a drill sends through the gateway, and what a good answer is. Default: deploy.smoke. */
  request: smoke.optional(),
  /** Probe requests at most, per drill. Default 400. */
  requests: count(1).max(100_000).default(400),
  /** Probe requests per second. Default 20. */
  rate: z.number().gt(0).max(1000).default(20),
  /** Items of a job run through the service during the drill, to count lost and redone items (0: none). Default 10. */
  jobItems: count(0).max(10_000).default(10),
  /** How long a hang, error or slow fault is held. Default 5s. */
  hold: positiveDuration.default(5000),
  /** How long a slow fault holds each request. Default 5s, or half of timeouts.firstByte when that is shorter. */
  delay: positiveDuration.optional(),
  /** Bound on the whole drill: the service must be back as it was within this. Default 2m. */
  timeout: positiveDuration.default(120_000),
  /** When to run a drill, in cron syntax. Default: never by schedule. */
  schedule: cron.optional(),
  /** Fault kinds scheduled drills take in turn. Default: every kind the service's instances allow. */
  faults: z.array(z.enum(FAULT_KINDS)).min(1).optional(),
});

const DRILL_DEFAULT = { requests: 400, rate: 20, jobItems: 10, hold: 5000, timeout: 120_000 };

// ---------------------------------------------------------------- alerts

const alerts = z.strictObject({
  /** URLs that get each alert as a JSON POST. */
  webhooks: z
    .array(
      z.union([
        httpUrl.transform((url) => ({ url, headers: {} as Record<string, string> })),
        z.strictObject({ url: httpUrl, headers: z.record(z.string(), z.string()).default({}) }),
      ]),
    )
    .default([]),
  /** A command run for each alert, with the alert as JSON on its standard input. */
  command: z.array(z.string().min(1)).min(1).optional(),
  /** Alerts below this severity are kept and listed but not sent. Default warning. */
  minSeverity: z.enum(['warning', 'critical']).default('warning'),
  /** The same alert (service, kind, instance) is sent again only after this long. Default 10m. */
  repeatAfter: duration.default(600_000),
});

/** How an instance takes a continuation of a cut chat stream: see docs/streams.md. */
export const PREFILL_SHAPES = ['auto', 'continue-final-message', 'assistant-prefill', 'none'] as const;
export type PrefillShape = (typeof PREFILL_SHAPES)[number];

const capabilities = z.strictObject({
  /**
   * Whether the instance continues a final assistant message, and how it is asked to:
   * `continue-final-message` (vLLM, SGLang: that flag and add_generation_prompt false),
   * `assistant-prefill` (llama.cpp server, Ollama: a final assistant message is continued),
   * `none`, or `auto` (default: read from GET /v1/models `owned_by` the first time one is needed).
   */
  prefill: z.enum(PREFILL_SHAPES, { error: `must be one of ${PREFILL_SHAPES.join(', ')}` }).default('auto'),
  /** The model's context window in tokens; a context-length error elsewhere is sent to an instance with a larger one. Default: not declared. */
  contextWindow: count(1).optional(),
});

const nodeName = z.string().regex(/^[a-z0-9][a-z0-9_-]*$/i, 'node names use letters, digits, - and _');

const instance = z.strictObject({
  tier,
  /** In a cluster: the node that runs (supervises) this instance; the others reach it by url. */
  node: nodeName.optional(),
  /** Order inside a tier: lower is preferred. Default 0. */
  priority: z.number().int().default(0),
  /** Where the instance answers, e.g. http://127.0.0.1:7001. */
  url: httpUrl,
  runtime: runtime.default({ type: 'external' }),
  /** What the model server can do beyond plain requests: continuing a cut stream, its context window. */
  capabilities: capabilities.default({ prefill: 'auto' }),
  probes: z
    .strictObject({
      startup: startupProbe.optional(),
      ready: readyProbe.optional(),
    })
    .default({}),
});

const route = z
  .strictObject({
    /** Own listener for the service, e.g. "127.0.0.1:8081". */
    listen: listen('127.0.0.1').optional(),
    /** Path prefix on the shared gateway listener, e.g. "/tts". */
    pathPrefix: z.string().startsWith('/', { message: 'must start with "/"' }).optional(),
    /** Host name on the shared gateway listener (the Host header, port ignored). */
    host: z.string().min(1).optional(),
    /** Remove pathPrefix before forwarding. Default false. */
    stripPrefix: z.boolean().default(false),
  })
  .refine((r) => r.listen !== undefined || r.pathPrefix !== undefined || r.host !== undefined, {
    message: 'needs at least one of listen, pathPrefix or host',
  });

const failback = z.string().transform((value, ctx) => {
  if (value === 'never' || value === 'manual') return { policy: value } as const;
  const match = /^after\s+(\S+)(?:\s+stable)?$/.exec(value.trim());
  const ms = match ? parseDuration(match[1]!) : undefined;
  if (ms === undefined) {
    ctx.addIssue({ code: 'custom', message: `expected "never", "manual" or "after <duration> stable", got ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return { policy: 'after', stableMs: ms } as const;
});

const service = z.strictObject({
  route,
  /** The model version every instance must serve; a standby serving another is not admitted. */
  version: z
    .strictObject({
      expect: z.string().min(1),
      probe: versionProbe.default({ http: { path: '/version' }, timeout: 2000, interval: 60_000 }),
    })
    .optional(),
  /** How `understudy deploy` rolls out a new version, and when it rolls back by itself. */
  deploy: deploy.default({ watch: 300_000, rollback: { errorRate: 0.1, minRequests: 20, downs: 1 } }),
  /** What is backed up for this service, and when. */
  backup: serviceBackup.optional(),
  /** How `understudy drill` rehearses a failure of this service, and when by schedule. */
  drill: drill.default(DRILL_DEFAULT),
  /** When traffic returns to the preferred instance after a failover. Default never (keepalived's nopreempt). */
  failback: failback.default({ policy: 'never' }),
  timeouts: z
    .strictObject({
      /**
       * Longest wait for the response head, per attempt; past it the request goes to another
       * ready instance (once, see retry.afterTimeout), else 504. Default 60s: nginx's
       * proxy_read_timeout; a longer answer should stream.
       */
      firstByte: positiveDuration.default(60_000),
      /** Streams: longest wait, per attempt, for the first token (the first content event or segment). Default 30s. */
      firstToken: positiveDuration.default(30_000),
      /** Longest pause inside a streamed response; past it a stream is continued elsewhere or cut. Default 30s. */
      idle: positiveDuration.default(30_000),
      /** Longest whole request. Default 30m. */
      total: positiveDuration.default(1_800_000),
    })
    .default({ firstByte: 60_000, firstToken: 30_000, idle: 30_000, total: 1_800_000 }),
  retry: z
    .strictObject({
      /** Most attempts of one request that may reach a model, each on a different instance when one is there. Default 3. */
      attempts: count(1).default(3),
      /** Instance answers that are retried (before any byte reaches the client): see docs/configuration.md#retry. */
      statuses: z.array(z.number().int().min(400).max(599)).default([500, 502, 503, 504, 429]),
      /** Request bodies up to this size are kept for retries; larger ones stream through once. Default 1MiB. */
      bodyLimit: size.default(1024 * 1024),
      /** Retry requests still in flight on an instance that is declared down. Default true. */
      inflightOnDown: z.boolean().default(true),
      /** A server error that is tried again on the same instance before another (a one-off fault). */
      sameInstance: z
        .strictObject({
          /** Default [500]: a 502, 503 or 504 says the instance cannot serve now, so it goes elsewhere at once. */
          statuses: z.array(z.number().int().min(500).max(599)).default([500]),
          /** Tries on the same instance per request. Default 1. */
          times: count(0).default(1),
        })
        .default({ statuses: [500], times: 1 }),
      /** 429 answers: the instance is busy, not broken. */
      rateLimited: z
        .strictObject({
          /** A Retry-After up to this is waited out on the same instance; a longer one goes to a ready standby at once. Default 2s. */
          maxWait: duration.default(2000),
          /** Tries again on the same instance per request (waiting Retry-After, or the backoff without one) before another. Default 2. */
          retries: count(0).default(2),
          /** First pause of a 429 without Retry-After; doubles at each try. Default 250ms. */
          backoff: positiveDuration.default(250),
        })
        .default({ maxWait: 2000, retries: 2, backoff: 250 }),
      /** First-byte and first-token timeouts per request that are tried again on another instance (the first one's work is cancelled). Default 1. */
      afterTimeout: count(0).default(1),
      /** A context-length error: sent to an instance with a larger capabilities.contextWindow, else passed through. */
      contextLength: z
        .strictObject({
          /** Statuses that may carry it. Default [400, 413, 422] (OpenAI and vLLM 400, TGI 422). */
          statuses: z.array(z.number().int().min(400).max(499)).default([400, 413, 422]),
          /** A regular expression, matched case-insensitively against the error body. */
          match: regex.default(CONTEXT_LENGTH_MATCH),
        })
        .default({ statuses: [400, 413, 422], match: CONTEXT_LENGTH_MATCH }),
    })
    .default({
      attempts: 3,
      statuses: [500, 502, 503, 504, 429],
      bodyLimit: 1024 * 1024,
      inflightOnDown: true,
      sameInstance: { statuses: [500], times: 1 },
      rateLimited: { maxWait: 2000, retries: 2, backoff: 250 },
      afterTimeout: 1,
      contextLength: { statuses: [400, 413, 422], match: CONTEXT_LENGTH_MATCH },
    }),
  /** Streams cut or stalled mid-answer: continued on another instance (see docs/streams.md). */
  streams: z
    .strictObject({
      /** Continue OpenAI-compatible streams and segmented audio on another instance. Default true. */
      resume: z.boolean().default(true),
      /** Most answer text kept per request to continue it; a longer stream that breaks is cut. Default 1MiB. */
      keepText: size.default(1024 * 1024),
    })
    .default({ resume: true, keepText: 1024 * 1024 }),
  limits: z
    .strictObject({
      /** Largest request body accepted; larger ones get 413. Default 100MiB. */
      body: size.default(100 * 1024 * 1024),
    })
    .default({ body: 100 * 1024 * 1024 }),
  queue: z
    .strictObject({
      /** Requests held while no instance is ready (e.g. a cold standby loads). Default 1000. */
      max: count(0).default(1000),
      /** Longest wait in the queue before a 503. Default 30s (a cold model load takes 10-30s). */
      timeout: positiveDuration.default(30_000),
    })
    .default({ max: 1000, timeout: 30_000 }),
  passive: z
    .strictObject({
      /** Consecutive failed attempts (5xx answers, resets, timeouts, stalled streams) that take an instance down. Default 5. */
      failures: count(1).default(5),
      /** A request counts as slow past max(slowMin, slowFactor × the instance's normal latency). Default 10. */
      slowFactor: z.number().min(1).default(10),
      /** Default 500ms. */
      slowMin: positiveDuration.default(500),
      /** Consecutive slow requests that take an instance down; 0 turns latency ejection off. Default 3. */
      slow: count(0).default(3),
      /** Time a passively ejected external instance stays out even if its probes pass (a process is restarted instead). Default 30s (Envoy). */
      ejectFor: duration.default(30_000),
    })
    .default({ failures: 5, slowFactor: 10, slowMin: 500, slow: 3, ejectFor: 30_000 }),
  quarantine: z
    .strictObject({
      /** Failures within `within` that quarantine an instance (kept stopped, logs kept). Default 5. */
      failures: count(1).default(5),
      /** Default 10m. */
      within: positiveDuration.default(600_000),
    })
    .default({ failures: 5, within: 600_000 }),
  instances: z.record(z.string().regex(/^[a-z0-9][a-z0-9_-]*$/i, 'instance names use letters, digits, - and _'), instance),
});

const MiB = 1024 * 1024;

const jobs = z.strictObject({
  /** Items of one job that run at once, unless the job sets its own. Default 4. */
  concurrency: count(1).max(1024).default(4),
  /** Longest run of one item (one request, its whole answer included); past it the item is tried again. Default 10m. */
  itemTimeout: positiveDuration.default(600_000),
  /** Further tries of an item after a failed try (5xx, reset, timeout); a 4xx answer is final. Default 3. */
  retries: count(0).default(3),
  /** Pause before an item is tried again; doubles each time, up to 30s. Default 1s. */
  retryDelay: positiveDuration.default(1000),
  /** Result bodies larger than this are kept as files next to the store, not in it. Default 256KiB. */
  inlineLimit: size.default(256 * 1024),
  /** Largest job submission the admin API accepts; larger work refers to files instead. Default 64MiB. */
  submitLimit: size.default(64 * MiB),
  /** How long finished jobs (with their results and files) are kept: checked at start and every hour. */
  retention: z
    .strictObject({
      /** Finished jobs older than this are removed; null: kept whatever their age. Default 30d. */
      maxAge: positiveDuration.nullable().default(30 * 86_400_000),
      /** At most this many finished jobs are kept, the newest; null: no limit. Default 1000. */
      maxCount: count(0).nullable().default(1000),
    })
    .default({ maxAge: 30 * 86_400_000, maxCount: 1000 }),
});

const idempotency = z.strictObject({
  /** How long a finished answer is kept for repeats of its Idempotency-Key. Default 24h (as Stripe's API). */
  ttl: positiveDuration.default(86_400_000),
  /** Largest answer kept for repeats; a larger one is passed through and its key released. Default 16MiB. */
  maxResponse: size.default(16 * MiB),
});

/** Whole seconds (an etcd lease's unit), at least 2. */
const leaseTtl = positiveDuration.refine((ms) => ms % 1000 === 0 && ms >= 2000, { message: 'must be whole seconds, at least 2s (an etcd lease)' });

const cluster = z.strictObject({
  /** This node's name; default $UNDERSTUDY_NODE (`understudy up --node NAME` sets it). */
  node: nodeName.optional(),
  etcd: z.strictObject({
    /** Client URLs of the etcd members, e.g. http://10.0.0.1:2379. */
    endpoints: z.array(httpUrl).min(1, { message: 'name at least one etcd member' }),
    /** Every key Understudy keeps in etcd starts with this. Default /understudy/. */
    prefix: z.string().regex(/^\/(?:[A-Za-z0-9._-]+\/)*$/, 'a key prefix like /understudy/ (starts and ends with /)').default('/understudy/'),
    /** Longest wait for one etcd call. Default 1s. */
    timeout: positiveDuration.default(1000),
  }),
  /**
   * The leader's lease. A dead leader is replaced after at most this; a leader that
   * cannot renew its lease stops acting before it runs out. Default 3s.
   */
  ttl: leaseTtl.default(3000),
  /** The job store shared by the nodes. Without it each node keeps jobs in its own SQLite file, and a job does not survive its leader. */
  postgres: z
    .strictObject({
      /** e.g. postgres://understudy@10.0.0.5/understudy (a password in $PGPASSWORD rather than here). */
      url: z.string().refine((value) => /^postgres(?:ql)?:\/\//.test(value), { message: 'expected a postgres:// URL' }),
      /** Default understudy. */
      schema: z.string().regex(/^[a-z_][a-z0-9_]*$/, 'a lower-case SQL name').default('understudy'),
    })
    .optional(),
  /** The cluster's members. Fields here override the top-level ones on that node only (for several nodes on one machine). */
  nodes: z.record(
    nodeName,
    z
      .strictObject({
        /** How the other nodes reach this node's admin API, e.g. http://10.0.0.1:9901. */
        url: httpUrl.optional(),
        gateway: z.strictObject({ listen: listen('127.0.0.1') }).optional(),
        admin: z.strictObject({ listen: listen('127.0.0.1') }).optional(),
        stateDir: z.string().min(1).optional(),
      })
      .default({}),
  ),
});

export const configSchema = z.strictObject({
  /** Events, instance logs and the admin token. Default `.understudy` next to the config file. */
  stateDir: z.string().min(1).default('.understudy'),
  gateway: z.strictObject({ listen: listen('127.0.0.1').default({ host: '127.0.0.1', port: 8080 }) }).default({
    listen: { host: '127.0.0.1', port: 8080 },
  }),
  admin: z
    .strictObject({
      /** Default 127.0.0.1:9901: the admin API is reachable from this machine only. */
      listen: listen('127.0.0.1').default({ host: '127.0.0.1', port: 9901 }),
      /** Bearer token; default: $UNDERSTUDY_ADMIN_TOKEN, else generated into stateDir/admin.token. */
      token: z.string().min(8, { message: 'must be at least 8 characters' }).optional(),
      /**
       * Host names (besides localhost and 127.0.0.1) the admin API and dashboard answer for
       * while listening on loopback, e.g. the name of an SSH tunnel or a reverse proxy. Default none.
       */
      allowedHosts: z.array(z.string().min(1).transform((s) => s.toLowerCase())).default([]),
    })
    .default({ listen: { host: '127.0.0.1', port: 9901 }, allowedHosts: [] }),
  log: z
    .strictObject({
      level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
      /** One log line per request. Default true. */
      access: z.boolean().default(true),
    })
    .default({ level: 'info', access: true }),
  /** stateDir/events.jsonl: rotated by size, so it never fills the disk. */
  events: z
    .strictObject({
      /** Past this size events.jsonl becomes events.1.jsonl and a new one is started; 0: never rotated. Default 32MiB. */
      maxFileSize: size.default(32 * MiB),
      /** Rotated files kept (events.1.jsonl newest ... events.N.jsonl); older ones are removed. Default 4. */
      keepFiles: count(0).max(1000).default(4),
    })
    .default({ maxFileSize: 32 * MiB, keepFiles: 4 }),
  /** Durable jobs: defaults for every job; a job may set its own concurrency, itemTimeout and retries. */
  jobs: jobs.default({
    concurrency: 4,
    itemTimeout: 600_000,
    retries: 3,
    retryDelay: 1000,
    inlineLimit: 256 * 1024,
    submitLimit: 64 * MiB,
    retention: { maxAge: 30 * 86_400_000, maxCount: 1000 },
  }),
  /** Requests that carry an Idempotency-Key header are answered once per key. */
  idempotency: idempotency.default({ ttl: 86_400_000, maxResponse: 16 * MiB }),
  /** Snapshots of known-good versions. */
  backup: backup.default({ retention: RETENTION_DEFAULT }),
  /** Where alerts (a failed backup or rollback, a quarantine, a failed drill...) are sent. */
  alerts: alerts.default({ webhooks: [], minSeverity: 'warning', repeatAfter: 600_000 }),
  /** How the docker runtime reaches the Docker Engine. */
  docker: z
    .strictObject({
      /** The engine's Unix socket. Default: $DOCKER_HOST when it is unix://…, else /var/run/docker.sock. */
      socket: z.string().min(1).optional(),
    })
    .default({}),
  /** Several Understudy nodes coordinated through etcd: see docs/cluster.md. */
  cluster: cluster.optional(),
  services: z.record(z.string().regex(/^[a-z0-9][a-z0-9_-]*$/i, 'service names use letters, digits, - and _'), service),
});

export type ConfigInput = z.input<typeof configSchema>;
export type ParsedConfig = z.output<typeof configSchema>;
export type ParsedService = ParsedConfig['services'][string];
export type ParsedInstance = ParsedService['instances'][string];
export type ReadyProbeConfig = z.output<typeof readyProbe>;
export type StartupProbeConfig = z.output<typeof startupProbe>;
export type VersionProbeConfig = z.output<typeof versionProbe>;
export type ProcessRuntimeConfig = z.output<typeof processRuntime>;
export type DockerRuntimeConfig = z.output<typeof dockerRuntime>;
export type JobsConfig = z.output<typeof jobs>;
export type DeployConfig = z.output<typeof deploy>;
export type SmokeConfig = z.output<typeof smoke>;
export type RetentionConfig = z.output<typeof retention>;
export type BackupConfig = z.output<typeof backup>;
export type ServiceBackupConfig = z.output<typeof serviceBackup>;
export type IdempotencyConfig = z.output<typeof idempotency>;
export type DrillConfig = z.output<typeof drill>;
export type AlertsConfig = z.output<typeof alerts>;
export type CapabilitiesConfig = z.output<typeof capabilities>;
export type ParsedCluster = z.output<typeof cluster>;
