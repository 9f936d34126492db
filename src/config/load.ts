import { readFileSync } from 'node:fs';
import path from 'node:path';
import { isMap, isScalar, LineCounter, parseDocument, type Document } from 'yaml';
import type { z } from 'zod';
import { ConfigError, formatIssue, type ConfigIssue } from './errors.js';
import { faultsAllowed } from './schema.js';
import {
  configSchema,
  type ParsedCluster,
  type ParsedConfig,
  type ParsedInstance,
  type ParsedService,
  type ReadyProbeConfig,
  type StartupProbeConfig,
} from './schema.js';

export type Tier = ParsedInstance['tier'];

export interface InstanceConfig extends Omit<ParsedInstance, 'probes'> {
  /** `service/instance`, unique across the file. */
  id: string;
  name: string;
  service: string;
  probes: { startup: StartupProbeConfig; ready: ReadyProbeConfig };
}

export interface ServiceConfig extends Omit<ParsedService, 'instances'> {
  name: string;
  instances: InstanceConfig[];
}

/** A cluster as this node sees it: its own name is known and in `nodes`. */
export interface ClusterConfig extends Omit<ParsedCluster, 'node' | 'nodes'> {
  node: string;
  nodes: Record<string, { url?: string | undefined }>;
}

/** The compiled configuration: defaults applied, units in ms and bytes, paths absolute. */
export interface Config extends Omit<ParsedConfig, 'services' | 'backup' | 'docker' | 'cluster'> {
  file: string;
  services: ServiceConfig[];
  /**
   * Several nodes coordinated through etcd. This node's overrides (listeners, stateDir)
   * are applied, and instances of other nodes have an `external` runtime here: this
   * node only probes and routes to them.
   */
  cluster?: ClusterConfig | undefined;
  /** `dir` is absolute: backup.dir, or stateDir/snapshots. */
  backup: ParsedConfig['backup'] & { dir: string };
  docker: { socket: string };
}

/** The ready probe used when an instance names none: GET /health, as vLLM, TGI and most model servers answer. */
const DEFAULT_READY: ReadyProbeConfig = {
  http: { path: '/health' },
  timeout: 1000,
  interval: 2000,
  suspectInterval: 500,
  rise: 2,
  fall: 3,
};

export function loadConfigFile(file: string): Config {
  const absolute = path.resolve(file);
  let text: string;
  try {
    text = readFileSync(absolute, 'utf8');
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'file not found' : (error as Error).message;
    throw new ConfigError(`${absolute}: ${reason}`, [], { cause: error });
  }
  return parseConfig(text, absolute);
}

/**
 * Parses and checks a configuration; every mistake found is reported at once, with file,
 * line and field. `node` names this node of a cluster over the file's own `cluster.node`
 * (a configuration shared through etcd is read by every node).
 */
export function parseConfig(text: string, file: string, options: { node?: string } = {}): Config {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: true, uniqueKeys: true });
  const locate = locator(doc, lines, file);

  if (doc.errors.length > 0) {
    fail(
      file,
      doc.errors.map((error) => {
        const pos = error.linePos?.[0];
        const message = error.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
        return { file, line: pos?.line, column: pos?.col, field: '', message };
      }),
    );
  }
  if (!isMap(doc.contents)) fail(file, [locate([], 'expected a mapping with at least `services:`')]);

  const raw = doc.toJS() as { jobs?: { inlineLimit?: unknown } } | null;
  const parsed = configSchema.safeParse(raw, { reportInput: true });
  if (!parsed.success) fail(file, parsed.error.issues.map((issue) => fromZod(issue, locate)));

  if (options.node !== undefined && parsed.data.cluster) parsed.data.cluster.node = options.node;
  const config = compile(parsed.data, file);
  const problems = [...crossCheck(config), ...checkCluster(parsed.data, config)].map(({ at, message }) => locate(at, message));
  if (problems.length > 0) fail(file, problems);
  const node = asNode(parsed.data, config);
  // A job's results outlive its leader only in PostgreSQL: there, bodies up to 64 MiB are kept in it by default.
  if (node.cluster?.postgres && raw?.jobs?.inlineLimit === undefined) node.jobs = { ...node.jobs, inlineLimit: CLUSTER_INLINE_LIMIT };
  return node;
}

