import { existsSync, mkdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline/promises';
import { Command, InvalidArgumentError, Option } from 'commander';
import { Agent, request } from 'undici';
import { Document, isMap, isScalar, type Scalar, type YAMLMap } from 'yaml';
import { ConfigError, faultsAllowed, parseConfig, parseDuration, parseListen } from '../config/index.js';
import { UnderstudyError } from '../core/index.js';

/*
 * `understudy init`: writes a commented understudy.yaml for model servers the user
 * already has, after asking each one what it serves. The file is checked with the same
 * parser `validate` and `up` use before anything is written.
 */

export const KINDS = ['llm', 'tts', 'asr', 'image', 'http'] as const;
export type Kind = (typeof KINDS)[number];
type Tier = 'primary' | 'hot' | 'cold';

interface KindInfo {
  /** What the service is, for the file's comments. */
  what: string;
  /** Health paths tried in order; the first that answers 2xx becomes the ready probe. */
  health: readonly string[];
  /** What clients send, for the file's comments. */
  requests: string;
  /** A placeholder command for a cold standby, in the file's comments. */
  example: string;
}

const KIND_INFO: Record<Kind, KindInfo> = {
  llm: {
    what: "an OpenAI-compatible LLM server (vLLM, llama.cpp server, SGLang, TGI, Ollama's /v1)",
    // vLLM, llama.cpp server, TGI and SGLang answer /health; Ollama only its API.
    health: ['/health', '/v1/models'],
    requests: 'POST /v1/chat/completions and /v1/completions, GET /v1/models',
    example: '[vllm, serve, MODEL, --port, "PORT"]',
  },
  tts: { what: 'a text-to-speech server', health: ['/health'], requests: 'POST /v1/audio/speech', example: '[python, server.py, --port, "PORT"]' },
  asr: { what: 'a speech-recognition server', health: ['/health'], requests: 'POST /v1/audio/transcriptions', example: '[python, server.py, --port, "PORT"]' },
  image: { what: 'an image-generation server', health: ['/health'], requests: 'POST /v1/images/generations', example: '[python, server.py, --port, "PORT"]' },
  http: { what: 'an HTTP model server', health: ['/health', '/healthz', '/ready', '/'], requests: 'any path', example: '[python, server.py, --port, "PORT"]' },
};

/** Owners in GET /v1/models that `capabilities.prefill: auto` recognises (docs/streams.md). */
const KNOWN_OWNERS = new Set(['vllm', 'sglang', 'llamacpp', 'llama.cpp', 'ollama', 'library']);

const NAME = /^[a-z0-9][a-z0-9_-]*$/i;
const SPEC_FORMAT = 'expected [NAME=]KIND:URL[,URL...], e.g. chat=llm:http://127.0.0.1:8000,http://10.0.0.2:8000';
const DEFAULT_LISTEN: Listen = { host: '127.0.0.1', port: 8080 };
const DEFAULT_ADMIN: Listen = { host: '127.0.0.1', port: 9901 };
const DEFAULT_PROBE_TIMEOUT = 3000;
/** Column the file's comments wrap at. */
const WIDTH = 88;

// ---------------------------------------------------------------- what the user says

export interface Listen {
  host: string;
  port: number;
}

export type RuntimeSpec =
  | { type: 'process'; command: string[]; env: Record<string, string> }
  | { type: 'docker'; image: string; command: string[]; env: Record<string, string> };

export interface InstanceSpec {
  name: string;
  tier: Tier;
  /** Scheme, host and port: Understudy ignores a path in an instance URL. */
  url: string;
  runtime?: RuntimeSpec;
}

export interface ServiceSpec {
  name: string;
  kind: Kind;
  instances: InstanceSpec[];
}

/** `[NAME=]KIND:URL[,URL...]`; a URL written `cold:URL` is a cold standby. Throws InvalidArgumentError. */
export function parseServiceSpec(spec: string): ServiceSpec {
  const match = /^(?:([^=:]+)=)?([A-Za-z]+):(.*)$/s.exec(spec.trim());
  if (!match) throw new InvalidArgumentError(SPEC_FORMAT);
  const [, givenName, rawKind, rest] = match as unknown as [string, string | undefined, string, string];
  const kind = rawKind.toLowerCase();
  // "chat=http://host:8000" reads as kind http with the URL "//host:8000": the kind was left out.
  if (rest.startsWith('//')) throw new InvalidArgumentError(`the kind is missing: write ${givenName ?? 'NAME'}=KIND:${rawKind}:${rest} with KIND one of ${KINDS.join(', ')}`);
  if (!(KINDS as readonly string[]).includes(kind)) throw new InvalidArgumentError(`unknown kind "${rawKind}": one of ${KINDS.join(', ')}`);
  const name = givenName?.trim() ?? kind;
  if (!NAME.test(name)) throw new InvalidArgumentError(`service name "${name}": use letters, digits, - and _, starting with a letter or digit`);
  const urls = rest.split(',').map((u) => u.trim());
  if (urls.length === 0 || urls.some((u) => u === '')) throw new InvalidArgumentError(`${SPEC_FORMAT} (an empty URL in "${rest}")`);
  return { name, kind: kind as Kind, instances: instancesFrom(urls) };
}

/** Tiers and names: the first warm URL is the primary, the others hot standbys; `cold:` marks a cold one. */
function instancesFrom(urls: string[]): InstanceSpec[] {
  const counts: Record<Tier, number> = { primary: 0, hot: 0, cold: 0 };
  const seen = new Set<string>();
  return urls.map((raw) => {
    const cold = raw.startsWith('cold:');
    const url = parseUrl(cold ? raw.slice('cold:'.length) : raw);
    if (seen.has(url)) throw new InvalidArgumentError(`${url} is given twice`);
    seen.add(url);
    const tier: Tier = cold ? 'cold' : counts.primary === 0 ? 'primary' : 'hot';
    counts[tier] += 1;
    const name = counts[tier] === 1 ? tier : `${tier}${counts[tier]}`;
    return { name, tier, url };
  });
}

/** An instance URL: http(s), written back as scheme, host and port only. */
export function parseUrl(raw: string): string {
  if (!URL.canParse(raw)) throw new InvalidArgumentError(`"${raw}" is not a URL (expected http://HOST:PORT)`);
  const url = new URL(raw);
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new InvalidArgumentError(`"${raw}" is not an http:// or https:// URL`);
  return url.origin;
}

/**
 * Splits a command line into argv the way a shell would split words (quotes, backslashes),
 * without running a shell: operators and variables are refused rather than passed on as
 * words. `${version}` is kept: the runtime replaces it with the version the instance runs.
 */
export function splitCommand(text: string): string[] {
  const words: string[] = [];
  let word: string | undefined;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (/\s/.test(c)) {
      if (word !== undefined) words.push(word);
      word = undefined;
    } else if (c === "'") {
      const end = text.indexOf("'", i + 1);
      if (end < 0) throw new InvalidArgumentError(`unmatched ' in: ${text}`);
      word = (word ?? '') + text.slice(i + 1, end);
      i = end;
    } else if (c === '"') {
      let quoted = '';
      for (i++; i < text.length && text[i] !== '"'; i++) {
        if (text[i] === '\\' && i + 1 < text.length && '"\\$`'.includes(text[i + 1]!)) i++;
        quoted += text[i];
      }
      if (i >= text.length) throw new InvalidArgumentError(`unmatched " in: ${text}`);
      word = (word ?? '') + quoted;
    } else if (c === '\\') {
      word = (word ?? '') + (text[++i] ?? '');
    } else if ('|&;<>()`'.includes(c) || (c === '$' && !text.startsWith('${version}', i))) {
      throw new InvalidArgumentError(
        `the command is run without a shell, so ${c === '$' ? 'variables' : `"${c}"`} would not work in: ${text} (write the values out, or run a script: bash -c '...')`,
      );
    } else {
      word = (word ?? '') + c;
    }
  }
  if (word !== undefined) words.push(word);
  if (words.length === 0) throw new InvalidArgumentError('the command is empty');
  return words;
}

