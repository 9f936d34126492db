import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
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
import { waitUntil } from '../support/wait.js';

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

/**
 * A real webhook receiver that answers the given statuses in turn, then 200; `answerAfterMs`
 * makes it slow, `never` makes it keep every request open. `maxOpen` is the most requests it
 * held open at once.
 */
async function webhookServer(statuses: number[] = [], { answerAfterMs = 0, never = false }: { answerAfterMs?: number; never?: boolean } = {}) {
  const received: Received[] = [];
  const waiters: { count: number; resolve: () => void }[] = [];
  const stats = { open: 0, maxOpen: 0 };
  const server = http.createServer((req, res) => {
    stats.open++;
    stats.maxOpen = Math.max(stats.maxOpen, stats.open);
    res.on('close', () => stats.open--);
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      received.push({ headers: req.headers, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) as AlertPayload });
      const status = statuses.shift() ?? 200;
      const answer = () => res.writeHead(status, { 'content-type': 'text/plain' }).end(status < 300 ? 'ok' : 'receiver is unwell');
      if (!never) {
        if (answerAfterMs > 0) setTimeout(answer, answerAfterMs);
        else answer();
      }
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
    stats,
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

async function server(statuses: number[] = [], options: Parameters<typeof webhookServer>[1] = {}) {
  const s = await webhookServer(statuses, options);
  cleanups.push(() => s.close());
  return s;
}

/**
 * A command for `sh -c` that reads its input, then runs `rest` with a `sleep 30` started in the
 * background (holding the error output pipe); its process group and the sleep's pid go to pidFile.
 * The test's cleanup kills both, so no sleep outlives the test.
 */
function backgroundSleeper(pidFile: string, rest: string): string[] {
  cleanups.push(() => {
    if (!existsSync(pidFile)) return;
    const [group, sleeper] = readFileSync(pidFile, 'utf8').trim().split(' ').map(Number);
    for (const target of [-group!, sleeper!]) {
      try {
        process.kill(target, 'SIGKILL');
      } catch {
        // Gone already.
      }
    }
  });
  return ['sh', '-c', `cat >/dev/null; sleep 30 & echo "$$ $!" > "$1"; ${rest}`, 'sh', pidFile];
}

/** Whether the process is gone (or a zombie: dead, not yet reaped). */
function dead(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
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
          aborted: false,
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
        aborted: false,
        recoveredMs: 300,
        failedRequests: 0,
        lostItems: 0,
        report: '/tmp/d-1',
        reason: 'recovered',
      },
      // Cut short by a shutdown: not a finding.
      {
        type: 'drill-finished',
        drill: 'd-2',
        fault: 'kill-primary',
        instances: ['gpu-a'],
        passed: false,
        aborted: true,
        recoveredMs: null,
        failedRequests: 0,
        lostItems: 0,
        report: '/tmp/d-2',
        reason: 'understudy is shutting down',
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

  it('settles a command when it exits, though a background child keeps its error output open', async () => {
    const errors = errorSink();
    const pidFile = path.join(dir, 'pids');
    const a = alerter(config({ command: backgroundSleeper(pidFile, 'exit 0') }), errors);
    log.publish(ev({ type: 'no-ready-instance', reason: 'all down' }));
    // The sleep lives 30 s; the delivery must not wait for it.
    await within(a.close(), 'close with a background child holding stderr', 5_000);
    expect(a.recent()).toMatchObject([{ sent: true }]);
    expect(errors.errors).toEqual([]);
  });

  it('stops a command that runs too long, with everything it started', { timeout: 30_000 }, async () => {
    const errors = errorSink();
    const pidFile = path.join(dir, 'pids');
    const a = alerter(config({ command: backgroundSleeper(pidFile, 'wait') }), errors);
    log.publish(ev({ type: 'no-ready-instance', reason: 'all down' }));
    await within(a.close(), 'the command timeout', 15_000);
    expect(errors.errors.map((e) => e.message)).toEqual(['alert "tts has no ready instance" not delivered to command sh: killed after 10 s']);
    const sleeper = Number(readFileSync(pidFile, 'utf8').trim().split(' ')[1]);
    // SIGTERM went to the process group, so the background sleep got it too.
    await waitUntil(() => dead(sleeper), { timeoutMs: 3_000, what: `the background sleep (pid ${sleeper}) to die` });
  });

  it('reports a command that is not there once', async () => {
    const errors = errorSink();
    const missing = path.join(dir, 'no-such-command');
    const a = alerter(config({ command: [missing] }), errors);
    log.publish(ev({ type: 'no-ready-instance', reason: 'all down' }));
    await within(a.close(), 'the command');
    // A missing program ends with 'error', then 'close' once its pipes are shut. A process of our
    // own that starts and exits after that takes many turns of the event loop: by then both came.
    const marker = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' });
    await within(once(marker, 'exit'), 'a process to exit');
    expect(errors.errors.map((e) => e.message)).toEqual([
      `alert "tts has no ready instance" not delivered to command ${missing}: could not run it: spawn ${missing} ENOENT`,
    ]);
    expect(a.recent()).toMatchObject([{ sent: false }]);
  });

  it('still delivers to webhooks when the command cannot even be started', async () => {
    const hook = await server();
    const errors = errorSink();
    const a = alerter(config({ webhooks: [{ url: hook.url, headers: {} }], command: [process.execPath, '-e', ''] }), errors);
    // A NUL byte in the title makes spawn throw: no environment variable may hold one.
    log.publish(ev(startFailed('gpu\u0000b')));
    await hook.requests(1);
    await within(a.close(), 'the delivery');
    expect(hook.received.map((r) => r.body.alert.title)).toEqual(['gpu\u0000b of tts failed to start']);
    expect(errors.errors).toHaveLength(1);
    expect(errors.errors[0]!.message).toMatch(/^alert "gpu\u0000b of tts failed to start" not delivered to command .*: could not run it: ERR_INVALID_ARG_VALUE: .*null bytes/);
    expect(a.recent()).toMatchObject([{ sent: true }]);
  });

  it('sends the next repeat when the command could not be started', async () => {
    const errors = errorSink();
    const a = alerter(config({ command: [process.execPath, '-e', ''] }), errors);
    const failed = errors.next();
    log.publish(ev(startFailed('gpu\u0000b')));
    await failed;
    // The failure is recorded a few microtasks after it is reported.
    await new Promise((resolve) => setImmediate(resolve));
    const again = errors.next();
    log.publish(ev(startFailed('gpu\u0000b')));
    await again;
    await within(a.close(), 'the deliveries');
    expect(errors.errors).toHaveLength(2);
    expect(a.recent().map((x) => [x.sent, x.suppressed])).toEqual([
      [false, false],
      [false, false],
    ]);
  });

  it('does not wait for webhook retries when closed', async () => {
    const hook = await server(Array<number>(10).fill(500));
    const errors = errorSink();
    const a = alerter(config({ webhooks: [{ url: hook.url, headers: {} }] }), errors);
    log.publish(ev({ type: 'no-ready-instance', reason: 'all down' }));
    await hook.requests(1);
    // Waiting out the backoffs would take 1.5 s and two more tries.
    await within(a.close(), 'close during a webhook backoff', 1_000);
    expect(hook.received).toHaveLength(1);
    expect(errors.errors.map((e) => e.message)).toEqual([
      `alert "tts has no ready instance" not delivered to webhook ${hook.url}: answered 500: receiver is unwell (1 try, then the alerter closed)`,
    ]);
    expect(a.recent()).toMatchObject([{ sent: false }]);
  });

  it('gives up open requests and waiting deliveries a request timeout after close', { timeout: 30_000 }, async () => {
    const hook = await server([], { never: true });
    const errors = errorSink();
    const a = alerter(config({ webhooks: [{ url: hook.url, headers: {} }] }), errors);
    for (let i = 0; i < 12; i++) log.publish(ev(quarantined(`gpu-${i}`)));
    await hook.requests(8);
    const started = Date.now();
    // Eight requests time out after 5 s; the four waiting must not get 5 s more.
    await within(a.close(), 'close with a webhook that never answers', 8_000);
    expect(Date.now() - started).toBeLessThan(8_000);
    expect(errors.errors).toHaveLength(12);
    for (const { message } of errors.errors) expect(message).toMatch(/^alert "gpu-\d+ of tts quarantined after 3 failures in 5 min" not delivered/);
    expect(a.recent().every((x) => !x.sent)).toBe(true);
  });

  it('runs at most eight deliveries at once in a burst', async () => {
    const hook = await server([], { answerAfterMs: 50 });
    const errors = errorSink();
    const a = alerter(config({ webhooks: [{ url: hook.url, headers: {} }] }), errors);
    for (let i = 0; i < 50; i++) log.publish(ev(quarantined(`gpu-${i}`)));
    await hook.requests(50);
    await within(a.close(), 'the deliveries');
    expect(hook.stats.maxOpen).toBeLessThanOrEqual(8);
    expect(hook.stats.maxOpen).toBeGreaterThan(1);
    expect(new Set(hook.received.map((r) => r.body.alert.instance)).size).toBe(50);
    expect(a.recent().every((x) => x.sent)).toBe(true);
    expect(errors.errors).toEqual([]);
  });

  it('drops the oldest waiting delivery past a thousand waiting', async () => {
    const hook = await server();
    const errors = errorSink();
    const a = alerter(config({ webhooks: [{ url: hook.url, headers: {} }] }), errors);
    // Eight run, a thousand wait, and the two that waited longest are dropped.
    for (let i = 0; i < 1_010; i++) log.publish(ev(quarantined(`gpu-${i}`)));
    expect(errors.errors.map((e) => e.message)).toEqual([
      'alert "gpu-8 of tts quarantined after 3 failures in 5 min" dropped: 1000 alerts were already waiting for delivery',
      'alert "gpu-9 of tts quarantined after 3 failures in 5 min" dropped: 1000 alerts were already waiting for delivery',
    ]);
    await hook.requests(1_008);
    await within(a.close(), 'the deliveries');
    expect(hook.received).toHaveLength(1_008);
    expect(hook.received.map((r) => r.body.alert.instance)).not.toContain('gpu-8');
  });

  it('keeps a quieted alert unsent, without starting its repeat window', async () => {
    const hook = await server();
    const errors = errorSink();
    let drill: string | undefined = 'd-1';
    const a = alerter(config({ webhooks: [{ url: hook.url, headers: {} }] }), {
      onError: errors.onError,
      quiet: (event) => (drill !== undefined && event.type === 'quarantined' && event.instance === 'gpu-a' ? `caused by drill ${drill}` : undefined),
    });
    log.publish(ev(quarantined('gpu-a')));
    log.publish(ev(quarantined('gpu-b')));
    await hook.requests(1);
    drill = undefined;
    log.publish(ev(quarantined('gpu-a')));
    await hook.requests(2);
    await a.close();
    expect(hook.received.map((r) => r.body.alert.instance)).toEqual(['gpu-b', 'gpu-a']);
    expect(hook.received[0]!.body.alert).not.toHaveProperty('quieted');
    expect(a.recent().map((x) => [x.instance, x.sent, x.suppressed, x.quieted])).toEqual([
      ['gpu-a', false, false, 'caused by drill d-1'],
      ['gpu-b', true, false, null],
      ['gpu-a', true, false, null],
    ]);
    expect(a.counts()).toEqual({ warning: 0, critical: 3 });
    expect(errors.errors).toEqual([]);
  });

  it('alerts when quiet throws, and reports it', async () => {
    const hook = await server();
    const errors = errorSink();
    const a = alerter(config({ webhooks: [{ url: hook.url, headers: {} }] }), {
      onError: errors.onError,
      quiet: () => {
        throw new Error('no drill state');
      },
    });
    log.publish(ev(quarantined('gpu-a')));
    await hook.requests(1);
    await a.close();
    expect(errors.errors.map((e) => e.message)).toEqual(['could not ask whether quarantined on tts is quiet; alerting']);
    expect(a.recent()).toMatchObject([{ sent: true, quieted: null }]);
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
