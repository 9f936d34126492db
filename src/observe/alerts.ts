import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import type { AlertsConfig } from '../config/index.js';
import type { EventType, UnderstudyEvent } from '../core/index.js';
import type { EventLog } from './events.js';

export type Severity = 'warning' | 'critical';

/** An event that a person must know of. Alerts are a view of events: each one carries its event. */
export interface Alert {
  id: string;
  /** When the event happened (ms). */
  time: number;
  service: string;
  severity: Severity;
  /** The event's type. */
  kind: EventType;
  instance: string | null;
  /** One line for a person, e.g. "rollback of tts to 1.0 failed". */
  title: string;
  /** The event's reason. */
  detail: string;
  traceId: string;
  event: UnderstudyEvent;
  /** Delivered to at least one sink; false while delivery is under way, and when suppressed, quieted, below minSeverity or without sinks. */
  sent: boolean;
  /** A repeat of the same alert within repeatAfter of the last one sent: kept, not sent. */
  suppressed: boolean;
  /** Repeats suppressed since the last one of this alert was sent; 0 normally. */
  repeats: number;
  /** Why `quiet` held it back (e.g. "caused by drill d-1"); null normally. A quieted alert is kept, not sent. */
  quieted: string | null;
}

/** What is sent to a webhook (as the POST body) and to the command (on its standard input). */
export interface AlertPayload {
  alert: Omit<Alert, 'sent' | 'suppressed' | 'quieted'>;
}

export interface AlertDeps {
  /** Told of each delivery that failed; never thrown. */
  onError(message: string, error: unknown): void;
  /** The clock for repeatAfter. Default Date.now. */
  now?: () => number;
  /**
   * Asked of each alert before it is sent: a reason (e.g. "caused by drill d-1", "expected
   * during a deploy") keeps the alert in `recent()` unsent, marked `quieted`, without starting
   * its repeat window. Default: nothing is quieted.
   */
  quiet?: (event: UnderstudyEvent) => string | undefined;
}

/** How many alerts are kept for `recent()`. */
const KEEP = 1000;
/** One webhook try: from the request to the end of the answer. */
const WEBHOOK_TIMEOUT_MS = 5_000;
/** Waits before the second and third webhook tries. */
const WEBHOOK_BACKOFF_MS = [500, 1_000];
/** The longest Retry-After honoured, so a shutdown waiting for deliveries stays short. */
const MAX_RETRY_AFTER_MS = 5_000;
/** The command's process group gets SIGTERM after this long, and SIGKILL a grace period later. */
const COMMAND_TIMEOUT_MS = 10_000;
const COMMAND_KILL_GRACE_MS = 2_000;
/** How long a command that failed gets for its error output to arrive after it exited. */
const COMMAND_STDERR_DRAIN_MS = 200;
/** Deliveries (one alert to all its sinks) running at once; the rest wait their turn. */
const MAX_DELIVERIES = 8;
/** Deliveries waiting for a turn; past this the oldest waiting one is dropped. */
const MAX_WAITING = 1_000;

const RANK: Record<Severity, number> = { warning: 1, critical: 2 };

/**
 * Whether an event alerts, how badly, and its title. `subject` is what the alert is
 * about beyond its service and instance (a job, a drill, a version), so two jobs that
 * fail are two alerts, not one alert and a repeat.
 */
