import { afterAll, afterEach, expect, it } from 'vitest';
import { buildModelServerImage, describeWithDocker, dockerInstance, dockerMissing, inspectContainer, removeContainers, removeImages, uniqueName } from '../support/docker.js';
import { closeAllGateways, startGateway } from '../support/gateway.js';
import { freePorts } from '../support/ports.js';

const missing = await dockerMissing();
const service = uniqueName('drill');
const image = `understudy-test/${service}:1`;

afterEach(closeAllGateways);
afterAll(async () => {
  if (missing) return;
  await removeContainers(`understudy-${service}`);
  await removeImages([image]);
});

describeWithDocker(missing, 'drills on containers', () => {
  it('kills and hangs the model server inside a container, and a cold standby container takes over and is stopped again', async () => {
    await buildModelServerImage(image, { version: '1' });
    const ports = await freePorts(3);
    const instance = (name: string, tier: string, port: number) => dockerInstance(name, tier, port, image, 'stopGrace: 1s, restartDelay: 100ms');
    const gateway = await startGateway(`stateDir: STATE
gateway: { listen: "127.0.0.1:0" }
admin: { listen: "127.0.0.1:0" }
services:
  ${service}:
    route: { pathPrefix: / }
    drill: { request: { method: POST, path: /v1/infer, body: {} }, hold: 1s, jobItems: 4 }
    instances:${instance('primary', 'primary', ports[0]!)}${instance('hot', 'hot', ports[1]!)}${instance('cold', 'cold', ports[2]!)}
`);
    const controller = gateway.app.service(service)!;
    await controller.waitFor((s) => s.active === 'primary' && s.instances.hot!.state === 'ready', 60_000);

    for (const fault of ['kill', 'hang', 'cold-start'] as const) {
      const report = await gateway.app.drills.run({ service, fault });
      expect(report.verdict, `${fault}: ${report.requests.failures.join(" ")} ${report.notes.join(" ")}`).toMatch(/^clients saw no failure/);
      expect(report.after).toEqual(report.before);
    }
    // The cold standby's container is back to created-but-stopped, ready for the next time.
    expect((await inspectContainer(`understudy-${service}.cold`))?.State.Running).toBe(false);
  }, 180_000);
});
