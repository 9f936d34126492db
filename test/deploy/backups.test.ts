import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { AdminServer } from '../../src/api/index.js';
import { ImageKeeper } from '../../src/backup/index.js';
import { buildModelServerImage, describeWithDocker, docker, DOCKER_SOCKET, dockerMissing, removeImages, uniqueName } from '../support/docker.js';
import { alertSink } from '../support/alerts.js';
import { closeAllGateways, startGateway } from '../support/gateway.js';
import { freePorts } from '../support/ports.js';
import { versionOf, versionedInstance } from './support.js';

const dirs: string[] = [];
afterEach(closeAllGateways);
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

describe('snapshots around deploys', () => {
  it('backs up before a deploy, keeps the new version as known-good, and restores missing files on a rollback', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'understudy-backups-'));
    dirs.push(dir);
    for (const version of ['1', '2']) {
      mkdirSync(path.join(dir, 'models', version), { recursive: true });
      writeFileSync(path.join(dir, 'models', version, 'model.json'), JSON.stringify({ version }));
      writeFileSync(path.join(dir, 'models', version, 'weights.bin'), Buffer.alloc(64 * 1024, Number(version)));
    }
    const ports = await freePorts(2);
    const instance = (name: string, tier: string, port: number) => versionedInstance(dir, name, tier, port);
    const gateway = await startGateway(`stateDir: STATE
gateway: { listen: "127.0.0.1:0" }
admin: { listen: "127.0.0.1:0" }
services:
  infer:
    route: { pathPrefix: / }
    version: { expect: "1" }
    deploy: { watch: 500ms }
    backup: { paths: ["${dir}/models/\${version}"] }
    instances:${instance('primary', 'primary', ports[0]!)}${instance('hot', 'hot', ports[1]!)}
`);
    await gateway.event((e) => e.type === 'active-changed' && e.to === 'primary', 20_000, 'the primary serving');
    await gateway.app.deploys.deploy('infer', '2');
    await gateway.event((e) => e.type === 'deploy-finished', 60_000, 'the deploy');

    const snapshots = await gateway.app.backups.store.list({ service: 'infer' });
    expect(snapshots.map((s) => !s.broken && [s.version, s.trigger, s.knownGood])).toEqual([
      ['2', 'known-good', true],
      ['1', 'deploy', false],
    ]);

    // Version 1's files are gone (a cleanup, a bad upgrade in place): the rollback puts them back from the snapshot.
    rmSync(path.join(dir, 'models', '1'), { recursive: true });
    await gateway.app.deploys.rollback('infer', 'test', '1');
    const finished = await gateway.event((e) => e.type === 'rollback-finished', 60_000, 'the rollback');
    expect(finished).toMatchObject({ ok: true, to: '1' });
    expect(gateway.app.events.list({ type: 'snapshot-restored' })).toHaveLength(1);
    expect(readdirSync(path.join(dir, 'models', '1')).sort()).toEqual(['model.json', 'weights.bin']);
    expect(await versionOf(ports[0]!)).toBe('1');
    expect(await versionOf(ports[1]!)).toBe('1');
    expect(readdirSync(path.join(dir, 'models')).filter((n) => n.includes('understudy'))).toEqual([]);
  });
});

describe('a backup that fails', () => {
  it('is a clear error and a critical alert, and leaves the running service and older snapshots as they were', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'understudy-backups-'));
    dirs.push(dir);
    mkdirSync(path.join(dir, 'models', '1'), { recursive: true });
    writeFileSync(path.join(dir, 'models', '1', 'model.json'), JSON.stringify({ version: '1' }));
    const ports = await freePorts(2);
    const sink = await alertSink();
    const instance = (name: string, tier: string, port: number) => versionedInstance(dir, name, tier, port);
    const gateway = await startGateway(`stateDir: STATE
gateway: { listen: "127.0.0.1:0" }
admin: { listen: "127.0.0.1:0" }
alerts: { webhooks: ["${sink.url}"] }
services:
  infer:
    route: { pathPrefix: / }
    version: { expect: "1" }
    backup: { paths: ["${dir}/models/\${version}", "${dir}/tokenizer.json"] }
    instances:${instance('primary', 'primary', ports[0]!)}${instance('hot', 'hot', ports[1]!)}
`);
    try {
      await gateway.event((e) => e.type === 'active-changed' && e.to === 'primary', 20_000, 'the primary serving');
      const before = await gateway.app.backups.store.list({ service: 'infer' });

      // tokenizer.json does not exist: the snapshot fails and says which file.
      await expect(gateway.app.backups.snapshot('infer', '1', 'manual')).rejects.toThrow(/tokenizer\.json/);
      const alert = await sink.next((a) => a.kind === 'snapshot-failed');
      expect(alert).toMatchObject({ service: 'infer', severity: 'critical' });
      expect(alert.detail).toMatch(/tokenizer\.json/);
      expect(await gateway.app.backups.store.list({ service: 'infer' })).toEqual(before);
      expect(gateway.app.service('infer')!.view()).toMatchObject({ active: 'primary' });
      expect(await versionOf(ports[0]!)).toBe('1');
    } finally {
      await sink.close();
    }
  });
});

