import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../../src/config/index.js';

function mistakes(text: string): string[] {
  try {
    parseConfig(text, 'u.yaml');
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as ConfigError).issues.map((i) => `${i.line}:${i.column} ${i.field}: ${i.message}`);
  }
  throw new Error('expected the configuration to be refused');
}

const ok = (extra = '') => `services:\n  tts:\n    route: { listen: 18000 }\n${extra}    instances:\n      a: { tier: primary, url: "http://127.0.0.1:7001" }\n`;

describe('configuration', () => {
  it('fills in documented defaults, in milliseconds and bytes', () => {
    const config = parseConfig(ok(), '/etc/understudy/u.yaml');
    const service = config.services[0]!;
    expect(config.stateDir).toBe('/etc/understudy/.understudy');
    expect(config.admin.listen).toEqual({ host: '127.0.0.1', port: 9901 });
    expect(service.failback).toEqual({ policy: 'never' });
    expect(service.timeouts).toEqual({ firstByte: 60_000, firstToken: 30_000, idle: 30_000, total: 1_800_000 });
    expect(service.retry).toMatchObject({
      attempts: 3,
      statuses: [500, 502, 503, 504, 429],
      bodyLimit: 1_048_576,
      inflightOnDown: true,
      sameInstance: { statuses: [500], times: 1 },
      rateLimited: { maxWait: 2000, retries: 2, backoff: 250 },
      afterTimeout: 1,
      contextLength: { statuses: [400, 413, 422] },
    });
    expect(service.streams).toEqual({ resume: true, keepText: 1_048_576 });
    expect(service.queue).toEqual({ max: 1000, timeout: 30_000 });
    expect(service.passive).toEqual({ failures: 5, slowFactor: 10, slowMin: 500, slow: 3, ejectFor: 30_000 });
    const instance = service.instances[0]!;
    expect(instance.id).toBe('tts/a');
    expect(instance.runtime).toEqual({ type: 'external' });
    expect(instance.capabilities).toEqual({ prefill: 'auto' });
    expect(instance.probes.ready).toEqual({ http: { path: '/health' }, timeout: 1000, interval: 2000, suspectInterval: 500, rise: 2, fall: 3 });
    // Without a startup probe, start-up is judged by the ready check with a start-up budget.
    expect(instance.probes.startup).toEqual({ http: { path: '/health' }, timeout: 1000, interval: 500, budget: 300_000 });
  });

  it('reads durations, sizes and failback policies with units', () => {
    const service = parseConfig(
      ok('    failback: after 90s stable\n    timeouts: { firstByte: 1.5s, idle: 2m, total: 1h }\n    retry: { bodyLimit: 512KiB }\n'),
      'u.yaml',
    ).services[0]!;
    expect(service.failback).toEqual({ policy: 'after', stableMs: 90_000 });
    expect(service.timeouts).toEqual({ firstByte: 1500, firstToken: 30_000, idle: 120_000, total: 3_600_000 });
    expect(service.retry.bodyLimit).toBe(512 * 1024);
  });

  it('names the line, column and field of a value of the wrong type', () => {
    expect(mistakes(ok('    version: { expect: 1.0 }\n    queue: { max: many }\n'))).toEqual([
      '4:24 services.tts.version.expect: expected string, received number (write it in quotes)',
      '5:19 services.tts.queue.max: expected number, received string',
    ]);
  });

  it('names the line of a YAML syntax error', () => {
    expect(mistakes('services:\n  tts: {}\n  tts: {}\n')).toEqual(['3:3 : Map keys must be unique']);
  });

  it('points a missing field at its parent', () => {
    expect(mistakes('services:\n  tts:\n    instances: {}\n')).toEqual(['3:5 services.tts.route: is required']);
  });

  it('refuses address clashes between listeners', () => {
    expect(mistakes(ok().replace('listen: 18000', 'listen: 9901'))).toEqual([
      '3:22 services.tts.route.listen: 127.0.0.1:9901 is already used by admin.listen',
    ]);
  });
});

