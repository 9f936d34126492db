import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
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

  describe('rotation', () => {
    const lineBytes = `${JSON.stringify(event(10))}\n`.length;
    const lines = (file: string) => readFileSync(file, 'utf8').trim().split('\n').map((line) => (JSON.parse(line) as UnderstudyEvent).time);

    it('moves a full file to events.1.jsonl, the older ones up, removes what is past keepFiles, and reads the newest back after a restart', async () => {
      const dir = mkdtempSync(path.join(tmpdir(), 'understudy-ev-'));
      const file = path.join(dir, 'events.jsonl');
      // Ten events a file: the size is passed by the write that makes the tenth.
      const rotation = { maxFileSize: lineBytes * 10, keepFiles: 2 };
      const log = new EventLog(file, undefined, 10_000, rotation);
      for (let n = 10; n < 45; n++) {
        log.publish(event(n));
        await log.flushed(); // one event a write, so each file holds exactly ten
      }
      await log.close();
      expect(readdirSync(dir).sort()).toEqual(['events.1.jsonl', 'events.2.jsonl', 'events.jsonl']);
      const time = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => 1000 + from + i);
      expect(lines(path.join(dir, 'events.2.jsonl'))).toEqual(time(20, 30));
      expect(lines(path.join(dir, 'events.1.jsonl'))).toEqual(time(30, 40));
      expect(lines(file)).toEqual(time(40, 45));

      // After a restart: the newest events, oldest first, across the files; a small `keep` stops at what it needs.
      const again = new EventLog(file, undefined, 10_000, rotation);
      await again.loadHistory();
      expect(again.list().map((e) => e.time)).toEqual(time(20, 45));
      const some = new EventLog(file, undefined, 12, rotation);
      await some.loadHistory();
      expect(some.list().map((e) => e.time)).toEqual(time(33, 45));

      // Writing on after the restart fills the file it found, then rotates again: 40..49 moves up, 20..29 goes.
      for (let n = 45; n < 50; n++) {
        again.publish(event(n));
        await again.flushed();
      }
      await again.close();
      expect(lines(path.join(dir, 'events.1.jsonl'))).toEqual(time(40, 50));
      expect(lines(path.join(dir, 'events.2.jsonl'))).toEqual(time(30, 40));
      expect(existsSync(path.join(dir, 'events.3.jsonl'))).toBe(false);
      expect(existsSync(file)).toBe(false); // opened by the next write

      // keepFiles lowered: the next rotation removes the rotated files past it too.
      const fewer = new EventLog(file, undefined, 10_000, { ...rotation, keepFiles: 1 });
      for (let n = 50; n < 60; n++) {
        fewer.publish(event(n));
        await fewer.flushed();
      }
      await fewer.close();
      expect(readdirSync(dir).sort()).toEqual(['events.1.jsonl']);
      expect(lines(path.join(dir, 'events.1.jsonl'))).toEqual(time(50, 60));
    });

    it('never rotates with maxFileSize 0', async () => {
      const dir = mkdtempSync(path.join(tmpdir(), 'understudy-ev-'));
      const log = new EventLog(path.join(dir, 'events.jsonl'), undefined, 10_000, { maxFileSize: 0, keepFiles: 2 });
      for (let n = 0; n < 30; n++) log.publish(event(n));
      await log.close();
      expect(readdirSync(dir)).toEqual(['events.jsonl']);
      expect(lines(path.join(dir, 'events.jsonl'))).toHaveLength(30);
    });
  });
});