export function alertFor(event: UnderstudyEvent): { severity: Severity; title: string; instance: string | null; subject?: string } | undefined {
  const s = event.service;
  switch (event.type) {
    case 'no-ready-instance':
      return { severity: 'critical', title: `${s} has no ready instance`, instance: null };
    case 'quarantined':
      return {
        severity: 'critical',
        title: `${event.instance} of ${s} quarantined after ${event.failures} failures in ${formatMs(event.withinMs)}`,
        instance: event.instance,
      };
    case 'rollback-finished':
      return event.ok
        ? { severity: 'warning', title: `${s} rolled back from ${event.from} to ${event.to}`, instance: null, subject: event.to }
        : { severity: 'critical', title: `rollback of ${s} to ${event.to} failed`, instance: null, subject: event.to };
    case 'snapshot-failed':
      return { severity: 'critical', title: `backup of ${s}${event.version === null ? '' : ` ${event.version}`} failed`, instance: null };
    case 'snapshots-verified':
      if (event.damaged.length === 0) return undefined;
      return { severity: 'critical', title: `${event.damaged.length} backup(s) of ${s} damaged: ${event.damaged.join(', ')}`, instance: null, subject: event.damaged.join(',') };
    case 'version-mismatch':
      return {
        severity: 'warning',
        title: `${event.instance} of ${s} serves ${event.actual === null ? 'no version' : `version ${event.actual}`}, expected ${event.expected}`,
        instance: event.instance,
      };
    case 'deploy-failed':
      return { severity: 'warning', title: `deploy of ${s} from ${event.from} to ${event.to} failed`, instance: null, subject: event.to };
    case 'start-failed':
      return { severity: 'warning', title: `${event.instance} of ${s} failed to start`, instance: event.instance };
    case 'job-state':
      if (event.to !== 'failed') return undefined;
      return { severity: 'warning', title: `job ${event.job} of ${s} failed (${event.done}/${event.total} items done)`, instance: null, subject: event.job };
    case 'drill-finished':
      // An aborted drill was cut short by a shutdown: not a finding about the service.
      if (event.passed || event.aborted) return undefined;
      return {
        severity: 'warning',
        title: `drill ${event.drill} (${event.fault}) on ${s} failed`,
        instance: event.instances.length === 1 ? event.instances[0]! : null,
        subject: event.drill,
      };
    default:
      return undefined;
  }
}

/** What a failed webhook try looked like, for {@link webhookRetryDelay}. */
export type WebhookOutcome = { status: number; retryAfter?: string | undefined } | { error: unknown };

/**
 * The webhook retry policy: the wait before the next try, or undefined to give up.
 * `tries` counts the tries made so far. Network errors, timeouts, 5xx and 429 are
 * tried again (three tries in all); any other status is the receiver's final word.
 */
export function webhookRetryDelay(tries: number, outcome: WebhookOutcome): number | undefined {
  const backoff = WEBHOOK_BACKOFF_MS[tries - 1];
  if (backoff === undefined) return undefined;
  if ('error' in outcome) return backoff;
  if (outcome.status !== 429 && outcome.status < 500) return undefined;
  const seconds = outcome.retryAfter === undefined ? NaN : Number(outcome.retryAfter);
  return Number.isFinite(seconds) && seconds > 0 ? Math.max(backoff, Math.min(seconds * 1000, MAX_RETRY_AFTER_MS)) : backoff;
}

type AlerterState = 'open' | 'closing' | 'closed';

interface RepeatState {
  /** When the last alert of this key went out; -Infinity once a delivery failed everywhere, so the next one goes out. */
  sentAt: number;
  sentId: string;
  suppressed: number;
}

interface Waiting {
  alert: Alert;
  /** true: its turn has come; false: dropped. */
  start(go: boolean): void;
}

/**
 * Turns events into alerts: keeps the last {@link KEEP} of them, drops repeats within
 * `repeatAfter`, and delivers the rest to webhooks and a command, off the publisher's
 * path, {@link MAX_DELIVERIES} at a time. A delivery that fails is told to `onError`; it
 * never throws into the event log.
 */
export class Alerter {
  private state: AlerterState = 'open';
  private readonly alerts: Alert[] = [];
  private readonly raised: Record<Severity, number> = { warning: 0, critical: 0 };
  private readonly repeats = new Map<string, RepeatState>();
  private readonly inFlight = new Set<Promise<void>>();
  private readonly detach = new Set<() => void>();
  private closing: Promise<void> | undefined;
  private readonly now: () => number;
  private running = 0;
  private readonly waiting: Waiting[] = [];
  /** Aborted by close(): no webhook is tried again, backoff waits end. */
  private readonly noMoreTries = new AbortController();
  /** Aborted WEBHOOK_TIMEOUT_MS after close(): requests under way end, waiting deliveries are dropped. */
  private readonly deadline = new AbortController();

  constructor(
    private readonly config: AlertsConfig,
    private readonly deps: AlertDeps,
  ) {
    this.now = deps.now ?? Date.now;
  }

  /** Listens to the log; returns the function that stops listening. */
  attach(log: EventLog): () => void {
    if (this.state !== 'open') throw new Error(`alerter is ${this.state}: cannot attach`);
    const unsubscribe = log.subscribe((event) => this.handle(event));
    const off = () => {
      unsubscribe();
      this.detach.delete(off);
    };
    this.detach.add(off);
    return off;
  }

