import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../../src/config/index.js';

function mistakes(text: string): string[] {
  try {
    parseConfig(text, 'u.yaml');
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as ConfigError).issues.map((i) => `${i.field}: ${i.message}`);
  }
  throw new Error('expected the configuration to be refused');
}

const RUN = '{ type: process, command: [model-server] }';

function clustered(cluster: string, instances = `      a: { tier: primary, node: n1, url: "http://10.0.0.1:7001", runtime: ${RUN} }\n      b: { tier: hot, node: n2, url: "http://10.0.0.2:7001", runtime: ${RUN} }\n`): string {
  return `cluster:\n${cluster}services:\n  tts:\n    route: { pathPrefix: / }\n    instances:\n${instances}`;
}

const NODES = `  etcd: { endpoints: [http://10.0.0.1:2379] }\n  nodes:\n    n1: { url: http://10.0.0.1:9901 }\n    n2: { url: http://10.0.0.2:9901, admin: { listen: "127.0.0.1:9902" }, gateway: { listen: "127.0.0.1:8082" }, stateDir: n2-state }\n`;

afterEach(() => {
  delete process.env.UNDERSTUDY_NODE;
});

describe('cluster configuration', () => {
  it('keeps job results up to 64 MiB in PostgreSQL by default, so they outlive the leader that recorded them', () => {
    const pg = `  node: n1\n  postgres: { url: "postgres://u@db/understudy" }\n${NODES}`;
    expect(parseConfig(clustered(pg), '/etc/u.yaml').jobs.inlineLimit).toBe(64 * 1024 * 1024);
    expect(parseConfig(`jobs: { inlineLimit: 1MiB }\n${clustered(pg)}`, '/etc/u.yaml').jobs.inlineLimit).toBe(1024 * 1024);
    expect(parseConfig(clustered(`  node: n1\n${NODES}`), '/etc/u.yaml').jobs.inlineLimit).toBe(256 * 1024);
  });

  it('fills in the defaults, and on each node runs only its own instances (the others are probed as external)', () => {
    const one = parseConfig(clustered(`  node: n1\n${NODES}`), '/etc/understudy/u.yaml');
    expect(one.cluster).toMatchObject({ node: 'n1', ttl: 3000, etcd: { prefix: '/understudy/', timeout: 1000 } });
    expect(one.cluster!.postgres).toBeUndefined();
    expect(one.services[0]!.instances.map((i) => [i.name, i.runtime.type])).toEqual([['a', 'process'], ['b', 'external']]);
    expect(one.admin.listen).toEqual({ host: '127.0.0.1', port: 9901 });

    process.env.UNDERSTUDY_NODE = 'n2';
    const two = parseConfig(clustered(NODES), '/etc/understudy/u.yaml');
    expect(two.services[0]!.instances.map((i) => [i.name, i.runtime.type])).toEqual([['a', 'external'], ['b', 'process']]);
    // n2's own listeners and state directory.
    expect(two.admin.listen).toEqual({ host: '127.0.0.1', port: 9902 });
    expect(two.gateway.listen).toEqual({ host: '127.0.0.1', port: 8082 });
    expect(two.stateDir).toBe('/etc/understudy/n2-state');
    expect(two.backup.dir).toBe('/etc/understudy/n2-state/snapshots');
  });

  it('without cluster: nothing changes, and an instance may not name a node', () => {
    expect(parseConfig('services:\n  t:\n    route: { pathPrefix: / }\n    instances:\n      a: { tier: primary, url: "http://127.0.0.1:1" }\n', 'u.yaml').cluster).toBeUndefined();
    expect(mistakes('services:\n  t:\n    route: { pathPrefix: / }\n    instances:\n      a: { tier: primary, node: n1, url: "http://127.0.0.1:1" }\n')).toEqual([
      'services.t.instances.a.node: names a node, but there is no cluster: section',
    ]);
  });

  it('names every mistake: no node for this process, an unknown node, a supervised instance without one, a bad TTL and prefix', () => {
    expect(mistakes(clustered(NODES))).toEqual(['cluster.node: which node is this? set cluster.node, $UNDERSTUDY_NODE or `understudy up --node NAME`']);
    expect(mistakes(clustered(`  node: n9\n${NODES}`))).toEqual(['cluster.node: n9 is not one of cluster.nodes (n1, n2)']);
    expect(
      mistakes(clustered(`  node: n1\n${NODES}`, `      a: { tier: primary, url: "http://10.0.0.1:7001", runtime: ${RUN} }\n      b: { tier: hot, node: n7, url: "http://10.0.0.2:7001" }\n`)),
    ).toEqual(['services.tts.instances.a.node: which node runs it? set node to one of n1, n2', 'services.tts.instances.b.node: n7 is not one of cluster.nodes (n1, n2)']);
    expect(mistakes(clustered(`  node: n1\n  ttl: 1500ms\n${NODES.replace('endpoints: [http://10.0.0.1:2379]', 'endpoints: [http://10.0.0.1:2379], prefix: understudy')}`))).toEqual([
      'cluster.etcd.prefix: a key prefix like /understudy/ (starts and ends with /)',
      'cluster.ttl: must be whole seconds, at least 2s (an etcd lease)',
    ]);
  });
});
