import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http, { type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { AlertsConfig } from '../../src/config/index.js';
import type { EventBody, UnderstudyEvent } from '../../src/core/index.js';
import { Alerter, alertFor, webhookRetryDelay, type AlertPayload } from '../../src/observe/alerts.js';
import { EventLog } from '../../src/observe/index.js';
import { freePort } from '../support/ports.js';

let seq = 0;
const ev = (body: EventBody, service = 'tts'): UnderstudyEvent => ({ ...body, time: 1_000 + seq, service, traceId: `trace-${seq++}` });

const quarantined = (instance = 'gpu-a'): EventBody => ({ type: 'quarantined', instance, failures: 3, withinMs: 300_000, reason: 'crashed 3 times' });
const startFailed = (instance = 'gpu-b'): EventBody => ({ type: 'start-failed', instance, reason: 'exited with code 1' });

function config(overrides: Partial<AlertsConfig> = {}): AlertsConfig {
  return { webhooks: [], minSeverity: 'warning', repeatAfter: 60_000, ...overrides };
}

/** Rejects when the promise takes longer than ms: every wait in these tests is bounded. */
function within<T>(promise: Promise<T>, what: string, ms = 10_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

interface Received {
  headers: IncomingHttpHeaders;
  body: AlertPayload;
}

/** A real webhook receiver that answers the given statuses in turn, then 200. */
async function webhookServer(statuses: number[] = []) {
  const received: Received[] = [];
  const waiters: { count: number; resolve: () => void }[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      received.push({ headers: req.headers, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) as AlertPayload });
      const status = statuses.shift() ?? 200;
      res.writeHead(status, { 'content-type': 'text/plain' }).end(status < 300 ? 'ok' : 'receiver is unwell');
      for (const waiter of [...waiters]) {
        if (received.length >= waiter.count) {
          waiters.splice(waiters.indexOf(waiter), 1);
          waiter.resolve();
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/hook`,
    received,
    /** Resolves once `count` requests have arrived. */
    requests(count: number): Promise<void> {
      if (received.length >= count) return Promise.resolve();
      return within(new Promise<void>((resolve) => waiters.push({ count, resolve })), `${count} webhook requests`);
    },
    close(): Promise<void> {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/** Collects onError calls; `next()` resolves at the next one. */
function errorSink() {
  const errors: { message: string; error: unknown }[] = [];
  let notify: (() => void) | undefined;
  return {
    errors,
    onError(message: string, error: unknown) {
      errors.push({ message, error });
      notify?.();
    },
    next(): Promise<void> {
      return within(new Promise<void>((resolve) => (notify = resolve)), 'an onError call');
    },
  };
}

let dir: string;
let log: EventLog;
const cleanups: (() => Promise<void> | void)[] = [];

beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'understudy-alerts-'));
  log = new EventLog(path.join(dir, 'events.jsonl'));
});

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  await log.close();
  rmSync(dir, { recursive: true, force: true });
});

function alerter(cfg: AlertsConfig, deps: ConstructorParameters<typeof Alerter>[1]): Alerter {
  const a = new Alerter(cfg, deps);
  a.attach(log);
  cleanups.push(() => a.close());
  return a;
}

async function server(statuses: number[] = []) {
  const s = await webhookServer(statuses);
  cleanups.push(() => s.close());
  return s;
}

describe('alertFor', () => {
  it('maps each alerting event to a severity, a title and an instance', () => {
    const cases: [EventBody, ReturnType<typeof alertFor>][] = [
      [{ type: 'no-ready-instance', reason: 'all down' }, { severity: 'critical', title: 'tts has no ready instance', instance: null }],
      [quarantined(), { severity: 'critical', title: 'gpu-a of tts quarantined after 3 failures in 5 min', instance: 'gpu-a' }],
      [
        { type: 'rollback-finished', from: '1.1', to: '1.0', durationMs: 4_000, ok: false, reason: 'restore failed' },
        { severity: 'critical', title: 'rollback of tts to 1.0 failed', instance: null, subject: '1.0' },
      ],
      [
        { type: 'rollback-finished', from: '1.1', to: '1.0', durationMs: 4_000, ok: true, reason: 'crash loop on 1.1' },
        { severity: 'warning', title: 'tts rolled back from 1.1 to 1.0', instance: null, subject: '1.0' },
      ],
      [
        { type: 'snapshot-failed', version: '1.0', trigger: 'schedule', reason: 'disk full' },
        { severity: 'critical', title: 'backup of tts 1.0 failed', instance: null },
      ],
      [
        { type: 'snapshot-failed', version: null, trigger: 'manual', reason: 'disk full' },
        { severity: 'critical', title: 'backup of tts failed', instance: null },
      ],
      [
        { type: 'version-mismatch', instance: 'gpu-b', expected: '1.0', actual: '0.9', reason: 'standby serves another version' },
        { severity: 'warning', title: 'gpu-b of tts serves version 0.9, expected 1.0', instance: 'gpu-b' },
      ],
      [
        { type: 'version-mismatch', instance: 'gpu-b', expected: '1.0', actual: null, reason: 'no version endpoint' },
        { severity: 'warning', title: 'gpu-b of tts serves no version, expected 1.0', instance: 'gpu-b' },
      ],
      [
        { type: 'deploy-failed', from: '1.0', to: '1.1', reason: 'smoke test failed' },
        { severity: 'warning', title: 'deploy of tts from 1.0 to 1.1 failed', instance: null, subject: '1.1' },
      ],
      [startFailed(), { severity: 'warning', title: 'gpu-b of tts failed to start', instance: 'gpu-b' }],
      [
        { type: 'job-state', job: 'job-7', from: 'running', to: 'failed', done: 40, total: 50, reason: '10 items failed' },
        { severity: 'warning', title: 'job job-7 of tts failed (40/50 items done)', instance: null, subject: 'job-7' },
      ],
      [
        {
          type: 'drill-finished',
          drill: 'd-1',
          fault: 'kill-primary',
          instances: ['gpu-a'],
          passed: false,
          recoveredMs: null,
          failedRequests: 4,
          lostItems: 0,
          report: '/tmp/d-1',
          reason: 'clients saw 4 failures',
        },
        { severity: 'warning', title: 'drill d-1 (kill-primary) on tts failed', instance: 'gpu-a', subject: 'd-1' },
      ],
    ];
    for (const [body, expected] of cases) expect(alertFor(ev(body)), body.type).toEqual(expected);
  });

  it('leaves everything else alone', () => {
    const quiet: EventBody[] = [
      { type: 'instance-state', instance: 'gpu-a', from: 'ready', to: 'down', reason: 'probe failed' },
      { type: 'active-changed', from: 'gpu-a', to: 'gpu-b', kind: 'failover', reason: 'gpu-a down' },
      { type: 'orphan-stopped', instance: 'gpu-a', pid: 42, reason: 'left by an earlier run' },
      { type: 'job-state', job: 'job-1', from: 'running', to: 'succeeded', done: 5, total: 5, reason: 'done' },
      { type: 'deploy-finished', to: '1.1', reason: 'watched 10m' },
      { type: 'snapshot-created', snapshot: 's1', version: '1.0', trigger: 'schedule', bytes: 10, newBytes: 1, reason: 'nightly' },
      { type: 'drill-started', drill: 'd-1', fault: 'kill-primary', instances: ['gpu-a'], trigger: 'manual', reason: 'asked' },
      {
        type: 'drill-finished',
        drill: 'd-1',
        fault: 'kill-primary',
        instances: ['gpu-a'],
        passed: true,
        recoveredMs: 300,
        failedRequests: 0,
        lostItems: 0,
        report: '/tmp/d-1',
        reason: 'recovered',
      },
      { type: 'drill-skipped', fault: 'kill-primary', reason: 'no standby' },
    ];
    for (const body of quiet) expect(alertFor(ev(body)), body.type).toBeUndefined();
  });

  it('retries webhooks on network errors, 5xx and 429, three tries in all', () => {
    expect(webhookRetryDelay(1, { error: new Error('ECONNREFUSED') })).toBe(500);
    expect(webhookRetryDelay(2, { status: 503 })).toBe(1_000);
    expect(webhookRetryDelay(3, { status: 503 })).toBeUndefined();
    expect(webhookRetryDelay(1, { status: 429, retryAfter: '2' })).toBe(2_000);
    expect(webhookRetryDelay(1, { status: 429, retryAfter: '3600' })).toBe(5_000);
    expect(webhookRetryDelay(1, { status: 400 })).toBeUndefined();
    expect(webhookRetryDelay(1, { status: 404 })).toBeUndefined();
  });
});

describe('Alerter', () => {
  it('delivers a critical alert as JSON with the configured headers, off the publisher path', async () => {
    const hook = await server();
    const errors = errorSink();
    const a = alerter(
      config({ webhooks: [{ url: hook.url, headers: { authorization: 'Bearer s3cret', 'X-Team': 'gpu', 'Content-Type': 'text/plain' } }] }),
      errors,
    );
    const event = ev({ type: 'rollback-finished', from: '1.1', to: '1.0', durationMs: 4_000, ok: false, reason: 'restore failed: disk full' });
    log.publish(event);
    // publish returned before anything was sent.
    expect(hook.received).toHaveLength(0);
    expect(a.recent()).toMatchObject([{ title: 'rollback of tts to 1.0 failed', sent: false, suppressed: false }]);

    await hook.requests(1);
    const [got] = hook.received;
    expect(got!.headers['content-type']).toBe('application/json');
    expect(got!.headers.authorization).toBe('Bearer s3cret');
    expect(got!.headers['x-team']).toBe('gpu');
    expect(got!.body).toEqual({
      alert: {
        id: expect.any(String),
        time: event.time,
        service: 'tts',
        severity: 'critical',
        kind: 'rollback-finished',
        instance: null,
        title: 'rollback of tts to 1.0 failed',
        detail: 'restore failed: disk full',
        traceId: event.traceId,
        repeats: 0,
        event,
      },
    });
    await a.close();
    expect(a.recent()).toMatchObject([{ id: got!.body.alert.id, sent: true }]);
    expect(a.counts()).toEqual({ warning: 0, critical: 1 });
    expect(errors.errors).toEqual([]);
  });

  it('suppresses a repeat within repeatAfter and counts it into the next one sent', async () => {
    const hook = await server();
    let now = 0;
    const a = alerter(config({ webhooks: [{ url: hook.url, headers: {} }], repeatAfter: 60_000 }), { onError: () => {}, now: () => now });

    log.publish(ev(quarantined('gpu-a')));
    now = 1_000;
    log.publish(ev(quarantined('gpu-a')));
    now = 59_999;
    log.publish(ev(quarantined('gpu-a')));
    // Another instance is another alert.
    log.publish(ev(quarantined('gpu-b')));
    await hook.requests(2);
    now = 60_000;
    log.publish(ev(quarantined('gpu-a')));
    await hook.requests(3);
    await a.close();

    expect(hook.received.map((r) => [r.body.alert.instance, r.body.alert.repeats])).toEqual([
      ['gpu-a', 0],
      ['gpu-b', 0],
      ['gpu-a', 2],
    ]);
    expect(a.recent().map((x) => [x.instance, x.suppressed, x.sent, x.repeats])).toEqual([
      ['gpu-a', false, true, 0],
      ['gpu-a', true, false, 0],
      ['gpu-a', true, false, 0],
      ['gpu-b', false, true, 0],
      ['gpu-a', false, true, 2],
    ]);
    expect(a.recent({ limit: 2 }).map((x) => x.instance)).toEqual(['gpu-b', 'gpu-a']);
    expect(a.counts()).toEqual({ warning: 0, critical: 5 });
  });

  it('retries a webhook that answers 500 twice, and delivers once', { timeout: 20_000 }, async () => {
    const hook = await server([500, 500]);
    const errors = errorSink();
    const a = alerter(config({ webhooks: [{ url: hook.url, headers: {} }] }), errors);
    log.publish(ev({ type: 'no-ready-instance', reason: 'all instances down' }));
    await hook.requests(3);
    await a.close();
    expect(hook.received).toHaveLength(3);
    expect(new Set(hook.received.map((r) => r.body.alert.id)).size).toBe(1);
    expect(a.recent()).toMatchObject([{ sent: true }]);
    expect(errors.errors).toEqual([]);
  });

  it('does not retry a 400, reports it, and sends the next repeat since none was delivered', async () => {
    const hook = await server([400]);
    const errors = errorSink();
    const a = alerter(config({ webhooks: [{ url: hook.url, headers: {} }] }), errors);
    const failed = errors.next();
    log.publish(ev(startFailed()));
    await failed;
    expect(errors.errors[0]!.message).toBe(`alert "gpu-b of tts failed to start" not delivered to webhook ${hook.url}: answered 400: receiver is unwell (1 try)`);
    // The failure is recorded a few microtasks after it is reported.
    await new Promise((resolve) => setImmediate(resolve));
    log.publish(ev(startFailed()));
    await hook.requests(2);
    await a.close();
    expect(hook.received).toHaveLength(2);
    expect(a.recent().map((x) => [x.sent, x.suppressed])).toEqual([
      [false, false],
      [true, false],
    ]);
  });

  it('reports a webhook that is down through onError, without throwing or naming its secrets', { timeout: 20_000 }, async () => {
    const port = await freePort();
    const errors = errorSink();
    const a = alerter(config({ webhooks: [{ url: `http://alice:pw-secret@127.0.0.1:${port}/hook?token=tok-secret`, headers: {} }] }), errors);
    const reported = errors.next();
    expect(() => log.publish(ev({ type: 'no-ready-instance', reason: 'all down' }))).not.toThrow();
    await reported;
    await a.close();
    expect(errors.errors).toHaveLength(1);
    const { message } = errors.errors[0]!;
    expect(message).toMatch(new RegExp(`^alert "tts has no ready instance" not delivered to webhook http://127\\.0\\.0\\.1:${port}/hook: .*ECONNREFUSED.* \\(3 tries\\)$`));
    expect(message).not.toMatch(/secret/);
    expect(a.recent()).toMatchObject([{ sent: false, suppressed: false }]);
  });

  it('runs the command with the alert on stdin and in its environment', async () => {
    const out = path.join(dir, 'alert.json');
    const script = [
      "let s = ''",
      "process.stdin.setEncoding('utf8')",
      'process.stdin.on("data", (c) => (s += c))',
      'process.stdin.on("end", () => require("fs").writeFileSync(process.argv[1], JSON.stringify({ stdin: s, env: {' +
        'severity: process.env.UNDERSTUDY_ALERT_SEVERITY, service: process.env.UNDERSTUDY_ALERT_SERVICE,' +
        'kind: process.env.UNDERSTUDY_ALERT_KIND, title: process.env.UNDERSTUDY_ALERT_TITLE } })))',
    ].join(';');
    const errors = errorSink();
    const a = alerter(config({ command: [process.execPath, '-e', script, out] }), errors);
    const event = ev({ type: 'version-mismatch', instance: 'gpu-b', expected: '1.0', actual: '0.9', reason: 'standby serves 0.9' });
    log.publish(event);
    await within(a.close(), 'the command');

    const written = JSON.parse(readFileSync(out, 'utf8')) as { stdin: string; env: Record<string, string> };
    expect(written.env).toEqual({ severity: 'warning', service: 'tts', kind: 'version-mismatch', title: 'gpu-b of tts serves version 0.9, expected 1.0' });
    expect(JSON.parse(written.stdin)).toMatchObject({ alert: { kind: 'version-mismatch', instance: 'gpu-b', detail: 'standby serves 0.9', event } });
    expect(a.recent()).toMatchObject([{ sent: true }]);
    expect(errors.errors).toEqual([]);
  });

  it('reports a command that fails, with its exit code and error output', async () => {
    const errors = errorSink();
    const a = alerter(config({ command: [process.execPath, '-e', "process.stderr.write('no route to pager'); process.exit(3)"] }), errors);
    log.publish(ev({ type: 'no-ready-instance', reason: 'all down' }));
    await within(a.close(), 'the command');
    expect(errors.errors.map((e) => e.message)).toEqual([
      `alert "tts has no ready instance" not delivered to command ${process.execPath}: exited with code 3: no route to pager`,
    ]);
    expect(a.recent()).toMatchObject([{ sent: false }]);
  });

  it('keeps an alert below minSeverity without sending it', async () => {
    const hook = await server();
    const a = alerter(config({ webhooks: [{ url: hook.url, headers: {} }], minSeverity: 'critical' }), { onError: () => {} });
    log.publish(ev(startFailed()));
    log.publish(ev({ type: 'no-ready-instance', reason: 'all down' }));
    await hook.requests(1);
    await a.close();
    expect(hook.received.map((r) => r.body.alert.kind)).toEqual(['no-ready-instance']);
    expect(a.recent().map((x) => [x.kind, x.severity, x.sent, x.suppressed])).toEqual([
      ['start-failed', 'warning', false, false],
      ['no-ready-instance', 'critical', true, false],
    ]);
    expect(a.counts()).toEqual({ warning: 1, critical: 1 });
  });

  it('makes nothing of events that are not alerts, and stops listening when closed', async () => {
    const hook = await server();
    const a = alerter(config({ webhooks: [{ url: hook.url, headers: {} }] }), { onError: () => {} });
    log.publish(ev({ type: 'instance-state', instance: 'gpu-a', from: 'ready', to: 'suspect', reason: 'slow' }));
    log.publish(ev({ type: 'job-state', job: 'job-1', from: 'running', to: 'succeeded', done: 5, total: 5, reason: 'done' }));
    await a.close();
    log.publish(ev({ type: 'no-ready-instance', reason: 'after close' }));
    await a.close();
    expect(a.recent()).toEqual([]);
    expect(a.counts()).toEqual({ warning: 0, critical: 0 });
    expect(hook.received).toEqual([]);
  });

  it('filters recent alerts by service', async () => {
    const a = alerter(config(), { onError: () => {} });
    log.publish(ev({ type: 'no-ready-instance', reason: 'down' }, 'tts'));
    log.publish(ev({ type: 'no-ready-instance', reason: 'down' }, 'asr'));
    await a.close();
    expect(a.recent({ service: 'asr' }).map((x) => x.service)).toEqual(['asr']);
    // No sinks: kept, never sent.
    expect(a.recent().map((x) => x.sent)).toEqual([false, false]);
  });
});