/** jobs.inlineLimit's default with a PostgreSQL job store: a result on one node's disk is lost to the next leader. */
const CLUSTER_INLINE_LIMIT = 64 * 1024 * 1024;

function fail(file: string, issues: ConfigIssue[]): never {
  const plural = issues.length === 1 ? 'mistake' : 'mistakes';
  throw new ConfigError(
    `${file}: ${issues.length} ${plural} in the configuration:\n${issues.map((i) => `  ${formatIssue(i)}`).join('\n')}`,
    issues,
  );
}

type Locate = (at: readonly PropertyKey[], message: string) => ConfigIssue;

/** Points a field path at its line; a missing field points at its nearest parent. */
function locator(doc: Document, lines: LineCounter, file: string): Locate {
  return (at, message) => {
    const keys = at.map(String);
    for (let depth = keys.length; depth >= 0; depth--) {
      const node = doc.getIn(keys.slice(0, depth), true);
      const range = isScalar(node) || isMap(node) ? node.range : (node as { range?: [number, number, number] } | undefined)?.range;
      if (range) {
        const pos = lines.linePos(range[0]);
        return { file, line: pos.line, column: pos.col, field: keys.join('.'), message };
      }
    }
    return { file, line: undefined, column: undefined, field: keys.join('.'), message };
  };
}

function fromZod(issue: z.core.$ZodIssue, locate: Locate): ConfigIssue {
  if (issue.code === 'unrecognized_keys') {
    const [first] = issue.keys;
    return locate([...issue.path, first!], `unknown field${issue.keys.length > 1 ? `s ${issue.keys.join(', ')}` : ''}`);
  }
  if (issue.code === 'invalid_type' && issue.input === undefined) return locate(issue.path, 'is required');
  let message = issue.message.replace(/^Invalid input: /, '');
  // YAML reads 1.0 as a number; versions and names are text.
  if (issue.code === 'invalid_type' && issue.expected === 'string' && typeof issue.input === 'number') {
    message += " (write it in quotes)";
  }
  return locate(issue.path, message);
}

function compile(parsed: ParsedConfig, file: string): Config {
  const dir = path.dirname(file);
  const services = Object.entries(parsed.services).map(([name, service]): ServiceConfig => {
    const { instances, ...rest } = service;
    const backup = rest.backup && { ...rest.backup, paths: rest.backup.paths.map((p) => path.resolve(dir, p)) };
    return {
      ...rest,
      backup,
      name,
      instances: Object.entries(instances).map(([instanceName, raw]) => compileInstance(name, instanceName, raw, dir)),
    };
  });
  const stateDir = path.resolve(dir, parsed.stateDir);
  const dockerHost = process.env.DOCKER_HOST?.startsWith('unix://') ? process.env.DOCKER_HOST.slice('unix://'.length) : undefined;
  const { cluster: _cluster, ...rest } = parsed;
  return {
    ...rest,
    file,
    stateDir,
    backup: { ...parsed.backup, dir: path.resolve(stateDir, parsed.backup.dir ?? 'snapshots') },
    docker: { socket: parsed.docker.socket ?? dockerHost ?? '/var/run/docker.sock' },
    services,
  };
}

function compileInstance(service: string, name: string, raw: ParsedInstance, dir: string): InstanceConfig {
  const ready = raw.probes.ready ?? DEFAULT_READY;
  const { interval: _i, suspectInterval: _s, rise: _r, fall: _f, ...check } = ready;
  const startup = raw.probes.startup ?? { ...check, interval: 500, budget: 300_000 };
  let runtime = raw.runtime;
  if (runtime.type === 'process') {
    const cwd = path.resolve(dir, runtime.cwd ?? '.');
    runtime = { ...runtime, cwd, requires: runtime.requires.map((p) => path.resolve(cwd, p)) };
  } else if (runtime.type === 'docker') {
    runtime = {
      ...runtime,
      requires: runtime.requires.map((p) => path.resolve(dir, p)),
      volumes: runtime.volumes.map((v) => ({ ...v, host: path.resolve(dir, v.host) })),
    };
  }
  return { ...raw, runtime, id: `${service}/${name}`, name, service, probes: { startup, ready } };
}

