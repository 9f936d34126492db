import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { parseConfig } from '../../src/config/index.js';
import { Understudy } from '../../src/controller/index.js';
import type { UnderstudyEvent } from '../../src/core/index.js';

export interface RunningGateway {
  app: Understudy;
  /** Base URL of the first gateway listener. */
  url: string;
  stateDir: string;
  /** Resolves with the first event (past or future) that matches; rejects after timeoutMs. */
  event(match: (event: UnderstudyEvent) => boolean, timeoutMs?: number, what?: string): Promise<UnderstudyEvent>;
  close(): Promise<void>;
}

const running = new Set<RunningGateway>();

/**
 * Runs Understudy in the test's process on a YAML config (`STATE` is replaced by a
 * fresh state directory). Instances are real processes; only the gateway shares
 * the test's event loop.
 */
export async function startGateway(yaml: string): Promise<RunningGateway> {
  const stateDir = mkdtempSync(path.join(tmpdir(), 'understudy-test-'));
  const config = parseConfig(yaml.replaceAll('STATE', stateDir), path.join(stateDir, 'understudy.yaml'));
  const app = new Understudy(config, { log: pino({ level: process.env.TEST_LOG ?? 'silent' }) });
  await app.start();
  const [address] = app.gatewayAddresses();
  const gateway: RunningGateway = {
    app,
    url: `http://127.0.0.1:${address!.port}`,
    stateDir,
    event(match, timeoutMs = 15_000, what = 'event') {
      const past = app.events.list().find(match);
      if (past) return Promise.resolve(past);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          unsubscribe();
          const seen = app.events.list().map((e) => `${e.type} ${'instance' in e ? e.instance : ''} ${e.reason}`);
          reject(new Error(`no ${what} within ${timeoutMs}ms; events so far:\n${seen.join('\n')}`));
        }, timeoutMs);
        const unsubscribe = app.events.subscribe((event) => {
          if (!match(event)) return;
          clearTimeout(timer);
          unsubscribe();
          resolve(event);
        });
      });
    },
    async close() {
      running.delete(gateway);
      await app.close(2000);
      rmSync(stateDir, { recursive: true, force: true });
    },
  };
  running.add(gateway);
  return gateway;
}

export async function closeAllGateways(): Promise<void> {
  await Promise.all([...running].map((g) => g.close()));
}

/**
 * A config with one service, `infer`, on every path of a gateway on a free port;
 * `body` is the rest of the service (instances, policies), written from column 0.
 */
/** A service of two instances given by URL: `primary` and a hot standby `standby`. */
export function primaryAndStandby(primary: string, standby: string): string {
  return inferService(`
instances:
  primary: { tier: primary, url: "${primary}" }
  standby: { tier: hot, url: "${standby}" }
`);
}

export function inferService(body: string): string {
  const service = body
    .trim()
    .split('\n')
    .map((line) => `    ${line}`)
    .join('\n');
  return `stateDir: STATE\ngateway: { listen: "127.0.0.1:0" }\nservices:\n  infer:\n    route: { pathPrefix: / }\n${service}\n`;
}

/** Matchers for the events tests wait on. */
export const on = {
  active: (to: string, kind?: string) => (e: UnderstudyEvent) =>
    e.type === 'active-changed' && e.to === to && (kind === undefined || e.kind === kind),
  state: (instance: string, to: string) => (e: UnderstudyEvent) => e.type === 'instance-state' && e.instance === instance && e.to === to,
  type: (type: UnderstudyEvent['type'], instance?: string) => (e: UnderstudyEvent) =>
    e.type === type && (instance === undefined || ('instance' in e && e.instance === instance)),
};
