import { describe, expect, it } from 'vitest';
import { diffConfigs, parseConfig } from '../../src/config/index.js';

/* Which changes of a configuration a running node takes up live, and which need a restart. */

const base = (service = '', instance = '', top = '') => `${top}services:
  tts:
    route: { listen: 18000 }
${service}    instances:
      a: { tier: primary, url: "http://127.0.0.1:7001"${instance} }
      b: { tier: hot, url: "http://127.0.0.1:7002" }
`;
const diff = (a: string, b: string) => diffConfigs(parseConfig(a, '/etc/u.yaml'), parseConfig(b, '/etc/u.yaml'));

describe('live configuration changes', () => {
  it('finds nothing between the same configuration written in another order, or with a default spelled out', () => {
    const reordered = `services:
  tts:
    instances:
      b: { url: "http://127.0.0.1:7002", tier: hot }
      a: { url: "http://127.0.0.1:7001", tier: primary }
    route: { listen: 18000 }
`;
    expect(diff(base(), reordered)).toEqual({ live: [], restart: [] });
    expect(diff(base(), base('    queue: { max: 1000 }\n'))).toEqual({ live: [], restart: [] });
  });

  it("takes a service's policies and an instance's probes and capabilities live", () => {
    const next = base(
      '    timeouts: { firstByte: 5s }\n    retry: { attempts: 2 }\n    failback: after 30s stable\n    limits: { body: 1KiB }\n    passive: { failures: 2 }\n',
      ', capabilities: { prefill: none }, probes: { ready: { http: { path: /ready } } }',
    );
    expect(diff(base(), next)).toEqual({
      live: expect.arrayContaining([
        'services.tts.timeouts',
        'services.tts.retry',
        'services.tts.failback',
        'services.tts.limits',
        'services.tts.passive',
        'services.tts.instances.a.capabilities',
        'services.tts.instances.a.probes',
      ]) as string[],
      restart: [],
    });
  });

  it('needs a restart for listeners, addresses, processes, instances or services added or removed, and top-level sections', () => {
    expect(diff(base(), base().replace('listen: 18000', 'listen: 18001')).restart).toEqual(['services.tts.route']);
    expect(diff(base(), base().replace('7001', '7003')).restart).toEqual(['services.tts.instances.a.url']);
    expect(diff(base(), base('', ', runtime: { type: process, command: [sleep, "1000"] }')).restart).toEqual(['services.tts.instances.a.runtime']);
    expect(diff(base(), base().replace(/\s+b: \{[^}]*\}/, '')).restart).toEqual(['services.tts.instances.b (removed)']);
    expect(diff(base(), `${base()}  asr:\n    route: { listen: 18002 }\n    instances:\n      a: { tier: primary, url: "http://127.0.0.1:7005" }\n`).restart).toEqual(['services.asr (added)']);
    expect(diff(base(), base('', '', 'jobs: { concurrency: 8 }\n')).restart).toEqual(['jobs']);
    const drill = (extra: string) => base(`    drill: { request: { path: /health }${extra} }\n`);
    expect(diff(drill(''), drill(', schedule: "0 3 * * *"'))).toEqual({ live: [], restart: ['services.tts.drill.schedule'] });
    expect(diff(drill(''), drill(', requests: 50'))).toEqual({ live: ['services.tts.drill'], restart: [] });
    const both = diff(base(), base('    timeouts: { idle: 5s }\n', '', 'gateway: { listen: 9000 }\n'));
    expect(both).toEqual({ live: ['services.tts.timeouts'], restart: ['gateway'] });
  });
});