/** Leading NAME=value words of a command line become the environment, as in a shell. */
function envAndArgs(words: string[]): { env: Record<string, string>; args: string[] } {
  const env: Record<string, string> = {};
  let at = 0;
  for (; at < words.length; at++) {
    const match = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/s.exec(words[at]!);
    if (!match) break;
    env[match[1]!] = match[2]!;
  }
  return { env, args: words.slice(at) };
}

export interface RuntimeArg {
  /** An instance URL, or SERVICE/INSTANCE. */
  target: string;
  runtime: RuntimeSpec;
  flag: '--run' | '--image';
}

/** `--run URL=COMMAND` and `--image URL=IMAGE [ARGS...]`; the target may also be SERVICE/INSTANCE. */
export function parseRuntimeArg(flag: '--run' | '--image', value: string): RuntimeArg {
  const match = /^(https?:\/\/[^=\s]+|[A-Za-z0-9][\w-]*\/[A-Za-z0-9][\w-]*)=(.*)$/s.exec(value.trim());
  const shape = flag === '--run' ? 'URL=COMMAND, e.g. http://127.0.0.1:8000="vllm serve MODEL --port 8000"' : 'URL=IMAGE [ARGS...], e.g. http://127.0.0.1:8000="vllm/vllm-openai:latest --model MODEL"';
  if (!match) throw new InvalidArgumentError(`expected ${shape} (or SERVICE/INSTANCE=... in place of the URL)`);
  const target = match[1]!.includes('://') ? parseUrl(match[1]!) : match[1]!;
  const { env, args } = envAndArgs(splitCommand(match[2]!));
  if (args.length === 0) throw new InvalidArgumentError(`${flag} ${match[1]}: nothing to run after the environment`);
  const runtime: RuntimeSpec = flag === '--run' ? { type: 'process', command: args, env } : { type: 'docker', image: args[0]!, command: args.slice(1), env };
  return { target, runtime, flag };
}

/** `[HOST:]PORT`, `[v6]:PORT`; a bare port is on 127.0.0.1, as in the configuration. */
export function parseListenArg(value: string): Listen {
  const address = parseListen(value, '127.0.0.1');
  if (!address) throw new InvalidArgumentError(`expected HOST:PORT or a port, e.g. 127.0.0.1:8080, got "${value}"`);
  return address;
}

function formatListen({ host, port }: Listen): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}

interface ListenArg {
  service?: string;
  address: Listen;
}

function parseNamedListen(value: string): ListenArg {
  const match = /^([A-Za-z0-9][\w-]*)=(.*)$/s.exec(value.trim());
  return match ? { service: match[1]!, address: parseListenArg(match[2]!) } : { address: parseListenArg(value) };
}

// ---------------------------------------------------------------- what the servers say

interface Tried {
  path: string;
  status?: number;
  error?: string;
  ms: number;
}

export interface Finding {
  /** Some HTTP answer came (any status). */
  answered: boolean;
  /** The path written as the ready probe, and what it answered (none: a guess). */
  health?: { path: string; status: number; ms: number };
  tried: Tried[];
  /** Why nothing answered: `connect ECONNREFUSED`, `timeout after 3000ms`. */
  error?: string;
  /** What the version probe written for this kind reads. */
  version?: string;
  /** llm: the models GET /v1/models lists; others: the `model` of GET /version. */
  models: string[];
  owner?: string;
  contextWindow?: number;
}

/** One GET with short timeouts; never throws. */
async function get(agent: Agent, url: URL, timeoutMs: number): Promise<{ status?: number; body?: string; error?: string; ms: number }> {
  const started = performance.now();
  try {
    const response = await request(url, {
      dispatcher: agent,
      method: 'GET',
      headers: { 'user-agent': 'understudy-init', accept: 'application/json, */*' },
      signal: AbortSignal.timeout(timeoutMs),
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
    });
    const body = (await response.body.text()).slice(0, 256 * 1024);
    return { status: response.statusCode, body, ms: performance.now() - started };
  } catch (error) {
    const err = error as { name?: string; code?: string; message?: string };
    const timedOut = err.name === 'TimeoutError' || err.name === 'AbortError' || /TIMEOUT/.test(err.code ?? '');
    const reason = timedOut ? `timeout after ${timeoutMs}ms` : err.code?.startsWith('E') ? `connect ${err.code}` : (err.message ?? String(error));
    return { error: reason, ms: performance.now() - started };
  }
}

function json(body: string | undefined): unknown {
  try {
    return body === undefined ? undefined : (JSON.parse(body) as unknown);
  } catch {
    return undefined;
  }
}

const ok = (status: number | undefined) => status !== undefined && status >= 200 && status < 300;

/** Asks one server its health path, and the model or version it serves. */
export async function probeServer(kind: Kind, url: string, timeoutMs: number, agent: Agent): Promise<Finding> {
  const finding: Finding = { answered: false, tried: [], models: [] };
  let modelsBody: string | undefined;
  for (const p of KIND_INFO[kind].health) {
    const answer = await get(agent, new URL(p, url), timeoutMs);
    if (answer.error !== undefined) {
      finding.tried.push({ path: p, error: answer.error, ms: answer.ms });
      // No answer at all (refused, timed out): the other paths would say the same, slower.
      if (!finding.answered) finding.error = answer.error;
      break;
    }
    finding.answered = true;
    finding.tried.push({ path: p, status: answer.status, ms: answer.ms });
    if (p === '/v1/models') modelsBody = answer.body;
    if (ok(answer.status)) {
      finding.health = { path: p, status: answer.status!, ms: answer.ms };
      break;
    }
  }
  if (!finding.answered) return finding;
  // No 2xx, but a path that exists and says "not yet" (vLLM and TGI answer 503 while loading): keep it.
  const notYet = finding.health ? undefined : finding.tried.find((t) => t.status !== undefined && t.status >= 500 && t.status !== 501);
  if (notYet) finding.health = { path: notYet.path, status: notYet.status!, ms: notYet.ms };

  if (kind === 'llm') {
    modelsBody ??= (await get(agent, new URL('/v1/models', url), timeoutMs)).body;
    const list = (json(modelsBody) as { data?: { id?: unknown; owned_by?: unknown; max_model_len?: unknown }[] } | undefined)?.data;
    if (Array.isArray(list)) {
      finding.models = list.map((m) => m?.id).filter((id): id is string => typeof id === 'string');
      const first = list[0];
      if (typeof first?.owned_by === 'string') finding.owner = first.owned_by;
      if (typeof first?.max_model_len === 'number' && Number.isInteger(first.max_model_len) && first.max_model_len > 0) finding.contextWindow = first.max_model_len;
      // Pinned only when one model is served: Ollama lists every model it has pulled, in no fixed order.
      if (finding.models.length === 1) finding.version = finding.models[0];
    }
  } else {
    const answer = await get(agent, new URL('/version', url), timeoutMs);
    const body = ok(answer.status) ? (json(answer.body) as { version?: unknown; model?: unknown } | undefined) : undefined;
    // As the version probe reads it: a number is compared as JavaScript prints it.
    const version = typeof body?.version === 'number' ? String(body.version) : body?.version;
    if (typeof version === 'string' && version !== '') finding.version = version;
    if (typeof body?.model === 'string') finding.models = [body.model];
  }
  return finding;
}