interface Problem {
  at: PropertyKey[];
  message: string;
}

/** This node's name in a cluster: `cluster.node`, else $UNDERSTUDY_NODE. */
function nodeOf(cluster: ParsedCluster): string | undefined {
  return cluster.node ?? (process.env.UNDERSTUDY_NODE || undefined);
}

function checkCluster(parsed: ParsedConfig, config: Config): Problem[] {
  const problems: Problem[] = [];
  const cluster = parsed.cluster;
  if (!cluster) {
    for (const service of config.services) {
      for (const instance of service.instances) {
        if (instance.node !== undefined) {
          problems.push({ at: ['services', service.name, 'instances', instance.name, 'node'], message: 'names a node, but there is no cluster: section' });
        }
      }
    }
    return problems;
  }
  const nodes = Object.keys(cluster.nodes);
  if (nodes.length === 0) problems.push({ at: ['cluster', 'nodes'], message: 'name the cluster\'s nodes' });
  const node = nodeOf(cluster);
  if (node === undefined) {
    problems.push({ at: ['cluster', 'node'], message: 'which node is this? set cluster.node, $UNDERSTUDY_NODE or `understudy up --node NAME`' });
  } else if (!nodes.includes(node)) {
    problems.push({ at: ['cluster', 'node'], message: `${node} is not one of cluster.nodes (${nodes.join(', ')})` });
  }
  for (const service of config.services) {
    for (const instance of service.instances) {
      const at = ['services', service.name, 'instances', instance.name, 'node'];
      if (instance.node === undefined) {
        if (instance.runtime.type !== 'external') problems.push({ at, message: `which node runs it? set node to one of ${nodes.join(', ')}` });
      } else if (!nodes.includes(instance.node)) {
        problems.push({ at, message: `${instance.node} is not one of cluster.nodes (${nodes.join(', ')})` });
      }
    }
  }
  return problems;
}

/** The config as this node runs it: its own listeners and stateDir, other nodes' instances only probed. */
function asNode(parsed: ParsedConfig, config: Config): Config {
  if (!parsed.cluster) return config;
  const node = nodeOf(parsed.cluster)!;
  const own = parsed.cluster.nodes[node]!;
  const stateDir = own.stateDir === undefined ? config.stateDir : path.resolve(path.dirname(config.file), own.stateDir);
  const services = config.services.map((service) => ({
    ...service,
    instances: service.instances.map((instance) =>
      instance.node === undefined || instance.node === node ? instance : { ...instance, runtime: { type: 'external' as const } },
    ),
  }));
  const nodes = Object.fromEntries(Object.entries(parsed.cluster.nodes).map(([name, n]) => [name, { url: n.url }]));
  return {
    ...config,
    stateDir,
    backup: parsed.backup.dir === undefined && own.stateDir !== undefined ? { ...config.backup, dir: path.join(stateDir, 'snapshots') } : config.backup,
    gateway: own.gateway ?? config.gateway,
    admin: own.admin ? { ...config.admin, listen: own.admin.listen } : config.admin,
    cluster: { ...parsed.cluster, node, nodes },
    services,
  };
}