  /** Alerts oldest first (newest last), filtered. */
  recent(filter: { service?: string; limit?: number } = {}): Alert[] {
    const matching = this.alerts.filter((a) => filter.service === undefined || a.service === filter.service);
    const chosen = filter.limit === undefined ? matching : matching.slice(Math.max(0, matching.length - filter.limit));
    return chosen.map((a) => ({ ...a }));
  }

  /** Alerts raised since start, by severity, suppressed and unsent ones included. */
  counts(): Record<Severity, number> {
    return { ...this.raised };
  }

  /**
   * Stops listening and lets deliveries under way finish their current try, without
   * retries. Webhook requests still open and deliveries still waiting for a turn
   * {@link WEBHOOK_TIMEOUT_MS} later are given up; each of those is reported to `onError`
   * as not delivered. A running command keeps its own timeout. Safe to call twice.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.state = 'closing';
      for (const off of [...this.detach]) off();
      this.noMoreTries.abort();
      const deadline = setTimeout(() => this.giveUp(), WEBHOOK_TIMEOUT_MS);
      try {
        while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
      } finally {
        clearTimeout(deadline);
      }
      this.state = 'closed';
    })();
    return this.closing;
  }

  private giveUp(): void {
    const dropped = this.waiting.splice(0);
    for (const { alert, start } of dropped) {
      this.report(`alert "${alert.title}" not delivered: the alerter closed before its turn`, new Error('alerter closed'));
      start(false);
    }
    this.deadline.abort();
  }

  private handle(event: UnderstudyEvent): void {
    if (this.state !== 'open') return;
    try {
      const found = alertFor(event);
      if (!found) return;
      const alert: Alert = {
        id: randomUUID(),
        time: event.time,
        service: event.service,
        severity: found.severity,
        kind: event.type,
        instance: found.instance,
        title: found.title,
        detail: event.reason,
        traceId: event.traceId,
        event,
        sent: false,
        suppressed: false,
        repeats: 0,
        quieted: null,
      };
      this.raised[alert.severity]++;
      this.alerts.push(alert);
      if (this.alerts.length > KEEP) this.alerts.splice(0, this.alerts.length - KEEP);

      alert.quieted = this.quieted(event);
      if (alert.quieted !== null) return;

      if (RANK[alert.severity] < RANK[this.config.minSeverity]) return;
      if (this.config.webhooks.length === 0 && this.config.command === undefined) return;

      // Severity is part of the key: a warning that turns critical is news, not a repeat.
      const key = JSON.stringify([alert.service, alert.kind, alert.instance, found.subject ?? null, alert.severity]);
      const now = this.now();
      const last = this.repeats.get(key);
      if (last && now - last.sentAt < this.config.repeatAfter) {
        alert.suppressed = true;
        last.suppressed++;
        return;
      }
      alert.repeats = last?.suppressed ?? 0;
      this.repeats.set(key, { sentAt: now, sentId: alert.id, suppressed: 0 });
      this.track(key, alert);
    } catch (error) {
      this.report(`could not make an alert of ${event.type} on ${event.service}`, error);
    }
  }

  /** The reason `quiet` gives, or null. A `quiet` that throws quiets nothing: better a noisy alert than a lost one. */
  private quieted(event: UnderstudyEvent): string | null {
    if (!this.deps.quiet) return null;
    try {
      return this.deps.quiet(event) ?? null;
    } catch (error) {
      this.report(`could not ask whether ${event.type} on ${event.service} is quiet; alerting`, error);
      return null;
    }
  }

  private track(key: string, alert: Alert): void {
    const delivery = this.turn(alert)
      .then(async (go) => {
        if (!go) return false;
        try {
          return await this.deliver(alert);
        } finally {
          this.release();
        }
      })
      .then((sent) => {
        alert.sent = sent;
        const entry = this.repeats.get(key);
        if (!sent && entry?.sentId === alert.id) {
          entry.sentAt = -Infinity;
          entry.suppressed += alert.repeats;
        }
      })
      .catch((error: unknown) => this.report(`alert "${alert.title}" not delivered`, error))
      .finally(() => this.inFlight.delete(delivery));
    this.inFlight.add(delivery);
  }