const ms = (value: number) => `${Math.round(value)} ms`;

/** What init saw at one server, in one line. */
export function describeFinding(kind: Kind, instance: InstanceSpec, finding: Finding | undefined): string {
  if (!finding) return `not probed (--no-probe); ${KIND_INFO[kind].health[0]} written as a guess`;
  const supervised = instance.runtime !== undefined;
  if (!finding.answered) {
    const guess = `${KIND_INFO[kind].health[0]} written as a guess`;
    return supervised ? `not running (${finding.error}); Understudy starts it; ${guess}` : `no answer (${finding.error}); ${guess}`;
  }
  const parts: string[] = [];
  const others = finding.tried.filter((t) => t.path !== finding.health?.path).map((t) => `${t.path} ${t.status ?? t.error}`);
  if (finding.health) {
    const loading = ok(finding.health.status) ? '' : ' (still loading?)';
    parts.push(`${finding.health.path} ${finding.health.status} in ${ms(finding.health.ms)}${loading}${others.length ? ` (${others.join(', ')})` : ''}`);
  } else {
    parts.push(`answers, but ${others.join(', ')}: none 2xx; ${KIND_INFO[kind].health[0]} written as a guess`);
  }
  if (kind === 'llm') {
    const owner = finding.owner ? ` (owned by ${finding.owner})` : '';
    if (finding.models.length === 1) parts.push(`model ${JSON.stringify(finding.models[0])}${owner}`);
    else if (finding.models.length > 1) parts.push(`${finding.models.length} models (${finding.models.map((m) => JSON.stringify(m)).join(', ')})${owner}`);
    else parts.push('no model list at /v1/models');
  } else if (finding.version !== undefined) {
    parts.push(`version ${JSON.stringify(finding.version)}${finding.models[0] ? ` (model ${JSON.stringify(finding.models[0])})` : ''}`);
  } else {
    parts.push('no version at /version');
  }
  return parts.join(', ');
}

// ---------------------------------------------------------------- the plan

export interface InitPlan {
  /** Absolute path of the file to write. */
  file: string;
  admin: Listen;
  /** As written in the file: relative to it. */
  stateDir?: string;
  /** The directory init ran in, where relative commands are meant to run. */
  cwd: string;
  services: ServiceSpec[];
  listeners: Map<string, Listen>;
  findings: Map<string, Finding>;
  /** The same run, as flags: in the file's header, and printed after questions. */
  commandLine: string;
}

const LOOPBACK = /^(localhost|127\.\d+\.\d+\.\d+|::1|0\.0\.0\.0|::)$/i;

function isLocalHost(host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, '');
  if (LOOPBACK.test(bare)) return true;
  return Object.values(networkInterfaces()).some((list) => list?.some((a) => a.address === bare));
}

/**
 * One listener per service: OpenAI-compatible services all use /v1/..., so a path prefix
 * on one shared port could not tell them apart. Ports count up from the base, past the
 * admin port and the ports of model servers on this machine (llama-server's default is 8080).
 */
export function planListeners(services: readonly ServiceSpec[], base: Listen, named: ReadonlyMap<string, Listen>, admin: Listen): Map<string, Listen> {
  const taken = new Set<number>([admin.port, ...[...named.values()].map((l) => l.port)]);
  for (const s of services) for (const i of s.instances) if (isLocalHost(new URL(i.url).hostname)) taken.add(Number(new URL(i.url).port || (i.url.startsWith('https') ? 443 : 80)));
  const listeners = new Map<string, Listen>();
  let port = base.port;
  for (const s of services) {
    const own = named.get(s.name);
    if (own) {
      listeners.set(s.name, own);
      continue;
    }
    if (port !== 0) while (taken.has(port)) port++;
    if (port > 65535) throw new UnderstudyError('INIT_USAGE', `no port left above ${base.port} for service ${s.name}; give it one with --listen ${s.name}=HOST:PORT`);
    listeners.set(s.name, { host: base.host, port });
    if (port !== 0) taken.add(port++);
  }
  return listeners;
}

/**
 * The version every instance that answered reports, when they all report the same one.
 * One that answered without a version would never be admitted under a pin, so it
 * prevents one; one that did not answer is not asked.
 */
function agreedVersion(service: ServiceSpec, findings: ReadonlyMap<string, Finding>): { version?: string; reports: string[] } {
  const answered = service.instances.flatMap((i) => {
    const finding = findings.get(`${service.name}/${i.name}`);
    return finding?.answered ? [{ name: i.name, version: finding.version }] : [];
  });
  const reports = answered.map((a) => `${a.name} ${a.version === undefined ? 'none' : JSON.stringify(a.version)}`);
  const versions = new Set(answered.map((a) => a.version));
  const [only] = versions;
  return { version: versions.size === 1 ? only : undefined, reports };
}

function versionProbe(kind: Kind) {
  return kind === 'llm' ? { http: { path: '/v1/models' }, json: 'data.0.id' } : { http: { path: '/version' }, json: 'version' };
}

function healthPath(kind: Kind, finding: Finding | undefined): string {
  return finding?.health?.path ?? KIND_INFO[kind].health[0]!;
}

/** What `understudy drill` sends through the gateway while it fails an instance. */
function drillRequest(service: ServiceSpec, findings: ReadonlyMap<string, Finding>): { request: Record<string, unknown>; real: boolean } {
  const first = service.instances.map((i) => findings.get(`${service.name}/${i.name}`)).find((f) => f?.answered);
  if (service.kind === 'llm') {
    const model = first?.version ?? first?.models[0];
    if (model !== undefined) {
      return {
        request: { method: 'POST', path: '/v1/chat/completions', body: { model, messages: [{ role: 'user', content: 'Say OK.' }], max_tokens: 1 }, status: 200 },
        real: true,
      };
    }
    return { request: { method: 'GET', path: '/v1/models', status: 200 }, real: false };
  }
  if (service.kind === 'tts') return { request: { method: 'POST', path: '/v1/audio/speech', body: { input: 'Drill.' }, status: 200 }, real: true };
  const instance = service.instances[0]!;
  return { request: { method: 'GET', path: healthPath(service.kind, findings.get(`${service.name}/${instance.name}`)) }, real: false };
}