/** Rules that relate fields to each other, checked after each field is valid on its own. */
function crossCheck(config: Config): Problem[] {
  const problems: Problem[] = [];
  const listeners = new Map<string, string>();
  const claim = (address: { host: string; port: number }, owner: string, at: PropertyKey[]) => {
    if (address.port === 0) return; // any free port: never a clash
    const key = `${address.host}:${address.port}`;
    const other = listeners.get(key);
    if (other) problems.push({ at, message: `${key} is already used by ${other}` });
    else listeners.set(key, owner);
  };
  claim(config.admin.listen, 'admin.listen', ['admin', 'listen']);
  if (config.services.some((s) => s.route.pathPrefix !== undefined || s.route.host !== undefined)) {
    claim(config.gateway.listen, 'gateway.listen', ['gateway', 'listen']);
  }

  const routes = new Map<string, string>();
  if (config.services.length === 0) problems.push({ at: ['services'], message: 'declare at least one service' });
  for (const service of config.services) {
    const at = (...rest: PropertyKey[]) => ['services', service.name, ...rest];
    const { route } = service;
    if (route.listen) claim(route.listen, `services.${service.name}.route.listen`, at('route', 'listen'));
    if (route.pathPrefix !== undefined || route.host !== undefined) {
      const key = `${route.host ?? '*'} ${route.pathPrefix ?? '/'}`;
      const other = routes.get(key);
      if (other) problems.push({ at: at('route'), message: `the same host and path prefix as service ${other}` });
      else routes.set(key, service.name);
    }
    if (route.stripPrefix && route.pathPrefix === undefined) {
      problems.push({ at: at('route', 'stripPrefix'), message: 'needs route.pathPrefix' });
    }
    if (service.version) {
      const { json, header, regex } = service.version.probe;
      if ([json, header, regex].filter((v) => v !== undefined).length > 1) {
        problems.push({ at: at('version', 'probe'), message: 'choose one of json, header or regex' });
      }
    }

    if (service.instances.length === 0) problems.push({ at: at('instances'), message: 'declare at least one instance' });
    const primaries = service.instances.filter((i) => i.tier === 'primary');
    for (const extra of primaries.slice(1)) {
      problems.push({
        at: at('instances', extra.name, 'tier'),
        message: `a service has one primary; ${primaries[0]!.name} is already primary (use tier: hot)`,
      });
    }
    for (const instance of service.instances) {
      if (instance.tier === 'cold' && instance.runtime.type === 'external') {
        problems.push({
          at: at('instances', instance.name, 'tier'),
          message: 'a cold standby must be started by Understudy: give it runtime.type: process or docker',
        });
      }
      if (!service.version && JSON.stringify(instance.runtime).includes('${version}')) {
        problems.push({
          at: at('instances', instance.name, 'runtime'),
          message: 'uses ${version} but the service pins no version: set version.expect',
        });
      }
      if (instance.runtime.type === 'docker' && instance.runtime.network === 'host' && instance.runtime.ports.length > 0) {
        problems.push({
          at: at('instances', instance.name, 'runtime', 'ports'),
          message: 'with network: host the container uses this machine\'s ports directly; remove ports',
        });
      }
    }
    if (service.backup?.images && !service.instances.some((i) => i.runtime.type === 'docker')) {
      problems.push({ at: at('backup', 'images'), message: 'the service has no docker instance whose image could be kept' });
    }
    if (service.backup?.images && config.backup.registry === undefined) {
      problems.push({ at: at('backup', 'images'), message: 'image snapshots are pushed to a registry: set backup.registry' });
    }
    const { drill } = service;
    if (drill.schedule !== undefined && drill.request === undefined && service.deploy.smoke === undefined) {
      problems.push({ at: at('drill', 'schedule'), message: 'a drill sends a probe request: set drill.request (or deploy.smoke)' });
    }
    const allowed = faultsAllowed(service.instances);
    for (const fault of drill.faults ?? []) {
      if (!allowed.includes(fault)) {
        const why = fault === 'cold-start' ? 'needs a cold standby and every warm instance run by Understudy' : 'needs every warm instance run by Understudy (not external)';
        problems.push({ at: at('drill', 'faults'), message: `${fault} ${why}` });
      }
    }
    if (drill.delay !== undefined && drill.delay >= service.timeouts.firstByte) {
      problems.push({ at: at('drill', 'delay'), message: `must be below timeouts.firstByte (${service.timeouts.firstByte}ms): a longer hold is a timeout, not a slow answer` });
    }
  }
  return problems;
}
