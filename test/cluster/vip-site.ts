import { execFile, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { MODEL_SERVER_PATH, waitForMessage } from '../support/fixture.js';
import { captureTail, hasExited, waitForExit } from '../support/process.js';
import { cannotMakeNamespaces, deleteNamespace, findCommand, inNamespace, ip, IP, kill, waitForUp } from '../support/netns.js';
import { waitUntil } from '../support/wait.js';

/*
 * The network and processes of the virtual-IP test and benchmark: keepalived moving one virtual IP between two real Understudy nodes, with the
 * config in examples/cluster/ (the very file, a few values swapped: see keepalivedConf).
 *
 * Each run builds its own network: namespaces us-n1-ID and us-n2-ID (a node each:
 * a model server on 127.0.0.1:7001, Understudy with its gateway on 0.0.0.0:8080 and
 * its admin API on 127.0.0.1:9901, keepalived), us-cl-ID (a client) and us-br-ID
 * (a bridge joining their eth0 veths), on 10.77.0.0/24 with the VIP 10.77.0.100.
 * Nothing leaves these namespaces. The client sends 50 requests a second, each on
 * a new connection, to the VIP and writes one JSON line per answer; the test kills
 * the holder and reads how long clients went without an answer.
 *
 * Needs root, ip (iproute2), keepalived, curl and a built dist/ (npm run build).
 * UNDERSTUDY_VIP_ADVERT_INT=0.05 runs it with another advert_int.
 */

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CLI = path.join(ROOT, 'dist/cli/main.js');
const EXAMPLE = path.join(ROOT, 'examples/cluster');
export const VIP = '10.77.0.100';
const NODES = ['n1', 'n2'] as const;
export type NodeName = (typeof NODES)[number];
const ADDRESS: Record<NodeName | 'cl', string> = { n1: '10.77.0.1', n2: '10.77.0.2', cl: '10.77.0.10' };
export const RATE = 50;
const REQUEST_TIMEOUT_MS = 1000;
export const TAKEOVER_LIMIT_MS = 2000;

const KEEPALIVED = findCommand('keepalived');

/** Why this machine cannot run the test, or undefined when it can. */
function cannotRun(): string | undefined {
  const namespaces = cannotMakeNamespaces();
  if (namespaces) return namespaces;
  if (!KEEPALIVED) return 'keepalived is not installed (scripts/cluster-parts.sh installs it)';
  if (!findCommand('curl')) return 'curl is not installed (check-understudy.sh uses it)';
  if (!existsSync(CLI)) return 'dist/cli/main.js is missing: run npm run build';
  return undefined;
}

export const skipReason = cannotRun();

/** The example keepalived.conf for this network: addresses, script paths and the script user swapped, the third node left out. */
function keepalivedConf(dir: string): string {
  const example = readFileSync(path.join(EXAMPLE, 'keepalived.conf'), 'utf8');
  const swaps: [RegExp, string][] = [
    [/\/etc\/keepalived\/understudy\//g, `${dir}/`],
    // No user is added to the system for a test: the scripts run as root here.
    [/^(\s*)script_user keepalived_script$/m, '$1script_user root'],
    [/\b10\.0\.0\./g, '10.77.0.'],
    [/^.*@\^?n3\b.*\n/gm, ''],
  ];
  const advertInt = process.env.UNDERSTUDY_VIP_ADVERT_INT;
  if (advertInt) swaps.push([/^(\s*)advert_int \S+$/m, `$1advert_int ${advertInt}`]);
  let conf = example;
  for (const [pattern, replacement] of swaps) {
    if (!pattern.test(conf)) throw new Error(`examples/cluster/keepalived.conf no longer has ${pattern}: update keepalivedConf in the test`);
    pattern.lastIndex = 0;
    conf = conf.replace(pattern, replacement);
  }
  return conf;
}

function understudyConf(stateDir: string): string {
  return `stateDir: ${stateDir}
log: { level: warn }
gateway: { listen: "0.0.0.0:8080" }
admin: { listen: "127.0.0.1:9901" }
services:
  infer:
    route: { pathPrefix: / }
    instances:
      local:
        tier: primary
        url: http://127.0.0.1:7001
        probes:
          ready: { http: { path: /health }, interval: 200ms, fall: 2 }
`;
}

/* The client, run inside us-cl: RATE requests a second, each on its own connection, one JSON line per answer; SIGTERM stops sending. */
const CLIENT = `
import http from 'node:http';
const [url, rate, timeoutMs, maxMs] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4]), Number(process.argv[5])];
const start = Date.now();
let seq = 0, inFlight = 0, stopping = false;
const finish = () => { if (stopping && inFlight === 0) process.exit(0); };
process.on('SIGTERM', () => { stopping = true; finish(); });
setTimeout(() => { stopping = true; finish(); }, maxMs).unref();
function send() {
  if (stopping) return;
  const n = seq++;
  setTimeout(send, Math.max(0, start + (n + 1) * (1000 / rate) - Date.now()));
  const sentAt = Date.now();
  inFlight++;
  let reported = false;
  const report = (fields) => {
    if (reported) return;
    reported = true;
    inFlight--;
    process.stdout.write(JSON.stringify({ seq: n, sentAt, endAt: Date.now(), ...fields }) + '\\n');
    finish();
  };
  const req = http.request(url, { agent: false, signal: AbortSignal.timeout(timeoutMs) }, (res) => {
    res.resume();
    res.on('end', () => report({ ok: res.statusCode === 200, status: res.statusCode, servedBy: res.headers['x-served-by'] }));
    res.on('error', (error) => report({ ok: false, error: error.code ?? error.name }));
  });
  req.on('error', (error) => report({ ok: false, error: error.code ?? error.name }));
  req.end();
}
send();
`;

export interface Result {
  seq: number;
  sentAt: number;
  endAt: number;
  ok: boolean;
  status?: number;
  servedBy?: string;
  error?: string;
}

export interface Client {
  results: Result[];
  stop(): Promise<Result[]>;
}

export interface Node {
  name: NodeName;
  ns: string;
  dir: string;
  model?: ChildProcess;
  understudy?: ChildProcess;
  keepalived?: ChildProcess;
  vrrpPid?: number;
  output: Map<string, () => string>;
}

export interface Site {
  id: string;
  dir: string;
  namespaces: string[];
  nodes: Record<NodeName, Node>;
  client: string;
}

export const sites = new Set<Site>();
export const clients = new Set<ChildProcess>();

export async function makeSite(): Promise<Site> {
  const id = `${process.pid}-${randomBytes(3).toString('hex')}`;
  const dir = mkdtempSync(path.join(tmpdir(), 'understudy-vip-'));
  const site: Site = {
    id,
    dir,
    namespaces: [],
    nodes: {
      n1: { name: 'n1', ns: `us-n1-${id}`, dir: path.join(dir, 'n1'), output: new Map() },
      n2: { name: 'n2', ns: `us-n2-${id}`, dir: path.join(dir, 'n2'), output: new Map() },
    },
    client: `us-cl-${id}`,
  };
  sites.add(site);
  for (const name of ['check-understudy.sh', 'notify.sh']) copyFileSync(path.join(EXAMPLE, name), path.join(dir, name));
  writeFileSync(path.join(dir, 'keepalived.conf'), keepalivedConf(dir));
  writeFileSync(path.join(dir, 'client.mjs'), CLIENT);

  const bridge = `us-br-${id}`;
  for (const ns of [bridge, site.nodes.n1.ns, site.nodes.n2.ns, site.client]) {
    await ip('netns', 'add', ns);
    site.namespaces.push(ns);
    await ip('-n', ns, 'link', 'set', 'lo', 'up');
  }
  await ip('-n', bridge, 'link', 'add', 'br0', 'type', 'bridge');
  await ip('-n', bridge, 'link', 'set', 'br0', 'up');
  const members: [string, string, string][] = [
    ['p-n1', site.nodes.n1.ns, ADDRESS.n1],
    ['p-n2', site.nodes.n2.ns, ADDRESS.n2],
    ['p-cl', site.client, ADDRESS.cl],
  ];
  for (const [port, ns, address] of members) {
    // Made inside the bridge's namespace, so two runs at once never clash on a name.
    await ip('-n', bridge, 'link', 'add', port, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
    await ip('-n', bridge, 'link', 'set', port, 'master', 'br0', 'up');
    await ip('-n', ns, 'addr', 'add', `${address}/24`, 'dev', 'eth0');
    await ip('-n', ns, 'link', 'set', 'eth0', 'up');
  }
  for (const node of Object.values(site.nodes)) mkdirSync(path.join(node.dir, 'state'), { recursive: true });
  return site;
}

async function startModel(node: Node): Promise<void> {
  const model = inNamespace(node.ns, process.execPath, [MODEL_SERVER_PATH, '--port', '7001', '--name', node.name, '--latency', '10']);
  node.model = model;
  const output = captureTail([model.stdout, model.stderr]);
  node.output.set('model server', output);
  await waitForMessage(model, 'ready', 10_000, output);
}

async function startUnderstudy(node: Node): Promise<void> {
  const config = path.join(node.dir, 'understudy.yaml');
  writeFileSync(config, understudyConf(path.join(node.dir, 'state')));
  const up = inNamespace(node.ns, process.execPath, [CLI, 'up', '-c', config]);
  node.understudy = up;
  const output = captureTail([up.stdout, up.stderr]);
  node.output.set('understudy', output);
  await waitForUp(up, node.name, output);
  // The check keepalived runs, run here the same way: it passes once the service has an instance.
  await waitUntil(
    async () => {
      await run(IP!, ['netns', 'exec', node.ns, path.join(EXAMPLE, 'check-understudy.sh')], { timeout: 2000 });
      return true;
    },
    { timeoutMs: 10_000, intervalMs: 50, what: `${node.name}'s check-understudy.sh to pass` },
  );
}

async function startKeepalived(site: Site, node: Node): Promise<void> {
  const file = (name: string) => path.join(node.dir, name);
  for (const name of ['keepalived.pid', 'vrrp.pid']) rmSync(file(name), { force: true });
  const keepalived = inNamespace(
    node.ns,
    KEEPALIVED!,
    // Foreground, VRRP only, log to the console not syslog, pid files in the temp dir; -i picks this node's @n lines.
    ['-n', '-P', '-l', '-D', '-G', '-i', node.name, '-f', path.join(site.dir, 'keepalived.conf'), '-p', file('keepalived.pid'), '-r', file('vrrp.pid'), '-c', file('checkers.pid'), '-b', file('bfd.pid')],
    { ...process.env, UNDERSTUDY_VIP_LOG: file('vip.log') },
  );
  node.keepalived = keepalived;
  node.output.set('keepalived', captureTail([keepalived.stdout, keepalived.stderr], 20_000));
  await waitUntil(() => existsSync(file('vrrp.pid')) && readFileSync(file('vrrp.pid'), 'utf8').trim() !== '', {
    timeoutMs: 5000,
    intervalMs: 20,
    what: `${node.name}'s keepalived VRRP process`,
  });
  node.vrrpPid = Number(readFileSync(file('vrrp.pid'), 'utf8').trim());
}

export async function startNode(site: Site, name: NodeName, { model = true } = {}): Promise<void> {
  const node = site.nodes[name];
  if (model) await startModel(node);
  await startUnderstudy(node);
  await startKeepalived(site, node);
}

/** The lines notify.sh wrote for this node: "TIME HOST INSTANCE understudy STATE priority=N". */
export function transitions(node: Node): string[] {
  const file = path.join(node.dir, 'vip.log');
  return existsSync(file) ? readFileSync(file, 'utf8').trim().split('\n').filter(Boolean) : [];
}

export async function holds(node: Node): Promise<boolean> {
  return (await ip('-n', node.ns, '-o', '-4', 'addr', 'show', 'dev', 'eth0')).includes(` ${VIP}/`);
}

export async function waitForHolder(site: Site, name: NodeName, timeoutMs = 10_000): Promise<void> {
  await waitUntil(() => holds(site.nodes[name]), { timeoutMs, intervalMs: 20, what: `${name} to hold ${VIP}` }).catch((error: Error) => {
    throw new Error(`${error.message}\n${describeSite(site)}`);
  });
}

/** Waits until the node's keepalived has entered BACKUP `count` times: it is ready to take over. */
export async function waitForBackup(site: Site, name: NodeName, count = 1): Promise<void> {
  const node = site.nodes[name];
  await waitUntil(() => transitions(node).filter((line) => / BACKUP /.test(line)).length >= count, {
    timeoutMs: 10_000,
    intervalMs: 20,
    what: `${name}'s keepalived to enter BACKUP`,
  }).catch((error: Error) => {
    throw new Error(`${error.message}\n${describeSite(site)}`);
  });
}

function describeSite(site: Site): string {
  return Object.values(site.nodes)
    .flatMap((node) => [
      `--- ${node.name} transitions:\n${transitions(node).join('\n')}`,
      ...[...node.output].map(([what, output]) => `--- ${node.name} ${what}:\n${output().slice(-3000)}`),
    ])
    .join('\n');
}

export function startClient(site: Site): Client {
  const proc = inNamespace(site.client, process.execPath, [path.join(site.dir, 'client.mjs'), `http://${VIP}:8080/v1/infer`, String(RATE), String(REQUEST_TIMEOUT_MS), '20000']);
  clients.add(proc);
  const results: Result[] = [];
  const errors = captureTail([proc.stderr]);
  let buffer = '';
  proc.stdout!.setEncoding('utf8');
  proc.stdout!.on('data', (chunk: string) => {
    buffer += chunk;
    const lines = buffer.split('\n');
    buffer = lines.pop() ?? '';
    for (const line of lines) if (line !== '') results.push(JSON.parse(line) as Result);
  });
  return {
    results,
    async stop() {
      kill(proc.pid, 'SIGTERM');
      if (!(await waitForExit(proc, REQUEST_TIMEOUT_MS + 3000))) {
        kill(proc.pid);
        throw new Error(`the client did not stop:\n${errors()}`);
      }
      clients.delete(proc);
      return results.sort((a, b) => a.seq - b.seq);
    },
  };
}

export async function answered(client: Client, by: NodeName, count: number): Promise<void> {
  await waitUntil(() => client.results.filter((r) => r.ok && r.servedBy === by).length >= count, {
    timeoutMs: 10_000,
    intervalMs: 20,
    what: `${count} answers from ${by} through ${VIP}`,
  });
}

export interface Failover {
  takeoverMs: number;
  failed: Result[];
  inFlightAtKill: number;
  sentInGap: number;
  recoveredAt: number;
  summary: string;
}

/** What the client saw around killAt: the first answer from n2 ends the gap. */
export function analyse(label: string, results: Result[], killAt: number, to: NodeName): Failover {
  const rel = (t: number | undefined) => (t === undefined ? 'none' : `+${t - killAt} ms`);
  const failed = results.filter((r) => !r.ok);
  const recovered = results.filter((r) => r.ok && r.servedBy === to && r.endAt >= killAt).sort((a, b) => a.endAt - b.endAt)[0];
  const recoveredAt = recovered?.endAt ?? Number.POSITIVE_INFINITY;
  const inFlightAtKill = results.filter((r) => r.sentAt < killAt && r.endAt >= killAt).length;
  const sentInGap = results.filter((r) => r.sentAt >= killAt && r.sentAt < recoveredAt).length;
  const firstFailure = Math.min(...failed.map((r) => r.endAt));
  const lastFailure = Math.max(...failed.map((r) => r.endAt));
  const errors = [...new Set(failed.map((r) => r.error ?? `HTTP ${r.status}`))].join(', ');
  const summary =
    `${label}: VIP answered again ${rel(recovered?.endAt)} after the kill (from ${to}); ` +
    `${failed.length} of ${results.length} requests failed (${errors || 'none'}): ${inFlightAtKill} in flight at the kill, ${sentInGap} sent in the gap; ` +
    `first failure ${failed.length ? rel(firstFailure) : 'none'}, last failure ${failed.length ? rel(lastFailure) : 'none'}`;
  return { takeoverMs: recoveredAt - killAt, failed, inFlightAtKill, sentInGap, recoveredAt, summary };
}

export async function destroySite(site: Site): Promise<void> {
  const pids: ChildProcess[] = [];
  for (const node of Object.values(site.nodes)) {
    kill(node.vrrpPid);
    for (const proc of [node.keepalived, node.understudy, node.model]) {
      if (proc && !hasExited(proc)) {
        kill(proc.pid);
        pids.push(proc);
      }
    }
  }
  await Promise.all(pids.map((proc) => waitForExit(proc, 5000)));
  // Whatever else runs in them (a notify or check script keepalived started) goes with the namespace.
  for (const ns of site.namespaces) await deleteNamespace(ns);
  rmSync(site.dir, { recursive: true, force: true });
  sites.delete(site);
}

/** The node's machine dies at once: keepalived (both processes), Understudy and the model server SIGKILLed. */
export function killAll(node: Node, { model }: { model: boolean }): void {
  kill(node.vrrpPid);
  kill(node.keepalived?.pid);
  kill(node.understudy?.pid);
  if (model) kill(node.model?.pid);
}


/** Both nodes up, n1 holding the VIP, n2 in BACKUP, and a client answered by n1. */
export async function readySite(): Promise<{ site: Site; client: Client }> {
  const site = await makeSite();
  await startNode(site, 'n1');
  await waitForHolder(site, 'n1');
  await startNode(site, 'n2');
  await waitForBackup(site, 'n2');
  const client = startClient(site);
  await answered(client, 'n1', 20);
  return { site, client };
}