/** The drill fault the instances allow: kill needs every warm instance run by Understudy. */
export function drillFault(service: ServiceSpec): 'kill' | 'error' {
  const instances = service.instances.map((i) => ({ tier: i.tier, runtime: { type: i.runtime?.type ?? 'external' } }));
  return faultsAllowed(instances).includes('kill') ? 'kill' : 'error';
}

// ---------------------------------------------------------------- the file

/** Wraps prose into comment lines for a key indented `indent` spaces. */
function wrap(text: string, indent: number): string {
  const width = Math.max(40, WIDTH - indent - 2);
  const out: string[] = [];
  for (const paragraph of text.split('\n')) {
    // Lines that start with spaces are examples: kept as they are.
    if (paragraph === '' || paragraph.startsWith(' ')) {
      out.push(paragraph);
      continue;
    }
    // A list item's further lines hang under its text.
    const hang = paragraph.startsWith('- ') ? '  ' : '';
    let line = '';
    for (const word of paragraph.split(' ')) {
      if (line.trim() !== '' && line.length + 1 + word.length > width) {
        out.push(line);
        line = `${hang}${word}`;
      } else line = line === '' ? word : `${line} ${word}`;
    }
    out.push(line);
  }
  return out.map((l) => (l === '' ? '' : ` ${l}`)).join('\n');
}

class Annotator {
  constructor(private readonly doc: Document) {}

  private map(at: readonly string[]): YAMLMap {
    const node = at.length === 0 ? this.doc.contents : this.doc.getIn(at, true);
    if (!isMap(node)) throw new Error(`init: no map at ${at.join('.')}`);
    return node;
  }

  private key(at: readonly string[]): Scalar {
    const pair = this.map(at.slice(0, -1)).items.find((p) => isScalar(p.key) && p.key.value === at.at(-1));
    if (!pair || !isScalar(pair.key)) throw new Error(`init: no key ${at.join('.')}`);
    return pair.key;
  }

  /** A comment above a key, and a blank line above that when `space`. */
  before(at: readonly string[], text: string, space = false): void {
    const key = this.key(at);
    key.commentBefore = wrap(text, 2 * (at.length - 1));
    if (space) key.spaceBefore = true;
  }

  /** A comment after the last entry of a map. */
  after(at: readonly string[], text: string): void {
    this.map(at).comment = wrap(text, 2 * at.length);
  }

  /** Written on one line: `{ a: 1 }`, `[a, b]`. */
  flow(at: readonly string[]): void {
    const node = this.doc.getIn(at, true) as { flow?: boolean } | undefined;
    if (node) node.flow = true;
  }
}

function runtimeObject(runtime: RuntimeSpec, url: string, cwd: string | undefined): Record<string, unknown> {
  const env = Object.keys(runtime.env).length > 0 ? { env: runtime.env } : {};
  if (runtime.type === 'process') return { type: 'process', command: runtime.command, ...(cwd === undefined ? {} : { cwd }), ...env };
  const { hostname, port } = new URL(url);
  const hostPort = port || (url.startsWith('https') ? '443' : '80');
  const ip = /^\d+\.\d+\.\d+\.\d+$/.test(hostname) && hostname !== '127.0.0.1' ? `${hostname}:` : '';
  return {
    type: 'docker',
    image: runtime.image,
    ...(runtime.command.length > 0 ? { command: runtime.command } : {}),
    ...env,
    ports: [`${ip}${hostPort}:${hostPort}`],
  };
}

/** Where a process instance's relative command was meant to run, as the file writes it (none: the file's directory). */
function cwdFor(plan: InitPlan): string | undefined {
  const dir = path.dirname(plan.file);
  if (path.resolve(plan.cwd) === dir) return undefined;
  const relative = path.relative(dir, plan.cwd);
  // Relative while it is near (the file and the servers move together); absolute past that.
  return relative.startsWith('../../..') || path.isAbsolute(relative) ? plan.cwd : relative;
}

/** The commented YAML text of a plan; not yet checked. */
export function renderConfig(plan: InitPlan): string {
  const cwd = cwdFor(plan);
  const services: Record<string, unknown> = {};
  for (const service of plan.services) {
    const findingOf = (i: InstanceSpec) => plan.findings.get(`${service.name}/${i.name}`);
    const { version } = agreedVersion(service, plan.findings);
    const windows = new Set(service.instances.map((i) => findingOf(i)?.contextWindow).filter((w) => w !== undefined));
    const instances: Record<string, unknown> = {};
    for (const instance of service.instances) {
      const finding = findingOf(instance);
      instances[instance.name] = {
        tier: instance.tier,
        url: instance.url,
        ...(instance.runtime ? { runtime: runtimeObject(instance.runtime, instance.url, cwd) } : {}),
        // Declared only when they differ: then a prompt too long for one instance can go to a larger one.
        ...(windows.size > 1 && finding?.contextWindow !== undefined ? { capabilities: { contextWindow: finding.contextWindow } } : {}),
        probes: { ready: { http: { path: healthPath(service.kind, finding) } } },
      };
    }
    services[service.name] = {
      route: { listen: formatListen(plan.listeners.get(service.name)!) },
      ...(version === undefined ? {} : { version: { expect: version, probe: versionProbe(service.kind) } }),
      drill: { request: drillRequest(service, plan.findings).request },
      instances,
    };
  }
  const doc = new Document({
    ...(plan.stateDir === undefined ? {} : { stateDir: plan.stateDir }),
    admin: { listen: formatListen(plan.admin) },
    services,
  });
  annotate(doc, plan);
  return doc.toString({ lineWidth: 0 }).replace(/\n*$/, '\n');
}

