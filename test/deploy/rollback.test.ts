import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { UnderstudyEvent } from '../../src/core/index.js';
import { closeAllGateways, startGateway } from '../support/gateway.js';
import { alertSink } from '../support/alerts.js';
import { freePorts } from '../support/ports.js';
import { load, versionOf, versionedInstance } from './support.js';

const dirs: string[] = [];
const sinks: { close(): Promise<void> }[] = [];
afterEach(async () => {
  await closeAllGateways();
  await Promise.all(sinks.splice(0).map((s) => s.close()));
});
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

/** Model directories, one per release, as a model server loads them: models/<version>/model.json. */
function releases(models: Record<string, { failAfter?: number; exitAfter?: number }>): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'understudy-releases-'));
  dirs.push(dir);
  for (const [version, extra] of Object.entries(models)) {
    mkdirSync(path.join(dir, 'models', version), { recursive: true });
    writeFileSync(path.join(dir, 'models', version, 'model.json'), JSON.stringify({ version, ...extra }));
  }
  return dir;
}

function config(dir: string, ports: number[], deploy: string, extra = '', alerts = ''): string {
  const instance = (name: string, tier: string, port: number) => versionedInstance(dir, name, tier, port);
  return `stateDir: STATE
gateway: { listen: "127.0.0.1:0" }
admin: { listen: "127.0.0.1:0" }${alerts ? `\nalerts: { webhooks: ["${alerts}"] }` : ''}
services:
  infer:
    route: { pathPrefix: / }
    version: { expect: "1", probe: { interval: 1s } }
    passive: { failures: 3 }
    deploy: ${deploy}${extra}
    instances:${instance('primary', 'primary', ports[0]!)}${instance('hot', 'hot', ports[1]!)}
`;
}

const is = (type: UnderstudyEvent['type']) => (e: UnderstudyEvent) => e.type === type;