  /** Resolves true when the delivery may start, false when it was dropped (too many waiting, or closed). */
  private turn(alert: Alert): Promise<boolean> {
    return new Promise<boolean>((start) => {
      if (this.running < MAX_DELIVERIES) {
        this.running++;
        // setImmediate: spawning the command and opening sockets happen after the publisher has moved on.
        setImmediate(() => start(true));
        return;
      }
      this.waiting.push({ alert, start });
      if (this.waiting.length > MAX_WAITING) {
        const oldest = this.waiting.shift()!;
        this.report(
          `alert "${oldest.alert.title}" dropped: ${MAX_WAITING} alerts were already waiting for delivery`,
          new Error('too many alerts waiting for delivery'),
        );
        oldest.start(false);
      }
    });
  }

  /** A delivery ended: its turn passes to the oldest one waiting. */
  private release(): void {
    const next = this.waiting.shift();
    if (next) next.start(true);
    else this.running--;
  }

  /** True when at least one sink took the alert. */
  private async deliver(alert: Alert): Promise<boolean> {
    const { sent: _sent, suppressed: _suppressed, quieted: _quieted, ...rest } = alert;
    const body = JSON.stringify({ alert: rest } satisfies AlertPayload);
    const sinks: Promise<boolean>[] = this.config.webhooks.map((hook) => this.postWebhook(hook, alert, body));
    if (this.config.command) sinks.push(this.runCommand(this.config.command, alert, body));
    const results = await Promise.all(sinks);
    return results.some(Boolean);
  }

  private async postWebhook(hook: { url: string; headers: Record<string, string> }, alert: Alert, body: string): Promise<boolean> {
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(hook.headers)) if (name.toLowerCase() !== 'content-type') headers[name] = value;
    headers['content-type'] = 'application/json';
    if (!Object.keys(headers).some((name) => name.toLowerCase() === 'user-agent')) headers['user-agent'] = 'understudy-alerts';
    const given = (tries: number) => `${tries} ${tries === 1 ? 'try' : 'tries'}`;
    for (let tries = 1; ; tries++) {
      let outcome: WebhookOutcome;
      let problem: string;
      try {
        const response = await request(hook.url, {
          method: 'POST',
          headers,
          body,
          signal: AbortSignal.any([AbortSignal.timeout(WEBHOOK_TIMEOUT_MS), this.deadline.signal]),
          headersTimeout: WEBHOOK_TIMEOUT_MS,
          bodyTimeout: WEBHOOK_TIMEOUT_MS,
        });
        const text = await response.body.text();
        if (response.statusCode < 300) return true;
        const retryAfter = response.headers['retry-after'];
        outcome = { status: response.statusCode, retryAfter: Array.isArray(retryAfter) ? retryAfter[0] : retryAfter };
        const snippet = text.trim().slice(0, 200);
        problem = `answered ${response.statusCode}${snippet ? `: ${snippet}` : ''}`;
      } catch (error) {
        if (this.deadline.signal.aborted) {
          this.report(`alert "${alert.title}" not delivered to webhook ${redact(hook.url)}: the alerter closed before it answered (${given(tries)})`, error);
          return false;
        }
        outcome = { error };
        problem = describe(error);
      }
      const failure = 'error' in outcome ? outcome.error : new Error(problem);
      const wait = webhookRetryDelay(tries, outcome);
      if (wait === undefined) {
        this.report(`alert "${alert.title}" not delivered to webhook ${redact(hook.url)}: ${problem} (${given(tries)})`, failure);
        return false;
      }
      try {
        if (this.noMoreTries.signal.aborted) throw this.noMoreTries.signal.reason;
        await sleep(wait, undefined, { signal: this.noMoreTries.signal });
      } catch {
        this.report(`alert "${alert.title}" not delivered to webhook ${redact(hook.url)}: ${problem} (${given(tries)}, then the alerter closed)`, failure);
        return false;
      }
    }
  }

  private runCommand(command: string[], alert: Alert, body: string): Promise<boolean> {
    const [program, ...args] = command as [string, ...string[]];
    const fail = (problem: string, error: unknown): false => {
      this.report(`alert "${alert.title}" not delivered to command ${program}: ${problem}`, error);
      return false;
    };
    let child: ChildProcess;
    try {
      child = spawn(program, args, {
        stdio: ['pipe', 'ignore', 'pipe'],
        // Its own process group, so the timeout stops what it started as well.
        detached: true,
        env: {
          ...process.env,
          UNDERSTUDY_ALERT_SEVERITY: alert.severity,
          UNDERSTUDY_ALERT_SERVICE: alert.service,
          UNDERSTUDY_ALERT_KIND: alert.kind,
          UNDERSTUDY_ALERT_TITLE: alert.title,
        },
      });
    } catch (error) {
      // E.g. a NUL byte in the title: the webhooks still get the alert.
      return Promise.resolve(fail(`could not run it: ${describe(error)}`, error));
    }
    return new Promise<boolean>((resolve) => {
      let stderr = '';
      let timedOut = false;
      let settled = false;
      let kill: NodeJS.Timeout | undefined;
      const term = setTimeout(() => {
        timedOut = true;
        const failed = (error: unknown) => this.report(`could not stop command ${program} for alert "${alert.title}"`, error);
        signalGroup(child, 'SIGTERM', failed);
        kill = setTimeout(() => signalGroup(child, 'SIGKILL', failed), COMMAND_KILL_GRACE_MS);
        // The group may outlive its leader; the SIGKILL still comes, but does not hold the process open.
        kill.unref();
      }, COMMAND_TIMEOUT_MS);
      const settle = (sent: boolean) => {
        if (settled) return;
        settled = true;
        clearTimeout(term);
        if (kill && !groupAlive(child)) clearTimeout(kill);
        // A background child of the command may hold these open for as long as it likes.
        child.stdin?.destroy();
        child.stderr?.destroy();
        resolve(sent);
      };
      child.stderr!.setEncoding('utf8');
      child.stderr!.on('data', (chunk: string) => {
        stderr = (stderr + chunk).slice(-500);
      });
      // A command that exits without reading its input breaks the pipe: its exit code decides.
      child.stdin!.on('error', () => {});
      child.stderr!.on('error', () => {});
      child.stdin!.end(body);
      // A program that is not there ends with 'error' and then 'close' (no 'exit'): reported once.
      // `on`, not `once`: a later 'error' without a listener would throw.
      child.on('error', (error) => settle(fail(`could not run it: ${describe(error)}`, error)));
      // 'exit', not 'close': 'close' waits for the stdio pipes, which a background child may keep.
      child.once('exit', (code, signal) => {
        if (settled) return;
        if (code === 0) return settle(true);
        const report = () => {
          clearTimeout(drain);
          const how = timedOut
            ? `killed after ${COMMAND_TIMEOUT_MS / 1000} s`
            : signal
              ? `killed by ${signal}`
              : `exited with code ${code}`;
          const tail = stderr.trim();
          settle(fail(`${how}${tail ? `: ${tail}` : ''}`, new Error(how)));
        };
        // What it wrote before it exited may still be in the pipe.
        const drain = setTimeout(report, COMMAND_STDERR_DRAIN_MS);
        if (child.stderr!.readableEnded) report();
        else child.stderr!.once('end', report);
      });
    });
  }

  private report(message: string, error: unknown): void {
    try {
      this.deps.onError(message, error);
    } catch {
      // The reporter failing must not break delivery or the event log.
    }
  }
}

