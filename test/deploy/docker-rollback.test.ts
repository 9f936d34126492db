import { afterAll, afterEach, expect, it } from 'vitest';
import type { UnderstudyEvent } from '../../src/core/index.js';
import { buildModelServerImage, describeWithDocker, dockerInstance, dockerMissing, removeContainers, removeImages, uniqueName } from '../support/docker.js';
import { closeAllGateways, startGateway } from '../support/gateway.js';
import { freePorts } from '../support/ports.js';
import { load, versionOf } from './support.js';

const missing = await dockerMissing();
const service = uniqueName('story');
const repository = `understudy-test/${service}`;

afterEach(closeAllGateways);
afterAll(async () => {
  if (missing) return;
  await removeContainers(`understudy-${service}`);
  await removeImages([`${repository}:1`, `${repository}:2`]);
});

describeWithDocker(missing, 'the upgrade story in containers', () => {
  it('rolls back version 2, which fails after a few requests, to version 1 by itself; clients see no failure', async () => {
    await buildModelServerImage(`${repository}:1`, { version: '1' });
    await buildModelServerImage(`${repository}:2`, { version: '2', args: ['--fail-after', '5'] });
    const ports = await freePorts(2);
    const instance = (name: string, tier: string, port: number) =>
      dockerInstance(name, tier, port, `${repository}:\${version}`, 'stopGrace: 2s, memory: 256MiB');
    const gateway = await startGateway(`stateDir: STATE
gateway: { listen: "127.0.0.1:0" }
admin: { listen: "127.0.0.1:0" }
services:
  ${service}:
    route: { pathPrefix: / }
    version: { expect: "1", probe: { interval: 1s } }
    passive: { failures: 3 }
    deploy: { watch: 60s }
    instances:${instance('primary', 'primary', ports[0]!)}${instance('hot', 'hot', ports[1]!)}
`);
    await gateway.event((e) => e.type === 'active-changed' && e.to === 'primary', 60_000, 'the primary serving');

    const rolledBack = gateway.event((e: UnderstudyEvent) => e.type === 'rollback-finished', 90_000, 'the rollback');
    const traffic = load(gateway, rolledBack);
    await gateway.app.deploys.deploy(service, '2');
    const finished = await rolledBack;
    const seen = await traffic;

    expect(finished).toMatchObject({ from: '2', to: '1', ok: true });
    expect(seen.byVersion.get('2') ?? 0).toBeGreaterThan(0);
    expect(seen.failed).toEqual([]);
    expect(await versionOf(ports[0]!)).toBe('1');
    expect(await versionOf(ports[1]!)).toBe('1');
    expect(gateway.app.releases.get(service)).toMatchObject({ current: '1', knownGood: ['1'] });
    // Generous: the goal is under 60 s; bench/ measures it.
    expect((finished as { durationMs: number }).durationMs).toBeLessThan(60_000);
  });
});