function annotate(doc: Document, plan: InitPlan): void {
  const a = new Annotator(doc);
  const file = path.basename(plan.file);
  const instances = plan.services.reduce((n, s) => n + s.instances.length, 0);
  doc.commentBefore = wrap(
    [
      `Understudy: ${plural(plan.services.length, 'service')}, ${plural(instances, 'instance')}. Written by \`understudy init\`:`,
      `  ${plan.commandLine}`,
      '',
      'Every field is described in docs/configuration.md. After each change:',
      `  understudy validate -c ${file}   # names the line and field of any mistake`,
      `  understudy up -c ${file}`,
      '',
      'Relative paths in this file are relative to it.',
    ].join('\n'),
    0,
  );
  if (plan.stateDir !== undefined) a.before(['stateDir'], 'Event log, instance logs, jobs and the admin token.');
  a.before(
    ['admin'],
    `The admin API and the dashboard (http://${formatListen(plan.admin)}/ui/). Its token is generated into STATEDIR/admin.token (default .understudy/ next to this file) at the first \`up\`.`,
    plan.stateDir !== undefined,
  );
  a.before(['services'], 'Each service has its own port; clients use it in place of the model server\'s address.', true);

  plan.services.forEach((service, index) => {
    const at = ['services', service.name];
    const info = KIND_INFO[service.kind];
    const listen = formatListen(plan.listeners.get(service.name)!);
    a.before(
      at,
      `${service.name}: ${info.what}. Clients send ${info.requests} to http://${listen}; each request goes to the active instance, and to a standby when that one fails.`,
      index > 0,
    );
    a.before([...at, 'route'], 'Its own port. Several services could share gateway.listen with route.pathPrefix or route.host instead, when their paths differ.');

    const { version, reports } = agreedVersion(service, plan.findings);
    const source = service.kind === 'llm' ? 'the first model id of GET /v1/models' : 'the `version` field of GET /version';
    if (version !== undefined) {
      a.before(
        [...at, 'version'],
        `Every instance must serve this ${service.kind === 'llm' ? 'model' : 'version'} (${source}); a standby that serves another is never given traffic, so a failover cannot change it silently. \`understudy deploy ${service.name} NEW\` changes it, and \${version} in a runtime's command or image becomes it.`,
      );
      a.flow([...at, 'version', 'probe']);
    }

    const drill = drillRequest(service, plan.findings);
    const fault = drillFault(service);
    a.before(
      [...at, 'drill'],
      `What \`understudy drill ${service.name} --fault ${fault}\` sends through the gateway while it fails an instance on purpose${drill.real ? '' : '; a request your clients really send would test more'}.`,
    );
    a.flow([...at, 'drill', 'request']);

    const instancesAt = [...at, 'instances'];
    a.before(instancesAt, 'The first ready one by tier (primary, hot, cold) takes the traffic.');
    for (const instance of service.instances) {
      const iat = [...instancesAt, instance.name];
      const finding = plan.findings.get(`${service.name}/${instance.name}`);
      a.before(iat, instanceComment(service, instance, finding));
      a.flow([...iat, 'probes', 'ready']);
      if (instance.runtime) {
        a.flow([...iat, 'runtime', 'command']);
        if (instance.runtime.type === 'docker') a.flow([...iat, 'runtime', 'ports']);
      }
    }
    if (!service.instances.some((i) => i.tier === 'cold')) {
      a.after(
        instancesAt,
        [
          'Next: a cold standby, started only when the others are down (Understudy runs it), e.g.',
          '  cold:',
          '    tier: cold',
          '    url: http://127.0.0.1:PORT',
          `    runtime: { type: process, command: ${info.example} }`,
        ].join('\n'),
      );
    }

    const next: [string, string][] = [
      ['failback: after 30s stable', 'traffic back to the primary once it has been healthy for a while (default: it stays where it went)'],
      ['drill.schedule: "0 4 * * 1"', 'a failure drill every Monday at 04:00, with the request above'],
    ];
    const probe = JSON.stringify(versionProbe(service.kind)).replace(/"/g, '').replace(/([:,])/g, '$1 ').replace(/\{/g, '{ ').replace(/\}/g, ' }');
    if (version === undefined) {
      const why = reports.length > 1 && reports.some((r) => !r.endsWith(' none')) ? `the version, once the instances agree (now: ${reports.join(', ')})` : 'the version every instance must serve, so a standby serving another never gets traffic';
      next.push([`version: { expect: ..., probe: ${probe} }`, why]);
    }
    if (service.kind === 'llm') next.push(['capabilities.contextWindow: 32768', 'on each instance, when their context windows differ: a prompt too long for one goes to a larger one']);
    if (service.kind === 'asr' || service.kind === 'image') next.push(['timeouts.firstByte: 5m', 'a longer wait for an answer to start than the 60s default']);
    const lines = ['Next, when you want them (docs/configuration.md):', ...next.flatMap(([field, why]) => [`- ${why}:`, `    ${field}`])];
    a.after(at, lines.join('\n'));
  });
}

function instanceComment(service: ServiceSpec, instance: InstanceSpec, finding: Finding | undefined): string {
  const role: Record<Tier, string> = {
    primary: 'The instance that normally serves.',
    hot: 'A hot standby: running, model loaded, idle; it takes the traffic at once when the primary fails.',
    cold: 'A cold standby: started only when no other instance can serve; requests wait in the queue while it loads.',
  };
  const runtime =
    instance.runtime?.type === 'process'
      ? `Understudy runs it: starts it at \`up\`, restarts it when it fails, stops it at the end; its output is in STATEDIR/logs/${service.name}.${instance.name}.log. probes.startup.budget (default 5m) bounds the model's loading: raise it for a large model.`
      : instance.runtime?.type === 'docker'
        ? `Understudy runs it as a container (understudy-${service.name}-${instance.name}), never pulling the image unless runtime.pull says so. The container port is taken to be the URL's; change the right side of ports if the image listens elsewhere.${service.kind === 'llm' ? ' `gpus: all` passes the GPUs through (needs the NVIDIA Container Toolkit).' : ''}`
        : 'Run by someone else (runtime external): Understudy probes it and sends it traffic, never starts or stops it.';
  const lines = [`${role[instance.tier]} ${runtime}`];
  if (!finding) lines.push(`Not probed (--no-probe): ${healthPath(service.kind, finding)} is a guess; check it.`);
  else if (!finding.answered) lines.push(`It did not answer \`understudy init\` (${finding.error}): the ready probe ${healthPath(service.kind, finding)} is a guess; check it.`);
  else lines.push(`\`understudy init\` found: ${describeFinding(service.kind, instance, finding)}.`);
  if (service.kind === 'llm' && finding?.answered && (finding.owner === undefined || !KNOWN_OWNERS.has(finding.owner))) {
    lines.push(
      `GET /v1/models names no owner Understudy knows${finding.owner ? ` ("${finding.owner}")` : ''}, so a stream cut mid-answer is not continued on this instance: set capabilities: { prefill: continue-final-message } for vLLM or SGLang, assistant-prefill for llama.cpp or Ollama (docs/streams.md).`,
    );
  }
  return lines.join('\n');
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

/** Checks the text as `validate` would; throws with every mistake, nothing written. */
export function checkConfig(text: string, file: string): void {
  try {
    parseConfig(text, file);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    throw new UnderstudyError('INIT_INVALID', `the configuration would not be valid, so nothing was written:\n${error.message}`, false, { cause: error });
  }
}

// ---------------------------------------------------------------- questions

/**
 * Questions on stdin. Lines are read through one async iterator, so answers piped in
 * before a question is asked are kept for it (readline's question() would drop them).
 */
class Asker {
  private readonly rl;
  private readonly lines: AsyncIterator<string>;
  private readonly echo: boolean;

  constructor(
    input: NodeJS.ReadableStream & { isTTY?: boolean },
    private readonly output: NodeJS.WritableStream,
  ) {
    this.rl = createInterface({ input, output, terminal: input.isTTY === true });
    this.lines = this.rl[Symbol.asyncIterator]();
    this.echo = input.isTTY !== true;
    // On a terminal readline takes Ctrl-C itself and would only pause; nothing is written yet, so leave.
    this.rl.on('SIGINT', () => {
      output.write('\n');
      process.exit(130);
    });
  }

  async ask(question: string, fallback?: string): Promise<string> {
    this.rl.setPrompt(fallback ? `${question} [${fallback}]: ` : `${question}: `);
    this.rl.prompt();
    const next = await this.lines.next();
    if (next.done) throw new UnderstudyError('INIT_INPUT', 'the input ended before every question was answered; nothing was written');
    const answer = (next.value as string).trim();
    // A piped answer is not echoed by a terminal: show it, so the transcript reads as one.
    if (this.echo) this.output.write(`${answer}\n`);
    return answer === '' ? (fallback ?? '') : answer;
  }

  /** Asks until `parse` accepts the answer; its InvalidArgumentError message says why not. */
  async until<T>(question: string, parse: (answer: string) => T, fallback?: string): Promise<T> {
    for (;;) {
      const answer = await this.ask(question, fallback);
      try {
        return parse(answer);
      } catch (error) {
        if (!(error instanceof InvalidArgumentError)) throw error;
        this.output.write(`  ${error.message}\n`);
      }
    }
  }

  async yes(question: string): Promise<boolean> {
    return this.until(`${question} (y/N)`, (answer) => {
      if (/^(y|yes)$/i.test(answer)) return true;
      if (answer === '' || /^(n|no)$/i.test(answer)) return false;
      throw new InvalidArgumentError('answer y or n');
    });
  }

  close(): void {
    this.rl.close();
  }
}

async function askServices(asker: Asker, out: NodeJS.WritableStream): Promise<{ services: ServiceSpec[]; runtimes: RuntimeArg[] }> {
  out.write('Which model servers should Understudy keep answering? (Enter keeps the value in brackets.)\n');
  const services: ServiceSpec[] = [];
  const runtimes: RuntimeArg[] = [];
  const commandOf = (answer: string) => (answer === '' ? undefined : envAndArgs(splitCommand(answer)));
  for (;;) {
    const n = services.length + 1;
    const kind = await asker.until(`Kind of service ${n}: ${KINDS.join(', ')}`, (answer) => {
      if (!(KINDS as readonly string[]).includes(answer)) throw new InvalidArgumentError(`one of ${KINDS.join(', ')}`);
      return answer as Kind;
    }, 'llm');
    const taken = new Set(services.map((s) => s.name));
    const suggested = taken.has(kind) ? `${kind}${n}` : kind;
    const name = await asker.until('Its name (letters, digits, - and _)', (answer) => {
      if (!NAME.test(answer)) throw new InvalidArgumentError('use letters, digits, - and _, starting with a letter or digit');
      if (taken.has(answer)) throw new InvalidArgumentError(`there is a service ${answer} already`);
      return answer;
    }, suggested);
    const primary = await asker.until(`URL of ${name}'s primary (e.g. http://127.0.0.1:8000)`, parseUrl);
    // A URL given twice is asked again, not the end of the session.
    const hot = await asker.until(`URLs of ${name}'s hot standbys, comma-separated (Enter: none)`, (answer) => {
      const urls = answer === '' ? [] : answer.split(',').map((u) => parseUrl(u.trim()));
      instancesFrom([primary, ...urls]);
      return urls;
    });
    const spec: ServiceSpec = { name, kind, instances: instancesFrom([primary, ...hot]) };
    for (const instance of spec.instances) {
      const command = await asker.until(`Command that starts ${instance.url}, if Understudy should run it (Enter: it runs on its own)`, commandOf);
      if (command) runtimes.push({ target: instance.url, runtime: { type: 'process', command: command.args, env: command.env }, flag: '--run' });
    }
    const cold = await asker.until(`URL of a cold standby, started only when the others are down (Enter: none)`, (answer) => {
      if (answer === '') return undefined;
      const url = parseUrl(answer);
      instancesFrom([primary, ...hot, `cold:${url}`]);
      return url;
    });
    if (cold !== undefined) {
      spec.instances = instancesFrom([primary, ...hot, `cold:${cold}`]);
      const command = await asker.until(`Command that starts ${cold} (Understudy runs a cold standby)`, (answer) => {
        const parsed = commandOf(answer);
        if (!parsed || parsed.args.length === 0) throw new InvalidArgumentError('a cold standby needs the command that starts it');
        return parsed;
      });
      runtimes.push({ target: cold, runtime: { type: 'process', command: command.args, env: command.env }, flag: '--run' });
    }
    services.push(spec);
    if (!(await asker.yes('Another service?'))) return { services, runtimes };
  }
}

// ---------------------------------------------------------------- the command

interface InitOptions {
  service?: ServiceSpec[];
  run?: RuntimeArg[];
  image?: RuntimeArg[];
  listen?: ListenArg[];
  admin: Listen;
  output: string;
  force?: boolean;
  stateDir?: string;
  yes?: boolean;
  input: boolean;
  interactive?: boolean;
  probe: boolean;
  probeTimeout: number;
}

/** A repeatable flag; no default, so help shows none. */
function collect<T>(parse: (value: string) => T) {
  return (value: string, previous: T[] | undefined) => [...(previous ?? []), parse(value)];
}

function shellQuote(word: string): string {
  if (/^[\w@%+=:,./-]+$/.test(word)) return word;
  return /["$`\\!]/.test(word) ? `'${word.replace(/'/g, "'\\''")}'` : `"${word}"`;
}

function commandWords(runtime: RuntimeSpec): string[] {
  const env = Object.entries(runtime.env).map(([k, v]) => `${k}=${v}`);
  return runtime.type === 'process' ? [...env, ...runtime.command] : [...env, runtime.image, ...runtime.command];
}

/** The flags that make the same file without questions. */
function equivalentCommand(services: readonly ServiceSpec[], options: InitOptions, named: ReadonlyMap<string, Listen>, base: Listen): string {
  const words = ['understudy', 'init', '--yes'];
  for (const s of services) {
    words.push('--service', `${s.name}=${s.kind}:${s.instances.map((i) => (i.tier === 'cold' ? `cold:${i.url}` : i.url)).join(',')}`);
  }
  for (const s of services) {
    for (const i of s.instances) {
      if (i.runtime) words.push(i.runtime.type === 'process' ? '--run' : '--image', `${i.url}=${commandWords(i.runtime).map(shellQuote).join(' ')}`);
    }
  }
  if (base.host !== DEFAULT_LISTEN.host || base.port !== DEFAULT_LISTEN.port) words.push('--listen', formatListen(base));
  for (const [name, address] of named) words.push('--listen', `${name}=${formatListen(address)}`);
  if (options.admin.host !== DEFAULT_ADMIN.host || options.admin.port !== DEFAULT_ADMIN.port) words.push('--admin', formatListen(options.admin));
  if (options.stateDir !== undefined) words.push('--state-dir', options.stateDir);
  if (!options.probe) words.push('--no-probe');
  words.push('-o', options.output);
  return words.map(shellQuote).join(' ');
}

/** Gives each --run and --image to its instance; every mistake is named with its flag. */
function attachRuntimes(services: ServiceSpec[], runtimes: readonly RuntimeArg[]): void {
  for (const arg of runtimes) {
    const matches = services.flatMap((s) =>
      s.instances.filter((i) => (arg.target.includes('://') ? i.url === arg.target : `${s.name}/${i.name}` === arg.target)).map((i) => ({ s, i })),
    );
    if (matches.length === 0) {
      const known = services.flatMap((s) => s.instances.map((i) => `${s.name}/${i.name} ${i.url}`)).join(', ');
      throw new UnderstudyError('INIT_USAGE', `${arg.flag} ${arg.target}: no --service has this instance (there are: ${known})`);
    }
    if (matches.length > 1) {
      throw new UnderstudyError('INIT_USAGE', `${arg.flag} ${arg.target}: the URL is an instance of ${matches.map((m) => m.s.name).join(' and ')}; name one as SERVICE/INSTANCE (${matches.map((m) => `${m.s.name}/${m.i.name}`).join(', ')})`);
    }
    const { s, i } = matches[0]!;
    if (i.runtime) throw new UnderstudyError('INIT_USAGE', `${arg.flag} ${arg.target}: ${s.name}/${i.name} already has a ${i.runtime.type === 'process' ? '--run' : '--image'}`);
    i.runtime = arg.runtime;
  }
}

function warn(message: string): void {
  process.stderr.write(`understudy: warning: ${message}\n`);
}

/** Writes without ever leaving half a file: a new file exclusively, a replaced one through a rename. */
function writeConfig(file: string, text: string, force: boolean): void {
  mkdirSync(path.dirname(file), { recursive: true });
  if (!force) {
    try {
      writeFileSync(file, text, { flag: 'wx' });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') throw exists(file);
      throw error;
    }
    return;
  }
  const temporary = `${file}.${process.pid}.tmp`;
  try {
    writeFileSync(temporary, text);
    renameSync(temporary, file);
  } catch (error) {
    rmSync(temporary, { force: true });
    throw error;
  }
}

function exists(file: string): UnderstudyError {
  return new UnderstudyError('INIT_EXISTS', `${file} exists; nothing was changed (--force replaces it)`);
}

async function runInit(options: InitOptions): Promise<void> {
  const out = process.stdout;
  const file = path.resolve(options.output);
  if (existsSync(file) && statSync(file).isDirectory()) throw new UnderstudyError('INIT_USAGE', `-o ${options.output} is a directory; name the file, e.g. -o ${path.join(options.output, 'understudy.yaml')}`);
  const noQuestions = options.yes === true || !options.input;
  const mayAsk = !noQuestions && (options.interactive === true || process.stdin.isTTY === true);
  let services = (options.service ?? []).map((s) => ({ ...s, instances: s.instances.map((i) => ({ ...i })) }));
  let runtimes = [...(options.run ?? []), ...(options.image ?? [])];
  let force = options.force === true;
  let asker: Asker | undefined;
  try {
    if (existsSync(file) && !force) {
      if (!mayAsk) throw exists(file);
      asker ??= new Asker(process.stdin, out);
      if (!(await asker.yes(`${file} exists. Replace it?`))) throw exists(file);
      force = true;
    }
    if (services.length === 0) {
      if (!mayAsk) {
        const why = noQuestions ? 'with --yes nothing is asked' : 'stdin is not a terminal, so nothing is asked (--interactive asks anyway)';
        throw new UnderstudyError('INIT_USAGE', `say which servers to keep answering: --service NAME=KIND:URL[,URL...], e.g. --service chat=llm:http://127.0.0.1:8000 (${why})`);
      }
      asker ??= new Asker(process.stdin, out);
      const answered = await askServices(asker, out);
      services = answered.services;
      runtimes = [...runtimes, ...answered.runtimes];
    }
  } finally {
    asker?.close();
  }

  const names = new Set<string>();
  for (const s of services) {
    if (names.has(s.name)) throw new UnderstudyError('INIT_USAGE', `--service ${s.name} is given twice; one --service per service, its URLs comma-separated`);
    names.add(s.name);
  }
  attachRuntimes(services, runtimes);
  for (const s of services) {
    for (const i of s.instances) {
      if (i.tier === 'cold' && !i.runtime) {
        throw new UnderstudyError('INIT_USAGE', `${s.name}/${i.name} ${i.url} is a cold standby, which Understudy starts when needed: say how with --run ${i.url}=COMMAND (or --image ${i.url}=IMAGE)`);
      }
      if (i.runtime && /^\d+\.\d+\.\d+\.\d+$/.test(new URL(i.url).hostname) && !isLocalHost(new URL(i.url).hostname)) {
        warn(`${s.name}/${i.name} ${i.url} is not on this machine, but its ${i.runtime.type === 'process' ? '--run' : '--image'} runs here`);
      }
    }
  }

  const listenArgs = options.listen ?? [];
  const unnamed = listenArgs.filter((l) => l.service === undefined);
  if (unnamed.length > 1) throw new UnderstudyError('INIT_USAGE', '--listen without a service name is given twice; name the others: --listen SERVICE=HOST:PORT');
  const named = new Map<string, Listen>();
  for (const l of listenArgs) {
    if (l.service === undefined) continue;
    if (!names.has(l.service)) throw new UnderstudyError('INIT_USAGE', `--listen ${l.service}=...: there is no service ${l.service} (${[...names].join(', ')})`);
    named.set(l.service, l.address);
  }
  const base = unnamed[0]?.address ?? DEFAULT_LISTEN;
  const listeners = planListeners(services, base, named, options.admin);

  const findings = new Map<string, Finding>();
  if (options.probe) {
    const count = services.reduce((n, s) => n + s.instances.length, 0);
    out.write(`Asking ${plural(count, 'server')} what ${count === 1 ? 'it serves' : 'they serve'} (timeout ${options.probeTimeout / 1000}s each):\n`);
    const agent = new Agent({ connect: { timeout: options.probeTimeout }, keepAliveTimeout: 1000 });
    try {
      const jobs = services.flatMap((s) => s.instances.map(async (i) => [`${s.name}/${i.name}`, await probeServer(s.kind, i.url, options.probeTimeout, agent)] as const));
      for (const [id, finding] of await Promise.all(jobs)) findings.set(id, finding);
    } finally {
      await agent.close();
    }
  }
  const width = Math.max(...services.flatMap((s) => s.instances.map((i) => `${s.name}/${i.name} ${i.url}:`.length)));
  const silent: string[] = [];
  for (const s of services) {
    for (const i of s.instances) {
      const id = `${s.name}/${i.name}`;
      const finding = findings.get(id);
      out.write(`  ${`${id} ${i.url}:`.padEnd(width)} ${describeFinding(s.kind, i, options.probe ? finding : undefined)}\n`);
      if (finding && !finding.answered && !i.runtime) silent.push(`${id} ${i.url}`);
      if (finding?.answered && i.runtime?.type === 'process') {
        warn(`${id} ${i.url} answers now, but Understudy starts it itself (--run): stop it before \`understudy up\`, or the new one cannot take its port`);
      }
    }
    const { version, reports } = agreedVersion(s, findings);
    if (version === undefined && reports.length > 1 && reports.some((r) => !r.endsWith(' none'))) {
      warn(`${s.name}: the instances do not report the same version (${reports.join(', ')}); no version is pinned`);
    }
  }
  if (silent.length > 0) warn(`${plural(silent.length, 'server')} did not answer: ${silent.join(', ')}; their probes are guesses, marked in the file`);

  for (const s of services) {
    const { version } = agreedVersion(s, findings);
    const uses = s.instances.find((i) => i.runtime && JSON.stringify(i.runtime).includes('${version}'));
    if (uses && version === undefined) {
      throw new UnderstudyError('INIT_USAGE', `${s.name}/${uses.name}: \${version} in its ${uses.runtime!.type === 'process' ? '--run' : '--image'} needs a pinned version, and the instances reported none that agrees; nothing was written`);
    }
  }

  const stateDir = options.stateDir === undefined ? undefined : stateDirFor(options.stateDir, file);
  const plan: InitPlan = {
    file,
    admin: options.admin,
    stateDir,
    cwd: process.cwd(),
    services,
    listeners,
    findings,
    commandLine: equivalentCommand(services, options, named, base),
  };
  const text = renderConfig(plan);
  checkConfig(text, file);
  writeConfig(file, text, force);

  const shown = shellQuote(options.output);
  const routes = services.map((s) => `${s.name} on ${formatListen(listeners.get(s.name)!)}`).join(', ');
  out.write(`\nWrote ${shown}: ${routes}.\n`);
  if (!options.service) out.write(`The same without questions:\n  ${plan.commandLine}\n`);
  out.write('\nNext:\n');
  out.write(`  understudy validate -c ${shown}\n`);
  out.write(`  understudy up -c ${shown}\n`);
  for (const s of services) {
    const fault = drillFault(s);
    const why = fault === 'kill' ? '' : '   # --fault kill needs every warm instance run by Understudy (--run or --image)';
    out.write(`  understudy drill ${s.name} --fault ${fault} -c ${shown}${why}\n`);
  }
}

