import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { ConfigView } from '../../src/controller/index.js';
import type { UnderstudyEvent } from '../../src/core/index.js';
import { etcdAvailable, startEtcd, type EtcdCluster } from '../support/etcd.js';
import { startModelServer, stopAll, type ModelServer } from '../support/fixture.js';
import { waitUntil } from '../support/wait.js';
import { CLI } from '../jobs/up-process.js';
import { externalInstance, makeCluster, type TestCluster } from './support.js';

/* The shared configuration: `understudy config apply` on a real etcd, taken up live by three `understudy up --node` processes. */

const run = promisify(execFile);

let etcd: EtcdCluster;
let primary: ModelServer;
let hot: ModelServer;
let cluster: TestCluster | undefined;

async function cli(c: TestCluster, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args, '-c', c.configFile, '--node', 'n1'], { timeout: 30_000 });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** The status a POST of `bytes` bytes gets through `node`'s gateway. */
async function post(c: TestCluster, node: string, bytes: number): Promise<number> {
  const response = await request(`${c.gateways.get(node)}/v1/infer`, { method: 'POST', body: 'x'.repeat(bytes), headers: { 'content-type': 'text/plain' } });
  await response.body.dump();
  return response.statusCode;
}

const configOf = async (c: TestCluster, node: string) => (await c.nodes.get(node)!.api<{ config: ConfigView }>('GET', '/v1/config')).config;