describe('verifying snapshots through the admin API', () => {
  it('says when each snapshot was last found whole, and a damaged one is an event and a critical alert', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'understudy-backups-'));
    dirs.push(dir);
    mkdirSync(path.join(dir, 'models', '1'), { recursive: true });
    writeFileSync(path.join(dir, 'models', '1', 'model.json'), JSON.stringify({ version: '1' }));
    writeFileSync(path.join(dir, 'models', '1', 'weights.bin'), Buffer.alloc(32 * 1024, 7));
    const ports = await freePorts(2);
    const sink = await alertSink();
    const instance = (name: string, tier: string, port: number) => versionedInstance(dir, name, tier, port);
    const gateway = await startGateway(`stateDir: STATE
gateway: { listen: "127.0.0.1:0" }
admin: { listen: "127.0.0.1:0" }
alerts: { webhooks: ["${sink.url}"] }
services:
  infer:
    route: { pathPrefix: / }
    version: { expect: "1" }
    backup: { paths: ["${dir}/models/\${version}"] }
    instances:${instance('primary', 'primary', ports[0]!)}${instance('hot', 'hot', ports[1]!)}
`);
    const admin = new AdminServer(gateway.app, 'verify-test-token');
    const { port } = await admin.start();
    const call = async (method: string, route: string, body?: unknown) => {
      const response = await fetch(`http://127.0.0.1:${port}${route}`, {
        method,
        headers: { authorization: 'Bearer verify-test-token', 'content-type': 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      return { status: response.status, body: (await response.json()) as Record<string, unknown> };
    };
    type Listed = { id: string; verified: { at: number; ok: boolean; by: string } | null };
    try {
      await gateway.event((e) => e.type === 'active-changed' && e.to === 'primary', 20_000, 'the primary serving');
      const taken = await call('POST', '/v1/snapshots', { service: 'infer' });
      expect(taken.status).toBe(201);
      const id = (taken.body.snapshot as { id: string }).id;
      const listed = async () => ((await call('GET', '/v1/snapshots')).body.snapshots as Listed[]).find((s) => s.id === id)!;
      // Read back and hashed when taken.
      expect((await listed()).verified).toMatchObject({ ok: true, by: 'taken' });

      const whole = await call('POST', '/v1/snapshots/verify', {});
      expect(whole.body).toMatchObject({ ok: true });
      expect((await listed()).verified).toMatchObject({ ok: true, by: 'verify' });
      expect(gateway.app.events.list({ type: 'snapshots-verified' }).at(-1)).toMatchObject({ service: 'infer', checked: [id], damaged: [] });

      // One byte of the weights changes in the store (a failing disk).
      const { manifest } = await gateway.app.backups.store.get(id);
      const sha = manifest.entries.find((e) => e.path.endsWith('weights.bin'))!.sha256!;
      const blob = path.join(gateway.app.backups.store.dir, 'blobs', 'sha256', sha.slice(0, 2), sha);
      const content = readFileSync(blob);
      content[100] = content[100]! ^ 0xff;
      writeFileSync(blob, content);

      const damaged = await call('POST', '/v1/snapshots/verify', {});
      expect(damaged.body).toMatchObject({ ok: false });
      expect((await listed()).verified).toMatchObject({ ok: false, by: 'verify' });
      expect(gateway.app.events.list({ type: 'snapshots-verified' }).at(-1)).toMatchObject({ service: 'infer', checked: [id], damaged: [id] });
      const alert = await sink.next((a) => a.kind === 'snapshots-verified');
      expect(alert).toMatchObject({ service: 'infer', severity: 'critical' });
      expect(alert.title).toContain(id);
    } finally {
      await admin.close();
      await sink.close();
    }
  });
});

