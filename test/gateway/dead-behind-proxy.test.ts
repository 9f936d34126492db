import { once } from 'node:events';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { MODEL_SERVER_PATH, startModelServer, stopAll } from '../support/fixture.js';
import { closeAllGateways, on, startGateway } from '../support/gateway.js';
import { freePort } from '../support/ports.js';
import { runLoad } from '../support/load.js';

afterEach(async () => {
  await closeAllGateways();
  await stopAll();
});

/**
 * A TCP front for a model server, as docker-proxy is for a container's published port:
 * while `dead`, it accepts each connection and closes it at once, as docker-proxy does
 * once the container behind it has died. No process exit is ever seen by Understudy.
 */
async function proxyFront(target: number): Promise<{ port: number; kill(): void; close(): void }> {
  let dead = false;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    if (dead) return void socket.destroy();
    const upstream = net.connect(target, '127.0.0.1');
    socket.pipe(upstream).pipe(socket);
    const end = () => {
      socket.destroy();
      upstream.destroy();
    };
    socket.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as net.AddressInfo).port,
    kill() {
      dead = true;
      for (const socket of sockets) socket.destroy();
    },
    close() {
      for (const socket of sockets) socket.destroy();
      server.close();
    },
  };
}

describe('an instance that dies behind a proxy that still accepts connections', () => {
  it('is taken out by its failing probe, and the requests wait for the cold standby instead of failing', async () => {
    const model = await startModelServer({ name: 'primary', latencyMs: 20, waitFor: 'ready' });
    const front = await proxyFront(Number(new URL(model.url).port));
    const coldPort = await freePort();
    try {
      const gateway = await startGateway(`
stateDir: STATE
gateway: { listen: "127.0.0.1:0" }
admin: { listen: "127.0.0.1:0" }
services:
  infer:
    route: { pathPrefix: / }
    instances:
      primary:
        tier: primary
        url: "http://127.0.0.1:${front.port}"
        probes: { ready: { http: { path: /health }, interval: 1s, fall: 2 } }
      cold:
        tier: cold
        url: "http://127.0.0.1:${coldPort}"
        runtime: { type: process, command: [${process.execPath}, ${MODEL_SERVER_PATH}, --port, "${coldPort}", --name, cold, --latency, "20"] }
        probes: { startup: { http: { path: /health }, interval: 50ms, budget: 20s } }
`);
      await gateway.event(on.active('primary'), 10_000, 'primary active');

      let answered = 0;
      const run = await runLoad({
        url: `${gateway.url}/v1/infer`,
        method: 'POST',
        body: '{}',
        headers: { 'content-type': 'application/json' },
        rate: 50,
        durationMs: 3000,
        timeoutMs: 15_000,
        tagHeader: 'x-understudy-instance',
        onResult: () => {
          if (++answered === 25) front.kill();
        },
      });
      const failed = run.results.filter((r) => r.error !== null || r.status !== 200).map((r) => `${r.status} ${r.error}`);
      expect(failed).toEqual([]);
      expect(new Set(run.results.map((r) => r.tag))).toEqual(new Set(['primary', 'cold']));
      // Taken out by probes (its own failing probe, and the regular loop's), not by an exit.
      expect(gateway.app.events.list({ type: 'instance-state' }).some((e) => e.type === 'instance-state' && e.instance === 'primary' && e.to === 'down')).toBe(true);
    } finally {
      front.close();
    }
  }, 60_000);
});
