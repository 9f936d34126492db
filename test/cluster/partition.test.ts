import { type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { ClusterView } from '../../src/cluster/index.js';
import type { UnderstudyEvent } from '../../src/core/index.js';
import { MODEL_SERVER_PATH, waitForMessage } from '../support/fixture.js';
import { cannotMakeNamespaces, deleteNamespace, execIn, findCommand, inNamespace, ip, kill, removeLeftovers, waitForUp } from '../support/netns.js';
import { captureTail } from '../support/process.js';
import { waitUntil } from '../support/wait.js';

/*
 * A node cut off from the cluster by a link going down, as on a real network.
 *
 * Each run builds its own network: us-pb-ID holds a bridge (10.78.0.100/24) and a
 * one-member etcd listening on it; us-p1-ID, us-p2-ID and us-p3-ID are the three
 * machines, each with its eth0 on the bridge (10.78.0.1-3), a model server on
 * 127.0.0.1:7001, and `understudy up --node nN` (gateway 127.0.0.1:8080, admin API
 * 0.0.0.0:9901). The test reaches each node from inside its own namespace (curl on
 * its loopback), so it can still ask a node that is cut off. The cut is the bridge
 * side of that node's veth set down. Nothing leaves these namespaces.
 *
 * Needs root, ip (iproute2), etcd, curl and a built dist/ (npm run build).
 */

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CLI = path.join(ROOT, 'dist/cli/main.js');
const NODES = ['n1', 'n2', 'n3'] as const;
type NodeName = (typeof NODES)[number];
const ETCD_ADDRESS = '10.78.0.100';
const TTL_S = 2;
const ETCD = findCommand('etcd');
const CURL = findCommand('curl');

function cannotRun(): string | undefined {
  const namespaces = cannotMakeNamespaces();
  if (namespaces) return namespaces;
  if (!ETCD) return 'etcd is not installed (scripts/cluster-parts.sh installs it)';
  if (!CURL) return 'curl is not installed';
  if (!existsSync(CLI)) return 'dist/cli/main.js is missing: run npm run build';
  return undefined;
}

const skipReason = cannotRun();
if (skipReason) console.warn(`test/cluster/partition.test.ts skipped: ${skipReason}`);

interface Node {
  name: NodeName;
  ns: string;
  /** The bridge side of its veth: set down to cut the node off. */
  port: string;
  dir: string;
  procs: ChildProcess[];
  output: Map<string, () => string>;
}

interface Site {
  id: string;
  dir: string;
  bridge: string;
  namespaces: string[];
  nodes: Record<NodeName, Node>;
  procs: ChildProcess[];
}

const sites = new Set<Site>();

async function makeSite(): Promise<Site> {
  const id = `${process.pid}-${randomBytes(3).toString('hex')}`;
  const dir = mkdtempSync(path.join(tmpdir(), 'understudy-partition-'));
  const node = (name: NodeName, i: number): Node => ({ name, ns: `us-p${i + 1}-${id}`, port: `v-${name}`, dir: path.join(dir, name), procs: [], output: new Map() });
  const site: Site = { id, dir, bridge: `us-pb-${id}`, namespaces: [], nodes: { n1: node('n1', 0), n2: node('n2', 1), n3: node('n3', 2) }, procs: [] };
  sites.add(site);
  for (const ns of [site.bridge, ...NODES.map((n) => site.nodes[n].ns)]) {
    await ip('netns', 'add', ns);
    site.namespaces.push(ns);
    await ip('-n', ns, 'link', 'set', 'lo', 'up');
  }
  await ip('-n', site.bridge, 'link', 'add', 'br0', 'type', 'bridge');
  await ip('-n', site.bridge, 'addr', 'add', `${ETCD_ADDRESS}/24`, 'dev', 'br0');
  await ip('-n', site.bridge, 'link', 'set', 'br0', 'up');
  for (const [i, name] of NODES.entries()) {
    const n = site.nodes[name];
    // Made inside the bridge's namespace, so two runs at once never clash on a name.
    await ip('-n', site.bridge, 'link', 'add', n.port, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', n.ns);
    await ip('-n', site.bridge, 'link', 'set', n.port, 'master', 'br0', 'up');
    await ip('-n', n.ns, 'addr', 'add', `10.78.0.${i + 1}/24`, 'dev', 'eth0');
    await ip('-n', n.ns, 'link', 'set', 'eth0', 'up');
    mkdirSync(n.dir, { recursive: true });
  }
  writeFileSync(path.join(dir, 'understudy.yaml'), config(dir));
  return site;
}

function config(dir: string): string {
  const nodes = NODES.map((name, i) => `    ${name}: { url: "http://10.78.0.${i + 1}:9901", stateDir: ${path.join(dir, name)} }`).join('\n');
  return `stateDir: ${dir}
log: { level: warn }
gateway: { listen: "127.0.0.1:8080" }
admin: { listen: "0.0.0.0:9901" }
cluster:
  etcd: { endpoints: ["http://${ETCD_ADDRESS}:2379"], timeout: 500ms }
  ttl: ${TTL_S}s
  nodes:
${nodes}
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

async function startEtcd(site: Site): Promise<void> {
  const data = path.join(site.dir, 'etcd');
  const proc = inNamespace(site.bridge, ETCD!, [
    ...['--name', 'm1', '--data-dir', data],
    ...['--listen-client-urls', `http://${ETCD_ADDRESS}:2379`, '--advertise-client-urls', `http://${ETCD_ADDRESS}:2379`],
    ...['--listen-peer-urls', 'http://127.0.0.1:2380', '--initial-advertise-peer-urls', 'http://127.0.0.1:2380'],
    ...['--initial-cluster', 'm1=http://127.0.0.1:2380', '--initial-cluster-state', 'new'],
    ...['--heartbeat-interval', '50', '--election-timeout', '500', '--logger', 'zap', '--log-level', 'error'],
  ]);
  site.procs.push(proc);
  const output = captureTail([proc.stdout, proc.stderr]);
  await waitUntil(async () => (await execIn(site.bridge, CURL!, ['-s', '-m', '1', `http://${ETCD_ADDRESS}:2379/health`]).catch(() => '')).includes('"true"'), {
    timeoutMs: 15_000,
    intervalMs: 100,
    what: `etcd in ${site.bridge} to be healthy`,
  }).catch((error: Error) => {
    throw new Error(`${error.message}\n${output()}`);
  });
}