const missing = await dockerMissing();
const REGISTRY = process.env.UNDERSTUDY_REGISTRY ?? '127.0.0.1:5000';
const run = uniqueName('img');

describeWithDocker(missing, 'image snapshots', () => {
  afterAll(async () => {
    await removeImages([`understudy-test/${run}:1`, `understudy-test/${run}:2`, `understudy-test/${run}-restored:1`]);
    // The commit of a failed push stays local under its tag; it is this test's to remove.
    const references = [`127.0.0.1:1/understudy/${run}`, `${REGISTRY}/understudy/${run}`];
    for (const image of await docker.listImages({ filters: { reference: references } })) {
      await docker.getImage(image.Id).remove({ force: true }).catch(() => {});
    }
  });

  it('commits a container, pushes it, and after the local copies are removed pulls it back and serves', async () => {
    await buildModelServerImage(`understudy-test/${run}:1`, { version: '7' });
    const container = await docker.createContainer({ name: `understudy-${run}.a`, Image: `understudy-test/${run}:1` });
    const keeper = new ImageKeeper(DOCKER_SOCKET, REGISTRY);
    try {
      const entry = await keeper.keep(`understudy-${run}.a`, { service: run, instance: 'a', version: '7', time: Date.UTC(2026, 10, 21, 3) });
      expect(entry.ref).toBe(`${REGISTRY}/understudy/${run}:7-20261121T030000Z`);
      expect(entry.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
      expect(await keeper.inRegistry(entry)).toEqual({ ok: true, detail: 'in the registry' });
      await container.remove({ force: true });
      // Every local copy goes: the committed tag, the pushed reference and the image it was built from.
      await docker.getImage(entry.ref).remove({ force: true });
      await docker.getImage(`understudy-test/${run}:1`).remove({ force: true });
      expect(await keeper.imageId(entry.ref)).toBeUndefined();

      const target = `understudy-test/${run}-restored:1`;
      expect(await keeper.restore(entry, target)).toBe('pulled');
      expect(await keeper.restore(entry, target)).toBe('present');
      const [port] = await freePorts(1);
      const served = await docker.createContainer({
        name: `understudy-${run}.b`,
        Image: target,
        HostConfig: { PortBindings: { '8000/tcp': [{ HostIp: '127.0.0.1', HostPort: String(port) }] } },
        ExposedPorts: { '8000/tcp': {} },
      });
      await served.start();
      try {
        let version: string | undefined;
        for (let i = 0; i < 100 && version === undefined; i++) {
          version = await versionOf(port!).catch(() => new Promise<undefined>((resolve) => setTimeout(resolve, 100)));
        }
        expect(version).toBe('7');
      } finally {
        await served.remove({ force: true });
      }
      const down = new ImageKeeper(DOCKER_SOCKET, '127.0.0.1:1');
      const refused = await down.inRegistry({ ...entry, ref: entry.ref.replace(REGISTRY, '127.0.0.1:1') });
      expect(refused.ok).toBe(false);
      expect(refused.detail).toMatch(/^the registry 127.0.0.1:1 is not reachable/);
    } finally {
      await container.remove({ force: true }).catch(() => {});
    }
  });

  it('says which registry is down when a push fails', async () => {
    await buildModelServerImage(`understudy-test/${run}:2`, { version: '7' });
    const container = await docker.createContainer({ name: `understudy-${run}.c`, Image: `understudy-test/${run}:2` });
    try {
      const keeper = new ImageKeeper(DOCKER_SOCKET, '127.0.0.1:1');
      await expect(keeper.keep(`understudy-${run}.c`, { service: run, instance: 'c', version: '7', time: Date.now() })).rejects.toThrow(
        /could not push 127\.0\.0\.1:1\/understudy\/.* to the registry 127\.0\.0\.1:1/,
      );
    } finally {
      await container.remove({ force: true });
    }
  });
});
