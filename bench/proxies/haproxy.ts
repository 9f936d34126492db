import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { freePort } from '../../test/support/ports.js';
import { answersOk } from '../http.js';
import { spawnService } from '../services.js';
import { binaryVersion, missingBinary } from './binaries.js';
import type { Backends, ProxyLauncher } from './types.js';

/** Active health checks on /health, the standby as a backup server. */
function config({ primaryPort, standbyPort }: Backends, port: number): string {
  return `global
  maxconn 4096

defaults
  mode http
  timeout connect 1s
  timeout client 60s
  timeout server 60s
  option redispatch
  retries 3

frontend gateway
  bind 127.0.0.1:${port}
  default_backend models

backend models
  option httpchk GET /health
  server p 127.0.0.1:${primaryPort} check inter 1s fall 3 rise 2
  server s 127.0.0.1:${standbyPort} check inter 1s fall 3 rise 2 backup
`;
}

export const haproxy: ProxyLauncher = {
  name: 'haproxy',
  unavailable: () => missingBinary('haproxy'),
  version: () => binaryVersion('haproxy', 'HAProxy', /HAProxy version (\S+)/),
  async start(backends, dir) {
    const port = await freePort();
    const file = path.join(dir, 'haproxy.cfg');
    await writeFile(file, config(backends, port));
    const service = spawnService('haproxy', 'haproxy', ['-db', '-f', file]);
    const url = `http://127.0.0.1:${port}`;
    await service.waitUntilReady(() => answersOk(`${url}/health`));
    return { url, stop: service.stop };
  },
};