async function startNode(site: Site, node: Node): Promise<void> {
  const model = inNamespace(node.ns, process.execPath, [MODEL_SERVER_PATH, '--port', '7001', '--name', node.name, '--latency', '5']);
  node.procs.push(model);
  const modelOutput = captureTail([model.stdout, model.stderr]);
  node.output.set('model server', modelOutput);
  await waitForMessage(model, 'ready', 10_000, modelOutput);
  const up = inNamespace(node.ns, process.execPath, [CLI, 'up', '-c', path.join(site.dir, 'understudy.yaml'), '--node', node.name]);
  node.procs.push(up);
  const output = captureTail([up.stdout, up.stderr], 20_000);
  node.output.set('understudy', output);
  await waitForUp(up, node.name, output);
}

/** The admin API of `node`, asked from inside its own namespace (so a node cut off still answers). */
async function api<T>(node: Node, method: 'GET' | 'POST', route: string, body?: unknown): Promise<{ status: number; body: T }> {
  const token = readFileSync(path.join(node.dir, 'admin.token'), 'utf8').trim();
  const args = ['-s', '-m', '2', '-X', method, '-H', `authorization: Bearer ${token}`, '-H', 'content-type: application/json', '-w', '\n%{http_code}'];
  if (body !== undefined) args.push('--data', JSON.stringify(body));
  const out = await execIn(node.ns, CURL!, [...args, `http://127.0.0.1:9901${route}`]);
  const cut = out.lastIndexOf('\n');
  return { status: Number(out.slice(cut + 1)), body: JSON.parse(out.slice(0, cut)) as T };
}

const view = async (node: Node) => (await api<{ cluster: ClusterView }>(node, 'GET', '/v1/cluster')).body.cluster;

/** The status of one request through the node's own gateway. */
async function infer(node: Node): Promise<number> {
  return Number(await execIn(node.ns, CURL!, ['-s', '-m', '2', '-o', '/dev/null', '-w', '%{http_code}', 'http://127.0.0.1:8080/v1/infer']));
}

async function eventsOf(node: Node): Promise<UnderstudyEvent[]> {
  return (await api<{ events: UnderstudyEvent[] }>(node, 'GET', '/v1/events?limit=1000')).body.events;
}

/** When each node acted as leader, by its own leader-changed events: [from, to) with to Infinity while it still acts. */
function actingSpans(events: UnderstudyEvent[]): [number, number][] {
  const spans: [number, number][] = [];
  let since: number | undefined;
  for (const event of events) {
    if (event.type !== 'leader-changed') continue;
    if (event.self && since === undefined) since = event.time;
    if (!event.self && since !== undefined) {
      spans.push([since, event.time]);
      since = undefined;
    }
  }
  if (since !== undefined) spans.push([since, Infinity]);
  return spans;
}

async function teardown(site: Site): Promise<void> {
  for (const node of Object.values(site.nodes)) for (const proc of node.procs) kill(proc.pid);
  for (const proc of site.procs) kill(proc.pid);
  for (const ns of site.namespaces) await deleteNamespace(ns);
  rmSync(site.dir, { recursive: true, force: true });
  sites.delete(site);
}

