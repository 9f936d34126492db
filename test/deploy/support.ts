import { request } from 'undici';
import { MODEL_SERVER_PATH } from '../support/fixture.js';
import type { RunningGateway } from '../support/gateway.js';

export interface Seen {
  ok: number;
  failed: string[];
  byVersion: Map<string, number>;
}

/**
 * Requests to /v1/infer through the gateway from four clients until `stop` settles,
 * bounded by `max` requests and 90 s; counts what the clients saw and which version answered.
 */
export async function load(gateway: RunningGateway, stop: Promise<unknown>, max = 5000): Promise<Seen> {
  let done = false;
  void stop.finally(() => (done = true)).catch(() => {});
  const seen: Seen = { ok: 0, failed: [], byVersion: new Map() };
  const deadline = Date.now() + 90_000;
  const worker = async () => {
    while (!done && seen.ok + seen.failed.length < max && Date.now() < deadline) {
      try {
        const answer = await request(`${gateway.url}/v1/infer`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
        const text = await answer.body.text();
        if (answer.statusCode !== 200) seen.failed.push(`${answer.statusCode} ${text.slice(0, 120)}`);
        else {
          seen.ok += 1;
          const { version } = JSON.parse(text) as { version: string };
          seen.byVersion.set(version, (seen.byVersion.get(version) ?? 0) + 1);
        }
      } catch (error) {
        seen.failed.push(String(error));
      }
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
  return seen;
}

/** The version an instance reports on /version. */
export async function versionOf(port: number): Promise<string> {
  const answer = await request(`http://127.0.0.1:${port}/version`);
  return ((await answer.body.json()) as { version: string }).version;
}

/**
 * YAML for one instance run by Understudy from the model-server fixture, loading the
 * model directory `DIR/models/${version}`, so each version is its own directory.
 */
export function versionedInstance(dir: string, name: string, tier: string, port: number, latencyMs = 5): string {
  return `
      ${name}:
        tier: ${tier}
        url: http://127.0.0.1:${port}
        runtime:
          type: process
          command: [${process.execPath}, ${MODEL_SERVER_PATH}, --port, "${port}", --name, ${name}, --latency, "${latencyMs}", --model-dir, "${dir}/models/\${version}"]
          stopGrace: 2s
          restartDelay: 200ms
        probes:
          startup: { http: { path: /health }, interval: 50ms, budget: 20s }
          ready: { http: { path: /health }, interval: 200ms, fall: 2 }`;
}
