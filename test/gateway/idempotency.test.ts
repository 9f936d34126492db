import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { runsPerItem, twoInstanceConfig } from '../jobs/support.js';
import { closeAllGateways, startGateway, type RunningGateway } from '../support/gateway.js';
import { freePorts } from '../support/ports.js';

afterEach(closeAllGateways);

async function gateway(latencyMs: number, extra = ''): Promise<{ gw: RunningGateway; record: string }> {
  const record = path.join(mkdtempSync(path.join(tmpdir(), 'understudy-record-')), 'requests.log');
  const ports = (await freePorts(2)) as [number, number];
  const gw = await startGateway(twoInstanceConfig(ports, record, { extra, latencyMs }));
  await gw.event((e) => e.type === 'instance-state' && e.instance === 'hot' && e.to === 'ready', 20_000, 'the hot standby');
  return { gw, record };
}

function post(url: string, key: string | undefined, body: string, requestId: string) {
  return request(`${url}/v1/infer`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-request-id': requestId, ...(key === undefined ? {} : { 'idempotency-key': key }) },
    body,
  });
}

/** Runs of requests whose id starts with `prefix` on the model servers. */
function runs(record: string, prefix: string): number {
  return [...runsPerItem(record, prefix).values()].reduce((a, b) => a + b, 0);
}

describe('Idempotency-Key', () => {
  it('two identical concurrent requests cause one run on the model server, and both get its answer', async () => {
    const { gw, record } = await gateway(300);
    const [a, b] = await Promise.all([post(gw.url, 'order-17', '{"text":"hello"}', 'same.1'), post(gw.url, 'order-17', '{"text":"hello"}', 'same.2')]);
    const [bodyA, bodyB] = [await a.body.json(), await b.body.json()];
    expect(a.statusCode).toBe(200);
    expect(b.statusCode).toBe(200);
    expect(bodyA).toEqual(bodyB);
    expect(runs(record, 'same')).toBe(1);
    expect([a.headers['idempotent-replayed'], b.headers['idempotent-replayed']].filter(Boolean)).toEqual(['true']);

    // A repeat later gets the kept answer, still without a run.
    const later = await post(gw.url, 'order-17', '{"text":"hello"}', 'same.3');
    expect(later.headers['idempotent-replayed']).toBe('true');
    expect(await later.body.json()).toEqual(bodyA);
    expect(runs(record, 'same')).toBe(1);
  });

  it('the same key with a different body is a 422, and nothing runs', async () => {
    const { gw, record } = await gateway(10);
    const first = await post(gw.url, 'k-1', '{"text":"one"}', 'diff.1');
    await first.body.dump();
    const second = await post(gw.url, 'k-1', '{"text":"two"}', 'diff.2');
    expect(second.statusCode).toBe(422);
    expect(await second.body.json()).toMatchObject({
      error: { code: 'IDEMPOTENCY_KEY_REUSED', message: expect.stringContaining('was already used with a different request') },
    });
    expect(runs(record, 'diff')).toBe(1);
  });

  it('keeps the answer in the job store on disk, and forgets it after idempotency.ttl', async () => {
    const { gw, record } = await gateway(10, 'idempotency: { ttl: 1s }');
    const first = await post(gw.url, 'k-ttl', '{}', 'ttl.1');
    await first.body.dump();
    const replay = await post(gw.url, 'k-ttl', '{}', 'ttl.2');
    expect(replay.headers['idempotent-replayed']).toBe('true');
    await replay.body.dump();
    expect(runs(record, 'ttl')).toBe(1);
    // The kept answer is in the job store, on disk.
    const kept = await gw.app.jobStore().getReply('infer', 'k-ttl', Date.now());
    expect(kept?.status).toBe(200);
    const expired = await gw.app.jobStore().getReply('infer', 'k-ttl', Date.now() + 1500);
    expect(expired).toBeUndefined();
  });

  it('does not keep a failed answer: a repeat runs again', async () => {
    const { gw, record } = await gateway(10);
    const failed = await request(`${gw.url}/v1/infer`, {
      method: 'POST',
      headers: { 'idempotency-key': 'k-500', 'x-request-id': 'fail.1', 'x-answer-status': '500' },
      body: '{}',
    });
    expect(failed.statusCode).toBe(500);
    await failed.body.dump();
    const again = await request(`${gw.url}/v1/infer`, {
      method: 'POST',
      headers: { 'idempotency-key': 'k-500', 'x-request-id': 'fail.2', 'x-answer-status': '500' },
      body: '{}',
    });
    expect(again.headers['idempotent-replayed']).toBeUndefined();
    await again.body.dump();
    // Each request was tried on both instances (retry.statuses includes 500); neither answer was kept.
    expect(runs(record, 'fail')).toBeGreaterThanOrEqual(2);
  });

  it('two concurrent requests with another body under a kept key are both refused, never given its answer', async () => {
    const { gw, record } = await gateway(10);
    await (await post(gw.url, 'k-a', '{"text":"A"}', 'other.1')).body.dump();
    const [b1, b2] = await Promise.all([post(gw.url, 'k-a', '{"text":"B"}', 'other.2'), post(gw.url, 'k-a', '{"text":"B"}', 'other.3')]);
    expect([b1.statusCode, b2.statusCode]).toEqual([422, 422]);
    await Promise.all([b1.body.dump(), b2.body.dump()]);
    expect(runs(record, 'other')).toBe(1);
  });

  it('does not keep a "try again later" answer (429): the repeat runs again', async () => {
    const { gw, record } = await gateway(10);
    const send = (id: string) =>
      request(`${gw.url}/v1/infer`, {
        method: 'POST',
        headers: { 'idempotency-key': 'k-429', 'x-request-id': id, 'x-answer-status': '429' },
        body: '{}',
      });
    const first = await send('busy.1');
    expect(first.statusCode).toBe(429);
    await first.body.dump();
    const before = runs(record, 'busy');
    const again = await send('busy.2');
    expect(again.headers['idempotent-replayed']).toBeUndefined();
    await again.body.dump();
    expect(runs(record, 'busy')).toBeGreaterThan(before);
  });

  it('refuses a malformed key', async () => {
    const { gw } = await gateway(10);
    const bad = await post(gw.url, 'x'.repeat(300), '{}', 'bad.1');
    expect(bad.statusCode).toBe(400);
    expect(await bad.body.json()).toMatchObject({ error: { code: 'BAD_IDEMPOTENCY_KEY' } });
  });
});