/** --state-dir is relative to where init runs; the file's stateDir is relative to the file. */
function stateDirFor(given: string, file: string): string {
  const absolute = path.resolve(given);
  const relative = path.relative(path.dirname(file), absolute);
  return relative === '' ? '.' : relative.startsWith('../../..') || path.isAbsolute(relative) ? absolute : relative;
}

function probeTimeoutArg(value: string): number {
  const ms = parseDuration(value);
  if (ms === undefined || ms <= 0) throw new InvalidArgumentError('expected a duration such as 3s or 500ms');
  return ms;
}

/** `understudy init`: a commented understudy.yaml for servers the user already runs. */
export function initCommand(): Command {
  return new Command('init')
    .description('write a commented understudy.yaml for your model servers, after asking each what it serves')
    .addOption(new Option('-s, --service <spec>', 'a service: [NAME=]KIND:URL[,URL...]; the first URL is the primary, the others hot standbys, cold:URL a cold standby (repeatable)').argParser(collect(parseServiceSpec)))
    .addOption(new Option('--run <url=command>', 'Understudy starts the instance at URL with COMMAND (runtime process; no shell; leading NAME=value words are its environment) (repeatable)').argParser(collect((v) => parseRuntimeArg('--run', v))))
    .addOption(new Option('--image <url=image>', 'Understudy runs the instance at URL as a container: IMAGE [ARGS...] (runtime docker) (repeatable)').argParser(collect((v) => parseRuntimeArg('--image', v))))
    .addOption(new Option('--listen <[service=]address>', 'where clients reach the services: one port each, counting up from this one; SERVICE=HOST:PORT sets one service\'s (repeatable) (default: 127.0.0.1:8080)').argParser(collect(parseNamedListen)))
    .addOption(new Option('--admin <address>', 'the admin API and dashboard').argParser(parseListenArg).default(DEFAULT_ADMIN, '127.0.0.1:9901'))
    .option('-o, --output <file>', 'the file to write', 'understudy.yaml')
    .option('-f, --force', 'replace the output file if it exists')
    .option('--state-dir <dir>', 'the state directory (events, logs, admin token) (default: .understudy next to the file)')
    .option('--no-probe', 'do not ask the servers; write the usual health paths as guesses')
    .addOption(new Option('--probe-timeout <duration>', 'longest wait for each server\'s answer').argParser(probeTimeoutArg).default(DEFAULT_PROBE_TIMEOUT, '3s'))
    .option('-y, --yes', 'never ask: everything comes from the flags (an error says what is missing)')
    .option('--no-input', 'the same as --yes')
    .option('--interactive', 'ask for the servers even when stdin is not a terminal (answers piped in, one per line)')
    .addHelpText(
      'after',
      `
KIND says what the server speaks, and so which health path and version are tried:
  llm    OpenAI-compatible (vLLM, llama.cpp server, SGLang, TGI, Ollama's /v1):
         /health, then /v1/models; the model is the first id of GET /v1/models
  tts    text to speech: /health; the version from GET /version
  asr    speech recognition: /health; the version from GET /version
  image  image generation: /health; the version from GET /version
  http   any HTTP model server: /health, /healthz, /ready, /; GET /version

Each URL is asked with a GET (3s timeout); the first path that answers 2xx becomes its
ready probe, and a version all instances agree on is pinned, so a standby serving
another model never gets traffic. A server that does not answer gets a warning and the
usual path as a guess, marked in the file. The file is checked as \`validate\` checks
it before it is written; an existing file is kept unless --force.

With no --service and stdin a terminal, it asks for the servers instead.

Examples:
  # vLLM on two machines: the primary here, a hot standby on 10.0.0.2
  understudy init --service chat=llm:http://127.0.0.1:8000,http://10.0.0.2:8000

  # llama.cpp server on 8080, started by Understudy; the gateway takes the next port, 8081
  understudy init -s chat=llm:http://127.0.0.1:8080 --run http://127.0.0.1:8080="llama-server -m model.gguf --port 8080"

  # a cold standby in a container, started only when the others are down
  understudy init -s chat=llm:http://127.0.0.1:8000,cold:http://127.0.0.1:8002 \\
    --image http://127.0.0.1:8002="vllm/vllm-openai:latest --model MODEL --port 8002"

  # two services, in a script
  understudy init --yes -s chat=llm:http://127.0.0.1:8000 -s tts=tts:http://127.0.0.1:7101 \\
    --listen 127.0.0.1:9000 -o /etc/understudy/understudy.yaml

See docs/init.md.`,
    )
    .action(async (options: InitOptions) => {
      await runInit(options);
    });
}
