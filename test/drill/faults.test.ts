import { execFileSync } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { MODEL_SERVER_PATH } from '../support/fixture.js';
import { closeAllGateways, startGateway } from '../support/gateway.js';
import { freePorts } from '../support/ports.js';

afterEach(closeAllGateways);

/** An instance run by Understudy; `wrapped` starts the model server from a shell that waits for it (as `sh run.sh` does). */
function instance(name: string, tier: string, port: number, options: { wrapped?: boolean; loadDelay?: string } = {}): string {
  const args = [MODEL_SERVER_PATH, '--port', String(port), '--name', name, '--latency', '5', '--load-delay', options.loadDelay ?? '0'];
  const command = options.wrapped
    ? `[sh, -c, ${JSON.stringify(`${process.execPath} ${args.join(' ')}; echo model server exited`)}]`
    : `[${process.execPath}, ${args.map((a) => JSON.stringify(a)).join(', ')}]`;
  return `
      ${name}:
        tier: ${tier}
        url: http://127.0.0.1:${port}
        runtime: { type: process, command: ${command}, stopGrace: 2s, restartDelay: 100ms }
        probes:
          startup: { http: { path: /health }, interval: 50ms, budget: 20s }
          ready: { http: { path: /health }, interval: 200ms, fall: 2 }`;
}

function config(drill: string, instances: string): string {
  return `stateDir: STATE
gateway: { listen: "127.0.0.1:0" }
admin: { listen: "127.0.0.1:0" }
services:
  infer:
    route: { pathPrefix: / }
    version: { expect: "1.0" }
    drill: { request: { method: POST, path: /v1/infer, body: {} }, jobItems: 4, ${drill} }
    instances:${instances}
`;
}

/** Understudy on `yaml`, once the primary serves and the hot standby is ready. */
async function started(yaml: string) {
  const gateway = await startGateway(yaml);
  const service = gateway.app.service('infer')!;
  await service.waitFor((s) => s.active === 'primary' && s.instances.hot!.state === 'ready', 20_000);
  return { gateway, service };
}

/** Processes whose command line names this port: the model server, and a wrapper shell if there is one. */
function processesOn(port: number): string[] {
  try {
    return execFileSync('pgrep', ['-f', '--', `--port ${port} `], { encoding: 'utf8' }).trim().split('\n').filter(Boolean);
  } catch {
    return []; // pgrep exits 1 when nothing matches
  }
}

describe('drill faults on real processes', () => {
  it('kills and stops the whole process group of an instance started through a wrapper, leaving no orphan', async () => {
    const [a, b] = await freePorts(2);
    const { gateway } = await started(config('hold: 1s', `${instance('primary', 'primary', a!, { wrapped: true })}${instance('hot', 'hot', b!)}`));
    expect(processesOn(a!)).toHaveLength(2); // sh and the model server

    const killed = await gateway.app.drills.run({ service: 'infer', fault: 'kill' });
    expect(killed.verdict).toMatch(/^clients saw no failure/);
    expect(killed).toMatchObject({ passed: true, after: killed.before });
    // The old model server went with its wrapper: only the restarted pair holds the port.
    expect(processesOn(a!)).toHaveLength(2);

    const hung = await gateway.app.drills.run({ service: 'infer', fault: 'hang' });
    expect(hung.verdict).toMatch(/^clients saw no failure/);
    expect(hung.detectedMs).not.toBeNull();
    expect(processesOn(a!)).toHaveLength(2);
  }, 90_000);

  it('refuses a deploy while a drill runs, and a drill while the service is failed over', async () => {
    const [a, b] = await freePorts(2);
    const { gateway, service } = await started(config('hold: 1s', `${instance('primary', 'primary', a!)}${instance('hot', 'hot', b!)}`));

    const drill = gateway.app.drills.begin({ service: 'infer', fault: 'error', instance: 'hot' });
    await expect(gateway.app.deploys.deploy('infer', '2.0')).rejects.toThrow(/a drill of infer is running/);
    await expect(gateway.app.deploys.rollback('infer', 'test', '0.9')).rejects.toThrow(/a drill of infer is running/);
    expect((await drill.done).passed).toBe(true);

    expect(service.dispatch({ type: 'switchover', to: 'hot' })).toBeUndefined();
    expect(() => gateway.app.drills.begin({ service: 'infer', fault: 'kill' })).toThrow(/pinned to hot/);
  }, 60_000);

  it('puts the service back even when the drill runs out of time, and says the drill failed', async () => {
    const [a, b, c] = await freePorts(3);
    // The cold standby takes 4 s to load; the drill allows 2 s.
    const { gateway, service } = await started(config('timeout: 2s, hold: 500ms', `${instance('primary', 'primary', a!)}${instance('hot', 'hot', b!)}${instance('cold', 'cold', c!, { loadDelay: '4000' })}`));
    expect(service.machineState().instances.cold!.state).toBe('stopped');

    const report = await gateway.app.drills.run({ service: 'infer', fault: 'cold-start' });
    expect(report.passed).toBe(false);
    // The deadline passes while the drill waits for the cold standby, or at its end, as the machine's load has it.
    expect(report.notes.some((note) => /did not (?:end|happen) within 2000ms/.test(note)), report.notes.join('; ')).toBe(true);
    expect(report.notes).toContain('the service was put back after the drill ended');
    // Back as before: the warm instances serve again, the cold standby is stopped and not held.
    expect(report.after).toEqual(report.before);
    expect(service.machineState().instances.cold).toMatchObject({ state: 'stopped', maintenance: false });
    expect(Object.values(service.machineState().instances).filter((i) => i.maintenance)).toEqual([]);
  }, 90_000);

  it('fails a drill whose probe traffic ran out before the service was back', async () => {
    const [a, b] = await freePorts(2);
    const { gateway } = await started(config('requests: 10, hold: 1500ms', `${instance('primary', 'primary', a!)}${instance('hot', 'hot', b!)}`));

    const report = await gateway.app.drills.run({ service: 'infer', fault: 'error' });
    expect(report.requests.sent).toBe(10);
    expect(report.passed).toBe(false);
    expect(report.verdict).toMatch(/the probe traffic ran out .* raise drill.requests/);
  }, 60_000);
});