/** Signals the command's process group; a group that is gone already is no error. Never throws: it runs in a timer. */
function signalGroup(child: ChildProcess, signal: NodeJS.Signals, report: (error: unknown) => void): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ESRCH') report(error);
  }
}

function groupAlive(child: ChildProcess): boolean {
  if (child.pid === undefined) return false;
  try {
    process.kill(-child.pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The URL without user, password, query or fragment: enough to name the sink in a log. */
function redact(url: string): string {
  try {
    const u = new URL(url);
    return `${u.origin}${u.pathname}`;
  } catch {
    return '(invalid URL)';
  }
}

function describe(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  if (error.name === 'TimeoutError' || error.name === 'AbortError') return `no answer within ${WEBHOOK_TIMEOUT_MS / 1000} s`;
  // A refused connection to a name with two addresses is an AggregateError with an empty message.
  const code = (error as NodeJS.ErrnoException).code;
  const message = error.message || (error instanceof AggregateError ? String((error.errors[0] as Error | undefined)?.message ?? '') : '');
  if (!code || message.includes(code)) return message || error.name;
  return message ? `${code}: ${message}` : code;
}

function formatMs(ms: number): string {
  if (ms < 1000) return `${ms} ms`;
  if (ms < 120_000) return `${Math.round(ms / 1000)} s`;
  return `${Math.round(ms / 60_000)} min`;
}