describe('deploy with automatic rollback', () => {
  it('rolls back a version that starts failing in service, with no failed request a standby could answer', async () => {
    const dir = releases({ '1': {}, '2': { failAfter: 5 } });
    const ports = await freePorts(2);
    const sink = await alertSink();
    sinks.push(sink);
    const gateway = await startGateway(config(dir, ports, '{ watch: 60s, rollback: { minRequests: 10, errorRate: 0.2 } }', '', sink.url));
    await gateway.event((e) => e.type === 'active-changed' && e.to === 'primary', 20_000, 'the primary serving');

    const rolledBack = gateway.event(is('rollback-finished'), 60_000, 'the rollback');
    const traffic = load(gateway, rolledBack);
    const started = await gateway.app.deploys.deploy('infer', '2');
    expect(started).toMatchObject({ kind: 'deploy', from: '1', to: '2' });
    const finished = await rolledBack;
    const seen = await traffic;

    expect(finished).toMatchObject({ type: 'rollback-finished', from: '2', to: '1', ok: true });
    // The bad version did serve (the standby took traffic), then failed, then nothing of it was left.
    expect(seen.byVersion.get('2') ?? 0).toBeGreaterThan(0);
    expect(seen.failed).toEqual([]);
    expect([...gateway.app.service('infer')!.releases().values()]).toEqual(['1', '1']);
    expect(await versionOf(ports[0]!)).toBe('1');
    expect(await versionOf(ports[1]!)).toBe('1');
    const events = gateway.app.events.list({ service: 'infer' }).map((e) => e.type);
    expect(events).toContain('deploy-failed');
    const releasesNow = gateway.app.releases.get('infer')!;
    expect(releasesNow.current).toBe('1');
    expect(releasesNow.knownGood).toEqual(['1']);
    expect(releasesNow.history.map((r) => [r.kind, r.from, r.to, r.outcome])).toEqual([
      ['deploy', '1', '2', 'rolled-back'],
      ['rollback', '2', '1', 'done'],
    ]);
    // Behaviour, not a benchmark: generous against the 60 s goal (bench/ measures it).
    expect((finished as { durationMs: number }).durationMs).toBeLessThan(60_000);
    // A person hears of it: the failed deploy and the rollback each raise an alert, sent to the webhook.
    const rolledBackAlert = await sink.next((a) => a.kind === 'rollback-finished');
    expect(rolledBackAlert).toMatchObject({ service: 'infer', severity: 'warning' });
    expect(rolledBackAlert.title).toMatch(/rolled back from 2 to 1/);
    await sink.next((a) => a.kind === 'deploy-failed');
    expect(gateway.app.alerts.recent({ service: 'infer' }).map((a) => a.kind)).toEqual(expect.arrayContaining(['deploy-failed', 'rollback-finished']));
  });

  it('rolls a good version onto every instance after its watch window and marks it known-good', async () => {
    const dir = releases({ '1': {}, '2': {} });
    const ports = await freePorts(2);
    const gateway = await startGateway(config(dir, ports, '{ watch: 1s, smoke: { method: POST, path: /v1/infer, body: {}, contains: "\\"version\\":\\"2\\"" } }'));
    await gateway.event((e) => e.type === 'active-changed' && e.to === 'primary', 20_000, 'the primary serving');

    const finished = gateway.event(is('deploy-finished'), 60_000, 'the deploy');
    const traffic = load(gateway, finished);
    await gateway.app.deploys.deploy('infer', '2');
    await finished;
    const seen = await traffic;

    expect(seen.failed).toEqual([]);
    expect(await versionOf(ports[0]!)).toBe('2');
    expect(await versionOf(ports[1]!)).toBe('2');
    const service = gateway.app.service('infer')!;
    expect(service.view().active).toBe('primary');
    expect(service.view().admittedVersions).toEqual(['2']);
    expect(gateway.app.releases.get('infer')).toMatchObject({ current: '2', knownGood: ['1', '2'] });
    const steps = gateway.app.events.list({ type: 'deploy-step' }).map((e) => (e.type === 'deploy-step' ? `${e.step} ${e.instance ?? ''}`.trim() : ''));
    // Standby first, checked before traffic; the old active last, after the window.
    expect(steps).toEqual(['backup', 'upgrade hot', 'smoke hot', 'switch hot', 'watch', 'upgrade primary', 'smoke primary', 'complete', 'known-good']);

    // Refusals change nothing.
    await expect(gateway.app.deploys.deploy('infer', '2')).rejects.toThrow('service infer already runs version 2');
    await expect(gateway.app.deploys.deploy('nope', '2')).rejects.toThrow('no service named nope');
  });

  it('rolls back a crash-looping version whose instance was quarantined', async () => {
    // Version 2 passes its checks, then its process exits 1.5 s after every start.
    const dir = releases({ '1': {}, '2': { exitAfter: 1500 } });
    const ports = await freePorts(2);
    const gateway = await startGateway(
      config(dir, ports, '{ watch: 60s, rollback: { downs: 5 } }', '\n    quarantine: { failures: 2, within: 5m }'),
    );
    await gateway.event((e) => e.type === 'active-changed' && e.to === 'primary', 20_000, 'the primary serving');
    const rolledBack = gateway.event(is('rollback-finished'), 60_000, 'the rollback');
    const traffic = load(gateway, rolledBack);
    await gateway.app.deploys.deploy('infer', '2');
    const finished = await rolledBack;
    const seen = await traffic;

    expect(finished).toMatchObject({ from: '2', to: '1', ok: true });
    const failed = gateway.app.events.list({ type: 'deploy-failed' });
    expect(failed[0]?.reason).toMatch(/hot on version 2 crash-looped and was quarantined/);
    expect(seen.failed).toEqual([]);
    expect(await versionOf(ports[1]!)).toBe('1');
    const hot = gateway.app.service('infer')!.machineState().instances.hot!;
    expect(hot).toMatchObject({ state: 'ready', maintenance: false, version: '1' });
  });

  it('lets a person roll back a deploy during its watch; nothing else begins while the deploy unwinds', async () => {
    const dir = releases({ '1': {}, '2': {} });
    const ports = await freePorts(2);
    const gateway = await startGateway(config(dir, ports, '{ watch: 10m }'));
    await gateway.event((e) => e.type === 'active-changed' && e.to === 'primary', 20_000, 'the primary serving');
    const watching = gateway.event((e) => e.type === 'deploy-step' && e.step === 'watch', 60_000, 'the watch');
    await gateway.app.deploys.deploy('infer', '2');
    await watching;

    const rollback = gateway.app.deploys.rollback('infer', 'a person saw a problem');
    await expect(gateway.app.deploys.deploy('infer', '3')).rejects.toThrow(/is running/);
    await expect(gateway.app.deploys.rollback('infer', 'twice')).rejects.toThrow(/already running/);
    expect(await rollback).toMatchObject({ kind: 'rollback', from: '2', to: '1' });
    await gateway.app.deploys.settled('infer');

    const failed = gateway.app.events.list({ type: 'deploy-failed' });
    expect(failed.map((e) => e.reason)).toEqual(['stopped by a rollback: a person saw a problem']);
    expect(gateway.app.events.list({ type: 'rollback-finished' })).toMatchObject([{ ok: true, to: '1' }]);
    expect(await versionOf(ports[1]!)).toBe('1');
    expect(gateway.app.releases.get('infer')!.history.map((r) => [r.kind, r.outcome])).toEqual([
      ['deploy', 'rolled-back'],
      ['rollback', 'done'],
    ]);
    const states = Object.values(gateway.app.service('infer')!.machineState().instances).map((i) => [i.name, i.state, i.maintenance]);
    expect(states).toEqual([
      ['primary', 'ready', false],
      ['hot', 'ready', false],
    ]);
  });

  it('leaves the service running when the version rolled back to fails its checks, and raises a critical alert', async () => {
    const dir = releases({ '1': {}, '2': {} });
    const ports = await freePorts(2);
    const sink = await alertSink();
    sinks.push(sink);
    const gateway = await startGateway(config(dir, ports, '{ watch: 500ms }', '', sink.url));
    await gateway.event((e) => e.type === 'active-changed' && e.to === 'primary', 20_000, 'the primary serving');
    await gateway.app.deploys.deploy('infer', '2');
    await gateway.event(is('deploy-finished'), 60_000, 'the deploy');

    // Version 1's model directory is gone and there is no snapshot of it: its instance cannot start.
    rmSync(path.join(dir, 'models', '1'), { recursive: true });
    const finished = gateway.event(is('rollback-finished'), 60_000, 'the rollback');
    const traffic = load(gateway, finished);
    await gateway.app.deploys.rollback('infer', 'a person asked', '1');
    const outcome = await finished;
    const seen = await traffic;

    expect(outcome).toMatchObject({ ok: false, from: '2', to: '1' });
    expect(outcome.reason).toMatch(/did not start at version 1.*the service stays on version 2/);
    expect(seen.failed).toEqual([]);
    expect(seen.byVersion.get('1') ?? 0).toBe(0);
    expect(await versionOf(ports[0]!)).toBe('2');
    expect(await versionOf(ports[1]!)).toBe('2');
    const service = gateway.app.service('infer')!;
    expect(service.view().admittedVersions).toEqual(['2']);
    expect(Object.values(service.machineState().instances).map((i) => i.state)).toEqual(['ready', 'ready']);
    expect(gateway.app.releases.get('infer')!.current).toBe('2');
    const alert = await sink.next((a) => a.kind === 'rollback-finished');
    expect(alert).toMatchObject({ severity: 'critical' });
  });

  it('refuses a version whose instance does not start, and leaves the service on the old one', async () => {
    const dir = releases({ '1': {} }); // no models/3: the new instance cannot load
    const ports = await freePorts(2);
    const gateway = await startGateway(config(dir, ports, '{ watch: 1s }'));
    await gateway.event((e) => e.type === 'active-changed' && e.to === 'primary', 20_000, 'the primary serving');
    const rolledBack = gateway.event(is('rollback-finished'), 60_000, 'the rollback');
    await gateway.app.deploys.deploy('infer', '3');
    const failed = await gateway.event(is('deploy-failed'), 60_000, 'the failed deploy');
    expect(failed.reason).toMatch(/hot did not start at version 3/);
    expect(await rolledBack).toMatchObject({ ok: true, to: '1' });
    expect(await versionOf(ports[0]!)).toBe('1');
    expect(await versionOf(ports[1]!)).toBe('1');
    expect(gateway.app.service('infer')!.view().active).toBe('primary');
  });
});
