import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { freePort } from '../../test/support/ports.js';
import { answersOk } from '../http.js';
import { spawnService } from '../services.js';
import { binaryVersion, missingBinary } from './binaries.js';
import type { Backends, ProxyLauncher } from './types.js';

/**
 * The usual failover article's setup. Without `non_idempotent` in proxy_next_upstream,
 * nginx does not retry a POST once it has been sent: kept that way on purpose.
 */
function config({ primaryPort, standbyPort }: Backends, port: number, dir: string): string {
  return `worker_processes auto;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;

  upstream u {
    server 127.0.0.1:${primaryPort} max_fails=1 fail_timeout=10s;
    server 127.0.0.1:${standbyPort} backup;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://u;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream error timeout http_500 http_502 http_503 http_504;
      proxy_connect_timeout 1s;
      proxy_read_timeout 60s;
    }
  }
}
`;
}

export const nginx: ProxyLauncher = {
  name: 'nginx',
  unavailable: () => missingBinary('nginx'),
  version: () => binaryVersion('nginx', 'nginx', /nginx\/(\S+)/),
  async start(backends, dir) {
    const port = await freePort();
    const file = path.join(dir, 'nginx.conf');
    await writeFile(file, config(backends, port, dir));
    const service = spawnService('nginx', 'nginx', ['-p', dir, '-c', file, '-e', path.join(dir, 'error.log'), '-g', 'daemon off;']);
    const url = `http://127.0.0.1:${port}`;
    await service.waitUntilReady(() => answersOk(`${url}/health`));
    return { url, stop: service.stop };
  },
};