describe.skipIf(skipReason !== undefined)('a node cut off by its link going down', () => {
  let site: Site | undefined;
  beforeAll(() => removeLeftovers(['pb', 'p1', 'p2', 'p3']));
  afterEach(async () => {
    if (site) await teardown(site);
    site = undefined;
  });
  afterAll(async () => {
    for (const s of [...sites]) await teardown(s);
  });

  it('loses leadership within the TTL while still serving its clients, the others elect a new leader, and it rejoins as a follower; never two acting leaders', async () => {
    const s = (site = await makeSite());
    await startEtcd(s);
    for (const name of NODES) await startNode(s, s.nodes[name]);
    const all = NODES.map((name) => s.nodes[name]);

    let leader: Node | undefined;
    await waitUntil(
      async () => {
        const views = await Promise.all(all.map(view));
        const acting = views.filter((v) => v.acting);
        leader = acting.length === 1 ? s.nodes[acting[0]!.node as NodeName] : undefined;
        return leader !== undefined && views.every((v) => v.leader === leader!.name && v.etcd === 'ok') && views[0]!.members?.length === 3;
      },
      { timeoutMs: 20_000, intervalMs: 100, what: 'one leader seen by all three nodes' },
    );
    const cut = leader!;
    const others = all.filter((n) => n !== cut);
    const epochBefore = (await view(cut)).epoch!;
    for (const node of all) expect(await infer(node)).toBe(200);

    const cutAt = Date.now();
    await ip('-n', s.bridge, 'link', 'set', cut.port, 'down');

    // The cut-off leader stops acting on its own deadline (it cannot renew), within the TTL of its last renewal.
    await waitUntil(async () => !(await view(cut)).acting, { timeoutMs: 10_000, intervalMs: 50, what: `${cut.name} to stop acting once cut off` });
    const stoppedWithin = Date.now() - cutAt;
    expect(stoppedWithin).toBeLessThan(TTL_S * 1000 + 1000);

    // The others elect one of them.
    let next: Node | undefined;
    await waitUntil(
      async () => {
        const views = await Promise.all(others.map(view));
        const acting = views.filter((v) => v.acting);
        next = acting.length === 1 ? s.nodes[acting[0]!.node as NodeName] : undefined;
        return next !== undefined;
      },
      { timeoutMs: 15_000, intervalMs: 50, what: 'a new leader among the nodes still connected' },
    );
    expect((await view(next!)).epoch).toBeGreaterThan(epochBefore);

    // Cut off, it still serves through its own gateway, and refuses a leader's action with the reason.
    expect(await infer(cut)).toBe(200);
    const refused = await api<{ error: { code: string; message: string } }>(cut, 'POST', '/v1/services/infer/switchover', {});
    expect(refused.status).toBe(409);
    expect(refused.body.error.code).toBe('NOT_LEADER');
    await waitUntil(async () => (await view(cut)).etcd !== 'ok', { timeoutMs: 10_000, intervalMs: 100, what: `${cut.name} to say etcd is unreachable` });

    // The link comes back: it rejoins as a follower of the new leader.
    await ip('-n', s.bridge, 'link', 'set', cut.port, 'up');
    await waitUntil(
      async () => {
        const v = await view(cut);
        return v.etcd === 'ok' && v.leader === next!.name && !v.acting;
      },
      { timeoutMs: 15_000, intervalMs: 100, what: `${cut.name} to follow ${next!.name} once its link is back` },
    );
    for (const node of all) expect(await infer(node)).toBe(200);

    // Never two acting leaders: the spans each node acted in, by its own events, do not overlap.
    const spans = await Promise.all(all.map(async (node) => ({ node: node.name, spans: actingSpans(await eventsOf(node)) })));
    const flat = spans.flatMap(({ node, spans: list }) => list.map(([from, to]) => ({ node, from, to }))).sort((a, b) => a.from - b.from);
    for (let i = 1; i < flat.length; i++) {
      expect(flat[i]!.from, `${flat[i]!.node} began acting before ${flat[i - 1]!.node} stopped`).toBeGreaterThanOrEqual(flat[i - 1]!.to);
    }
    const cutSpans = spans.find((x) => x.node === cut.name)!.spans;
    expect(cutSpans.length, `${cut.name} led before the cut`).toBeGreaterThan(0);
    expect(spans.find((x) => x.node === next!.name)!.spans.at(-1)![1], `${next!.name} still leads`).toBe(Infinity);
    expect(cutSpans.every(([from]) => from < cutAt), `${cut.name} acted again after it was cut off`).toBe(true);
    const cutEvents = await eventsOf(cut);
    const lost = cutEvents.findIndex((e) => e.type === 'coordination-lost' && e.time >= cutAt);
    expect(lost).toBeGreaterThanOrEqual(0);
    expect(cutEvents.slice(lost).some((e) => e.type === 'coordination-restored')).toBe(true);
  }, 120_000);
});
