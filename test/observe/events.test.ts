import { appendFileSync, mkdirSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { UnderstudyEvent } from '../../src/core/index.js';
import { EventLog } from '../../src/observe/index.js';

const event = (n: number): UnderstudyEvent => ({
  type: 'no-ready-instance',
  reason: `reason ${n}`,
  time: 1000 + n,
  service: 'tts',
  traceId: `t${n}`,
});

describe('event log', () => {
  it('writes every event to disk, in order, and reads them back after a restart', async () => {
    const file = path.join(mkdtempSync(path.join(tmpdir(), 'understudy-ev-')), 'events.jsonl');
    const log = new EventLog(file);
    const seen: number[] = [];
    log.subscribe((e) => seen.push(e.time));
    for (let n = 0; n < 50; n++) log.publish(event(n));
    await log.flushed();
    expect(readFileSync(file, 'utf8').trim().split('\n')).toHaveLength(50);
    expect(seen).toHaveLength(50);
    await log.close();

    // A crash mid-write leaves a torn last line: it is skipped, the rest is kept.
    appendFileSync(file, '{"type":"no-ready-inst');
    const again = new EventLog(file);
    await again.loadHistory();
    expect(again.list().map((e) => e.time)).toEqual(Array.from({ length: 50 }, (_, n) => 1000 + n));
    expect(again.list({ since: 1045, limit: 2 }).map((e) => e.reason)).toEqual(['reason 48', 'reason 49']);
  });

  it('a failed write is reported, and publishing goes on', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'understudy-ev-'));
    const file = path.join(dir, 'events.jsonl');
    mkdirSync(file); // a directory where the file should be: every write fails
    const errors: unknown[] = [];
    const log = new EventLog(file, (error) => errors.push(error));
    log.publish(event(1));
    await log.flushed();
    log.publish(event(2));
    await log.flushed();
    expect(errors.length).toBeGreaterThan(0);
    expect(log.list()).toHaveLength(2);
  });
});