describe('docker runtime and backups', () => {
  const docker = (runtime: string, extra = '', top = '') =>
    `${top}services:\n  tts:\n    route: { listen: 18000 }\n${extra}    instances:\n      a:\n        tier: cold\n        url: "http://127.0.0.1:7001"\n        runtime: ${runtime}\n`;

  it('reads a docker runtime like `docker run` takes it, with paths relative to the config file', () => {
    const config = parseConfig(
      docker(
        '{ type: docker, image: "tts:1", ports: ["7001:8000"], volumes: ["models:/models:ro"], gpus: all, memory: 8GiB, shmSize: 1GiB, requires: [models] }',
      ),
      '/srv/u.yaml',
    );
    expect(config.services[0]!.instances[0]!.runtime).toEqual({
      type: 'docker',
      image: 'tts:1',
      env: {},
      ports: [{ hostIp: '127.0.0.1', hostPort: 7001, containerPort: 8000, protocol: 'tcp' }],
      volumes: [{ host: '/srv/models', container: '/models', readOnly: true }],
      network: 'bridge',
      gpus: 'all',
      init: true,
      memory: 8 * 1024 ** 3,
      shmSize: 1024 ** 3,
      pull: 'never',
      stopGrace: 10_000,
      requires: ['/srv/models'],
      restartDelay: 1000,
      restartDelayMax: 30_000,
    });
    expect(config.docker.socket).toBe(process.env.DOCKER_HOST?.startsWith('unix://') ? process.env.DOCKER_HOST.slice(7) : '/var/run/docker.sock');
    expect(config.backup).toEqual({ dir: '/srv/.understudy/snapshots', retention: { last: 5, daily: 7, weekly: 4 } });
  });

  it('names a bad port, volume, gpu request and network clash', () => {
    expect(
      mistakes(docker('{ type: docker, image: x, ports: ["7001"], volumes: ["models"], gpus: 0 }')),
    ).toEqual([
      '8:52 services.tts.instances.a.runtime.ports.0: expected "[host-ip:]host-port:container-port" such as "127.0.0.1:7001:8000", got "7001"',
      '8:71 services.tts.instances.a.runtime.volumes.0: expected "host-path:/container/path[:ro]", got "models"',
      '8:88 services.tts.instances.a.runtime.gpus: expected "all", a count of 1 or more, or a list of device ids',
    ]);
    expect(mistakes(docker('{ type: docker, image: x, network: host, ports: ["7001:8000"] }'))).toEqual([
      "8:66 services.tts.instances.a.runtime.ports: with network: host the container uses this machine's ports directly; remove ports",
    ]);
  });

  it('refuses ${version} in a runtime when the service pins no version', () => {
    expect(mistakes(docker('{ type: docker, image: "tts:${version}" }'))).toEqual([
      '8:18 services.tts.instances.a.runtime: uses ${version} but the service pins no version: set version.expect',
    ]);
  });

  it('reads a service backup and refuses image snapshots without a registry or a docker instance', () => {
    const config = parseConfig(
      docker('{ type: docker, image: x }', '    backup: { paths: [models/tts], images: true, schedule: "0 3 * * *" }\n', 'backup: { registry: "127.0.0.1:5000", retention: { last: 2 } }\n'),
      '/srv/u.yaml',
    );
    expect(config.services[0]!.backup).toEqual({ paths: ['/srv/models/tts'], images: true, schedule: '0 3 * * *', onConfigChange: true });
    expect(config.backup.retention).toEqual({ last: 2, daily: 7, weekly: 4 });
    expect(mistakes(docker('{ type: docker, image: x }', '    backup: { images: true, schedule: "every night" }\n'))).toEqual([
      '4:39 services.tts.backup.schedule: expected a cron schedule such as "0 3 * * *" (minute hour day month weekday)',
    ]);
    expect(mistakes(docker('{ type: docker, image: x }', '    backup: { images: true }\n'))).toEqual([
      '4:23 services.tts.backup.images: image snapshots are pushed to a registry: set backup.registry',
    ]);
    expect(mistakes(docker('{ type: process, command: [x] }', '    backup: { images: true }\n', 'backup: { registry: "r:5000" }\n'))).toEqual([
      '5:23 services.tts.backup.images: the service has no docker instance whose image could be kept',
    ]);
  });
});

describe('drills and alerts', () => {
  it('fills in drill and alert defaults, and reads webhooks as URLs or objects', () => {
    const config = parseConfig(
      `alerts: { webhooks: ["http://127.0.0.1:9/hook", { url: "https://pager.example/x", headers: { authorization: "Bearer t" } }], repeatAfter: 1m }\n${ok('    drill: { request: { path: /health }, schedule: "0 4 * * 1", faults: [error] }\n')}`,
      'u.yaml',
    );
    expect(config.services[0]!.drill).toMatchObject({ requests: 400, rate: 20, jobItems: 10, hold: 5000, timeout: 120_000, faults: ['error'] });
    expect(config.alerts).toEqual({
      webhooks: [
        { url: 'http://127.0.0.1:9/hook', headers: {} },
        { url: 'https://pager.example/x', headers: { authorization: 'Bearer t' } },
      ],
      minSeverity: 'warning',
      repeatAfter: 60_000,
    });
  });

  it('refuses a scheduled drill without a probe request, faults the instances cannot take, and a slow fault past firstByte', () => {
    expect(mistakes(ok('    drill: { schedule: "0 4 * * 1", faults: [kill, cold-start], delay: 3m }\n'))).toEqual([
      '4:24 services.tts.drill.schedule: a drill sends a probe request: set drill.request (or deploy.smoke)',
      '4:45 services.tts.drill.faults: kill needs every warm instance run by Understudy (not external)',
      '4:45 services.tts.drill.faults: cold-start needs a cold standby and every warm instance run by Understudy',
      '4:72 services.tts.drill.delay: must be below timeouts.firstByte (60000ms): a longer hold is a timeout, not a slow answer',
    ]);
    expect(mistakes(ok('    drill: { faults: [explode] }\n'))[0]).toMatch(/services.tts.drill.faults.0: /);
    expect(mistakes(`alerts: { webhooks: [ftp://x] }\n${ok()}`)[0]).toMatch(/alerts.webhooks.0: /);
  });
});
