import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { ClusterView } from '../../src/cluster/index.js';
import { startUp, stopUp, type UpProcess } from '../jobs/up-process.js';
import { freePorts } from '../support/ports.js';
import { waitForExit } from '../support/process.js';
import { waitUntil } from '../support/wait.js';

/** Several `understudy up --node NAME` processes on one config, as a user runs a cluster on three machines. */
export interface TestCluster {
  dir: string;
  configFile: string;
  prefix: string;
  nodes: Map<string, UpProcess>;
  gateways: Map<string, string>;
  start(node: string): Promise<UpProcess>;
  kill(node: string): Promise<void>;
  view(node: string): Promise<ClusterView>;
  /** Waits until `node` (or, without it, any live node) says a node that leads and acts; returns that node. */
  leader(options?: { besides?: string; timeoutMs?: number }): Promise<string>;
  stop(): Promise<void>;
}

export interface ClusterSetup {
  etcd: string[];
  postgres?: { url: string };
  instances: string;
  nodes?: string[];
  ttl?: string;
  extra?: string;
}

export async function makeCluster(setup: ClusterSetup): Promise<TestCluster> {
  const names = setup.nodes ?? ['n1', 'n2', 'n3'];
  const dir = mkdtempSync(path.join(tmpdir(), 'understudy-cluster-'));
  const ports = await freePorts(names.length * 2);
  const prefix = `/understudy-${randomBytes(4).toString('hex')}/`;
  const schema = `c_${randomBytes(4).toString('hex')}`;
  const gateways = new Map<string, string>();
  const nodeLines = names.map((name, i) => {
    const admin = ports[2 * i]!;
    const gateway = ports[2 * i + 1]!;
    gateways.set(name, `http://127.0.0.1:${gateway}`);
    mkdirSync(path.join(dir, name), { recursive: true });
    return `    ${name}: { url: "http://127.0.0.1:${admin}", admin: { listen: "127.0.0.1:${admin}" }, gateway: { listen: "127.0.0.1:${gateway}" }, stateDir: ${path.join(dir, name)} }`;
  });
  const configFile = path.join(dir, 'understudy.yaml');
  writeFileSync(
    configFile,
    `stateDir: ${dir}
log: { level: warn }
jobs: { retryDelay: 100ms, concurrency: 4 }
${setup.extra ?? ''}
cluster:
  etcd: { endpoints: [${setup.etcd.join(', ')}], prefix: ${prefix}, timeout: 500ms }
  ttl: ${setup.ttl ?? '2s'}
${setup.postgres ? `  postgres: { url: "${setup.postgres.url}", schema: ${schema} }\n` : ''}  nodes:
${nodeLines.join('\n')}
services:
  infer:
    route: { pathPrefix: / }
    instances:${setup.instances}
`,
  );
  const nodes = new Map<string, UpProcess>();
  const cluster: TestCluster = {
    dir,
    configFile,
    prefix,
    nodes,
    gateways,
    async start(node) {
      const up = await startUp(configFile, path.join(dir, node), 30_000, ['--node', node]);
      nodes.set(node, up);
      return up;
    },
    async kill(node) {
      const up = nodes.get(node)!;
      up.proc.kill('SIGKILL');
      await waitForExit(up.proc, 5000);
      nodes.delete(node);
    },
    async view(node) {
      // A node paused with SIGSTOP never answers: give up after a second.
      let timer: NodeJS.Timeout | undefined;
      const slow = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${node} did not answer GET /v1/cluster within 1s`)), 1000);
      });
      try {
        return await Promise.race([nodes.get(node)!.api<{ cluster: ClusterView }>('GET', '/v1/cluster').then((r) => r.cluster), slow]);
      } finally {
        clearTimeout(timer);
      }
    },
    async leader({ besides, timeoutMs = 15_000 } = {}) {
      let found: string | undefined;
      await waitUntil(
        async () => {
          for (const node of nodes.keys()) {
            const view = await cluster.view(node).catch(() => undefined);
            if (view?.acting && view.node !== besides) {
              found = view.node;
              return true;
            }
          }
          return false;
        },
        { timeoutMs, intervalMs: 20, what: besides ? `a leader other than ${besides}` : 'a leader' },
      );
      return found!;
    },
    async stop() {
      await Promise.all([...nodes.values()].map((up) => stopUp(up)));
      nodes.clear();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return cluster;
}

/** An instance the test runs itself (a model server fixture), reached by URL from every node. */
export function externalInstance(name: string, tier: string, url: string): string {
  return `
      ${name}:
        tier: ${tier}
        url: ${url}
        probes:
          ready: { http: { path: /health }, interval: 200ms, fall: 2 }`;
}
