import { existsSync, readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { freePort } from '../../test/support/ports.js';
import { getJson } from '../http.js';
import { spawnService } from '../services.js';
import type { ProxyLauncher, RunningProxy } from './types.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const CLI = path.join(REPO, 'dist/cli/main.js');
const TOKEN = 'bench-token';

export interface UnderstudyEvent {
  /** Epoch ms. */
  time: number;
  type: string;
  service: string;
  instance?: string;
}

interface UnderstudyStatus {
  services: Record<string, { active: string | null }>;
}

export interface UnderstudyGateway extends RunningProxy {
  events(service: string): Promise<UnderstudyEvent[]>;
  /** GET on the admin API, with the token. */
  admin<T>(route: string): Promise<T>;
  /** The admin API's origin (the dashboard is at /ui/) and its token. */
  adminUrl: string;
  token: string;
  /** The `understudy up` process, for its CPU time. */
  pid: number;
}

/** What each instance of a benchmark service probes, unless it says otherwise. */
export const readyProbe = { ready: { http: { path: '/health' }, interval: '1s' } };

/**
 * Runs `understudy up` with the given services and resolves once the admin API
 * reports `expect.instance` active for `expect.service`.
 */
export async function startUnderstudy(services: Record<string, unknown>, dir: string, expect: { service: string; instance: string }): Promise<UnderstudyGateway> {
  const [gatewayPort, adminPort] = [await freePort(), await freePort()];
  const file = path.join(dir, 'understudy.yaml');
  await mkdir(path.join(dir, 'state'), { recursive: true });
  await writeFile(
    file,
    stringify({
      stateDir: path.join(dir, 'state'),
      gateway: { listen: `127.0.0.1:${gatewayPort}` },
      admin: { listen: `127.0.0.1:${adminPort}`, token: TOKEN },
      log: { level: 'warn', access: false },
      services,
    }),
  );

  const service = spawnService('understudy', process.execPath, [CLI, 'up', '-c', file], REPO);
  const admin = (route: string) => getJson<unknown>(`http://127.0.0.1:${adminPort}${route}`, { authorization: `Bearer ${TOKEN}` });
  await service.waitUntilReady(async () => {
    const status = (await admin('/v1/status')) as UnderstudyStatus;
    return status.services[expect.service]?.active === expect.instance;
  }, 20_000);

  return {
    url: `http://127.0.0.1:${gatewayPort}`,
    adminUrl: `http://127.0.0.1:${adminPort}`,
    token: TOKEN,
    pid: service.proc.pid!,
    stop: service.stop,
    admin: <T>(route: string) => admin(route) as Promise<T>,
    async events(name) {
      const body = (await admin(`/v1/events?service=${encodeURIComponent(name)}`)) as { events: UnderstudyEvent[] };
      return body.events;
    },
  };
}

export const understudy: ProxyLauncher = {
  name: 'understudy',
  unavailable: () => (existsSync(CLI) ? null : `${path.relative(REPO, CLI)} is missing: run npm run build`),
  version() {
    const { version } = JSON.parse(readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { version: string };
    return `understudy ${version}`;
  },
  start: ({ primaryPort, standbyPort }, dir) =>
    startUnderstudy(
      {
        infer: {
          route: { pathPrefix: '/' },
          instances: {
            primary: { tier: 'primary', url: `http://127.0.0.1:${primaryPort}`, probes: readyProbe },
            standby: { tier: 'hot', url: `http://127.0.0.1:${standbyPort}`, probes: readyProbe },
          },
        },
      },
      dir,
      { service: 'infer', instance: 'primary' },
    ),
};