describe.skipIf(!etcdAvailable())('the shared configuration', () => {
  beforeAll(async () => {
    etcd = await startEtcd();
    [primary, hot] = await Promise.all([startModelServer({ name: 'primary' }), startModelServer({ name: 'hot' })]);
  }, 60_000);
  afterAll(async () => {
    await stopAll();
    await etcd?.stop();
  });
  afterEach(async () => {
    await cluster?.stop();
    cluster = undefined;
  });

  it('config apply stores a revision that every node takes up live; one that needs a restart is kept back with the reason; a rollback and a restart land on the newest', async () => {
    const c = (cluster = await makeCluster({ etcd: etcd.endpoints, instances: `${externalInstance('primary', 'primary', primary.url)}${externalInstance('hot', 'hot', hot.url)}` }));
    await Promise.all(['n1', 'n2', 'n3'].map((node) => c.start(node)));
    await c.leader();
    await waitUntil(async () => (await c.view('n1')).members.length === 3, { what: 'three live members' });
    for (const node of c.nodes.keys()) {
      expect(await configOf(c, node)).toMatchObject({ revision: null, stored: null, pending: null });
      expect(await post(c, node, 4096)).toBe(200);
    }
    const original = readFileSync(c.configFile, 'utf8');

    // A live change: a 1 KiB body limit on the service. Every node answers 413 for a larger body at once.
    const limited = original.replace('    route: { pathPrefix: / }', '    route: { pathPrefix: / }\n    limits: { body: 1KiB }');
    writeFileSync(c.configFile, limited);
    const applied = await cli(c, 'config', 'apply');
    expect(applied.code, applied.stderr).toBe(0);
    expect(applied.stdout).toContain('as revision 1');
    expect(applied.stdout).toContain('taken up live: services.infer.limits');
    for (const node of ['n1', 'n2', 'n3']) expect(applied.stdout).toMatch(new RegExp(`${node}\\s+runs revision 1`));
    for (const node of c.nodes.keys()) {
      expect(await configOf(c, node)).toMatchObject({ revision: 1, pending: null, stored: { revision: 1, by: 'n1' } });
      expect(await post(c, node, 4096)).toBe(413);
      expect(await post(c, node, 100)).toBe(200);
    }

    // A change only a restart takes up (the jobs' defaults): stored, and every node keeps revision 1 and says why.
    writeFileSync(c.configFile, limited.replace('concurrency: 4', 'concurrency: 6'));
    const kept = await cli(c, 'config', 'apply');
    expect(kept.code, kept.stderr).toBe(0);
    expect(kept.stdout).toContain('needs a restart of each node to take up: jobs');
    for (const node of ['n1', 'n2', 'n3']) expect(kept.stdout).toMatch(new RegExp(`${node}\\s+keeps revision 1: it changes what only a restart of this node takes up: jobs`));
    for (const node of c.nodes.keys()) {
      expect(await configOf(c, node)).toMatchObject({ revision: 1, stored: { revision: 2 }, pending: { revision: 2, restart: ['jobs'] } });
      expect(await post(c, node, 4096)).toBe(413);
      const { events } = await c.nodes.get(node)!.api<{ events: UnderstudyEvent[] }>('GET', '/v1/events?type=config-refused');
      expect(events.map((e) => e.type === 'config-refused' && e.revision)).toEqual([2]);
    }

    // Refused before anything is stored: a mistake (named with its line), and an apply against a revision that moved on.
    writeFileSync(c.configFile, limited.replace('limits: { body: 1KiB }', 'limits: { body: 1KiB, bogus: 1 }'));
    const wrong = await c.nodes.get('n2')!.api('POST', '/v1/config', { text: readFileSync(c.configFile, 'utf8') }).then(() => 'stored', (e: Error) => e.message);
    expect(wrong).toMatch(/400.*INVALID_CONFIG.*services\.infer\.limits\.bogus.*unknown field/);
    writeFileSync(c.configFile, limited);
    const stale = await cli(c, 'config', 'apply', '--if-revision', '1');
    expect(stale.code).toBe(1);
    expect(stale.stderr).toContain('at revision 2, not 1: nothing was stored');
    expect((await cli(c, 'config', 'history')).stdout.trim().split('\n')).toHaveLength(2);

    // A rollback to revision 1 stores it again as revision 3: every node runs it (nothing changes for them) and nothing is pending.
    const back = await cli(c, 'config', 'rollback', '--to', '1');
    expect(back.code, back.stderr).toBe(0);
    expect(back.stdout).toContain('stored revision 1 as revision 3');
    for (const node of c.nodes.keys()) expect(await configOf(c, node)).toMatchObject({ revision: 3, pending: null });
    expect((await cli(c, 'config', 'show', '--revision', '1')).stdout).toBe(limited);
    const history = (await cli(c, 'config', 'history')).stdout;
    expect(history).toMatch(/^\s+3 .* \(rollback to 1\)$/m);

    // A node started again starts on the newest revision, even one the others kept back.
    writeFileSync(c.configFile, limited.replace('concurrency: 4', 'concurrency: 6'));
    expect((await cli(c, 'config', 'apply', '--no-wait')).stdout).toContain('as revision 4');
    await waitUntil(async () => (await configOf(c, 'n2')).pending?.revision === 4, { what: 'n2 to keep revision 3 back from 4' });
    writeFileSync(c.configFile, original); // the node's own file says otherwise: the shared revision wins
    await c.kill('n3');
    await c.start('n3');
    expect(await configOf(c, 'n3')).toMatchObject({ revision: 4, pending: null });
    expect(await post(c, 'n3', 4096)).toBe(413);
    const status = (await cli(c, 'config', 'status')).stdout;
    expect(status).toContain('newest: revision 4');
    expect(status).toMatch(/n3\s+revision 4\n/);
    expect(status).toMatch(/n2\s+revision 3 {2}\(kept; revision 4: .*jobs\)/);
  }, 120_000);

  it('a configuration without its cluster: section is refused, and nothing is stored', async () => {
    const c = (cluster = await makeCluster({ etcd: etcd.endpoints, nodes: ['n1'], instances: externalInstance('primary', 'primary', primary.url) }));
    const up = await c.start('n1');
    await c.leader();
    const text = readFileSync(c.configFile, 'utf8').replace(/cluster:[\s\S]*?services:/, 'services:');
    const refused = await up.api('POST', '/v1/config', { text }).then(() => 'stored', (e: Error) => e.message);
    expect(refused).toMatch(/400.*needs its cluster: section/);
    expect(await configOf(c, 'n1')).toMatchObject({ revision: null, stored: null });
  }, 60_000);
});
