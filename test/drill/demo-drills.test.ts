import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Understudy } from '../../src/controller/index.js';
import { DrillError, FAULT_KINDS } from '../../src/drill/index.js';
import { demo } from '../support/demo.js';

describe('drills against the bundled demo', () => {
  let app: Understudy;
  let stateDir: string;

  beforeAll(async () => {
    stateDir = mkdtempSync(path.join(tmpdir(), 'understudy-drills-'));
    app = await demo(stateDir);
    await app.start();
    const tts = app.service('tts')!;
    await tts.waitFor((s) => s.active === 'primary' && s.instances.hot!.state === 'ready' && s.instances.primary!.admitted, 60_000, undefined, 'the demo up');
  }, 90_000);

  afterAll(async () => {
    await app?.close(2000);
    if (process.env.KEEP_DRILLS) console.log(`drill reports kept in ${stateDir}/drills`);
    else rmSync(stateDir, { recursive: true, force: true });
  });

  // One drill per fault kind, in turn on one running demo: each must leave it as it found it for the next.
  it.each(FAULT_KINDS.map((fault) => [fault]))(
    'drills %s: no failed request, no lost job item, the service back as it was, a report with a timeline',
    async (fault) => {
      const report = await app.drills.run({ service: 'tts', fault });

      expect(report.requests.failures).toEqual([]);
      expect(report.notes.filter((n) => n.startsWith('the drill'))).toEqual([]);
      expect(report).toMatchObject({ service: 'tts', fault, passed: true });
      expect(report.instances).toEqual(fault === 'cold-start' ? ['primary', 'hot'] : ['primary']);
      expect(report.requests.sent).toBeGreaterThan(20);
      expect(report.job).toMatchObject({ items: 10, succeeded: 10, lost: 0 });
      expect(report.recoveredMs).not.toBeNull();
      expect(report.restoredMs).not.toBeNull();
      // Noticed by Understudy: the instance left service (error and slow faults by passive health).
      expect(report.detectedMs).not.toBeNull();
      // Traffic moved off the faulted instance to another one, and came back to the primary.
      const answeredBy = new Set(report.samples.filter((s) => s.sentAt > report.faultAt && s.ok).map((s) => s.instance));
      expect(answeredBy.has(fault === 'cold-start' ? 'cold' : 'hot')).toBe(true);
      expect(report.after).toEqual(report.before);
      expect(report.before).toEqual({ active: 'primary', states: { primary: 'ready', hot: 'ready', cold: 'stopped' } });

      const dir = path.join(stateDir, 'drills', report.id);
      const svg = readFileSync(path.join(dir, 'timeline.svg'), 'utf8');
      expect(svg).toMatch(/<svg[^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
      expect(svg).toContain(fault);
      expect(readFileSync(path.join(dir, 'report.md'), 'utf8')).toContain('PASSED');
      expect(existsSync(path.join(dir, 'report.json'))).toBe(true);
      const finished = app.events.list({ type: 'drill-finished' }).at(-1);
      expect(finished).toMatchObject({ drill: report.id, passed: true, failedRequests: 0, lostItems: 0, report: dir });
    },
    120_000,
  );

  it('lists the reports kept, and refuses what it cannot drill, changing nothing', async () => {
    const listed = await app.drills.list('tts');
    expect(listed.map((d) => d.fault)).toEqual([...FAULT_KINDS]);
    expect(listed.every((d) => d.passed)).toBe(true);
    // What the drills caused (the cold-start's moment with no ready instance) raised alerts that were kept, not sent.
    const raised = app.alerts.recent({ service: 'tts' });
    expect(raised.map((a) => a.kind)).toContain('no-ready-instance');
    expect(raised.filter((a) => !a.quieted?.startsWith('caused by drill'))).toEqual([]);

    // The ASR service has no probe request configured: refused, with the reason.
    expect(() => app.drills.begin({ service: 'asr', fault: 'kill' })).toThrow(/set drill.request/);
    expect(() => app.drills.begin({ service: 'tts', fault: 'kill', instance: 'nope' })).toThrow(/no instance nope/);
    expect(() => app.drills.begin({ service: 'tts', fault: 'kill', instance: 'cold' })).toThrow(/cold is stopped/);
    expect(() => app.drills.begin({ service: 'tts', fault: 'cold-start', instance: 'primary' })).toThrow(DrillError);
    const running = app.drills.begin({ service: 'tts', fault: 'error', instance: 'hot' });
    expect(() => app.drills.begin({ service: 'tts', fault: 'kill' })).toThrow(/already running/);
    const report = await running.done;
    // A standby carries no traffic: clients were not affected, and the report says so.
    expect(report).toMatchObject({ passed: true, recoveredMs: 0 });
    expect(report.notes.join(' ')).toMatch(/carried no traffic/);
  }, 120_000);
});
