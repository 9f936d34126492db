import { describe, expect, it } from 'vitest';
import { createLogger, LogRing, NO_INSTANCE, RecentTraffic, type TrafficReport } from '../../src/observe/index.js';

/** A RecentTraffic on a clock the test moves; `at(ms)` sets it. */
function traffic(start = 1_000_000) {
  let now = start;
  const recent = new RecentTraffic(() => now);
  return {
    recent,
    at: (ms: number) => void (now = ms),
    record: (fields: Partial<TrafficReport> = {}) =>
      recent.record({ service: 'tts', instance: 'primary', method: 'POST', path: '/v1/audio/speech', requestId: 'r', status: 200, outcome: 'ok', ms: 10, ...fields }),
  };
}

describe('recent traffic, one bucket per instance and second', () => {
  it('counts requests and errors (error, cut or 5xx; a client that left is not an error) once the second is over', () => {
    const { recent, at, record } = traffic();
    at(10_100);
    record();
    record({ status: 201 });
    record({ status: 404 });
    record({ outcome: 'error', status: 502 });
    record({ outcome: 'cut', status: 200 });
    at(10_900);
    record({ status: 503 });
    record({ outcome: 'client-abort', status: 499 });
    // The second is still open: nothing to show, nothing closed.
    expect(recent.tick()).toEqual({});
    expect(recent.series()).toEqual({});
    at(11_000);
    const closed = recent.tick();
    expect(closed).toEqual({ tts: { primary: { t: 10, n: 7, errors: 3, p50: 10, p95: 10 } } });
    expect(recent.series()).toEqual({ tts: { primary: [closed.tts!.primary] } });
    // Closed once: the next tick has nothing more.
    expect(recent.tick()).toEqual({});
  });

  it('computes p50 and p95 of the second latencies, rounded to 0.01 ms', () => {
    const { recent, at, record } = traffic();
    at(20_000);
    // 30 fast, 7 middling, 3 slow, out of order: the median is fast, the 95th percentile slow.
    const latencies = [...Array<number>(30).fill(10), ...Array<number>(7).fill(50), ...Array<number>(3).fill(500)];
    for (const ms of latencies.reverse()) record({ ms });
    at(21_000);
    record({ instance: 'hot', ms: 12.3456 });
    at(22_000);
    recent.tick();
    expect(recent.series().tts).toEqual({
      primary: [{ t: 20, n: 40, errors: 0, p50: 10, p95: 500 }],
      hot: [{ t: 21, n: 1, errors: 0, p50: 12.35, p95: 12.35 }],
    });
  });

  it('counts every request of a busy second, while the quantiles come from a sample', () => {
    const { recent, at, record } = traffic();
    at(30_000);
    for (let i = 0; i < 2000; i++) record({ ms: 7, status: i % 4 === 0 ? 500 : 200 });
    at(31_000);
    expect(recent.tick().tts!.primary).toEqual({ t: 30, n: 2000, errors: 500, p50: 7, p95: 7 });
  });

  it('keeps instances and services apart, and a second closes when the next one of its instance begins', () => {
    const { recent, at, record } = traffic();
    at(40_500);
    record({ instance: 'primary', ms: 1 });
    record({ instance: 'hot', ms: 2 });
    record({ service: 'asr', instance: 'primary', ms: 3 });
    at(41_200);
    // A request in a new second closes that instance's previous one, without a tick.
    record({ instance: 'primary', ms: 4 });
    expect(recent.series()).toEqual({ tts: { primary: [{ t: 40, n: 1, errors: 0, p50: 1, p95: 1 }] } });
    at(42_000);
    recent.tick();
    expect(recent.series()).toEqual({
      tts: {
        primary: [
          { t: 40, n: 1, errors: 0, p50: 1, p95: 1 },
          { t: 41, n: 1, errors: 0, p50: 4, p95: 4 },
        ],
        hot: [{ t: 40, n: 1, errors: 0, p50: 2, p95: 2 }],
      },
      asr: { primary: [{ t: 40, n: 1, errors: 0, p50: 3, p95: 3 }] },
    });
  });

  it(`files a request no instance answered under ${NO_INSTANCE}`, () => {
    const { recent, at, record } = traffic();
    at(50_000);
    record({ instance: null, status: 503, outcome: 'error', requestId: 'nobody', ms: 0.5 });
    at(51_000);
    expect(recent.tick()).toEqual({ tts: { [NO_INSTANCE]: { t: 50, n: 1, errors: 1, p50: 0.5, p95: 0.5 } } });
    // In the list of last requests it is said as it is: no instance.
    expect(recent.lastRequests().tts).toEqual([
      { time: 50_000, requestId: 'nobody', instance: null, method: 'POST', path: '/v1/audio/speech', status: 503, outcome: 'error', ms: 0.5 },
    ]);
  });

  it('keeps the last 300 seconds of an instance and drops older ones', () => {
    const { recent, at, record } = traffic();
    const first = 100_000;
    for (let s = 0; s < 310; s++) {
      at((first + s) * 1000 + 500);
      record({ ms: s });
    }
    at((first + 310) * 1000);
    recent.tick();
    const seconds = recent.series().tts!.primary!;
    expect(seconds).toHaveLength(300);
    expect(seconds[0]!.t).toBe(first + 10);
    expect(seconds.at(-1)!.t).toBe(first + 309);
    // Oldest first, one entry per second.
    expect(seconds.map((s) => s.t)).toEqual(Array.from({ length: 300 }, (_, i) => first + 10 + i));
  });

  it('hands every closed second to exactly one tick, also one closed on the request path by a later request', () => {
    const { recent, at, record } = traffic();
    at(10_900);
    record();
    at(11_100);
    record(); // begins second 11, which closes second 10 on the request path
    at(11_500);
    const a = recent.tick();
    at(12_500);
    const b = recent.tick();
    expect([a, b].map((t) => Object.values(t.tts ?? {}).map((s) => s.t))).toEqual([[10], [11]]);
    // Steady traffic, a request every 250 ms and a tick each second: no second is lost or repeated.
    const ticked: number[] = [];
    for (let ms = 13_000; ms < 23_000; ms += 250) {
      at(ms);
      record();
      if (ms % 1000 === 500) ticked.push(...Object.values(recent.tick().tts ?? {}).map((s) => s.t));
    }
    expect(ticked).toEqual([13, 14, 15, 16, 17, 18, 19, 20, 21]);
  });

  it('settle() closes what is over for the API without taking it from the next tick', () => {
    const { recent, at, record } = traffic();
    at(40_200);
    record();
    at(45_000);
    // No page watching, nothing ticking: the request's second is still open until settled.
    expect(recent.series()).toEqual({});
    recent.settle();
    expect(recent.series().tts!.primary!.map((s) => s.t)).toEqual([40]);
    expect(Object.keys(recent.tick().tts ?? {})).toEqual(['primary']);
  });

  it('forgets an instance that got no more traffic once its seconds are older than the window', () => {
    const { recent, at, record } = traffic();
    at(1_000_000);
    record({ instance: 'old-primary' });
    at(1_001_000);
    recent.tick();
    expect(Object.keys(recent.series().tts!)).toEqual(['old-primary']);
    at(1_301_000);
    recent.tick();
    expect(recent.series()).toEqual({});
  });

  it('takes the nearest rank for quantiles: of 20 samples, p95 is the 19th, p50 the 10th', () => {
    const { recent, at, record } = traffic();
    at(90_000);
    for (let ms = 1; ms <= 20; ms++) record({ ms });
    at(91_000);
    expect(recent.tick().tts!.primary).toMatchObject({ n: 20, p50: 10, p95: 19 });
  });

  it('leaves out the seconds without traffic', () => {
    const { recent, at, record } = traffic();
    at(60_000);
    record();
    at(65_000);
    record();
    at(66_000);
    recent.tick();
    expect(recent.series().tts!.primary!.map((s) => s.t)).toEqual([60, 65]);
  });

  it('keeps the last 20 requests of each service, oldest first', () => {
    const { recent, at, record } = traffic();
    for (let i = 0; i < 25; i++) {
      at(70_000 + i * 100);
      record({ requestId: `req-${i}`, instance: i % 2 === 0 ? 'primary' : 'hot', ms: i + 0.123 });
    }
    at(80_000);
    record({ service: 'asr', requestId: 'asr-0' });
    const last = recent.lastRequests();
    expect(last.tts!.map((r) => r.requestId)).toEqual(Array.from({ length: 20 }, (_, i) => `req-${i + 5}`));
    expect(last.tts!.at(-1)).toEqual({ time: 72_400, requestId: 'req-24', instance: 'primary', method: 'POST', path: '/v1/audio/speech', status: 200, outcome: 'ok', ms: 24.12 });
    expect(last.asr!.map((r) => r.requestId)).toEqual(['asr-0']);
    // A copy: the caller cannot change what is kept.
    last.tts!.length = 0;
    expect(recent.lastRequests().tts).toHaveLength(20);
  });
});

describe('log ring', () => {
  const line = (requestId: string, msg = 'request') => `${JSON.stringify({ level: 30, requestId, msg })}\n`;

  it('finds the lines that mention a request id, oldest first, parsed', () => {
    const ring = new LogRing();
    ring.write(line('req-aaaa', 'first'));
    ring.write(line('req-bbbb'));
    ring.write(line('req-aaaa', 'second'));
    ring.write('not json, about req-aaaa\n');
    expect(ring.find('req-aaaa')).toEqual([
      { level: 30, requestId: 'req-aaaa', msg: 'first' },
      { level: 30, requestId: 'req-aaaa', msg: 'second' },
      { msg: 'not json, about req-aaaa' },
    ]);
    expect(ring.find('req-cccc')).toEqual([]);
    // An empty search is not "every line".
    expect(ring.find('')).toEqual([]);
  });

  it('answers at most `limit` lines, the newest', () => {
    const ring = new LogRing();
    for (let i = 0; i < 10; i++) ring.write(line('req-many', `line ${i}`));
    expect(ring.find('req-many', 3)).toEqual(['line 7', 'line 8', 'line 9'].map((msg) => ({ level: 30, requestId: 'req-many', msg })));
  });

  it('drops the oldest lines past its capacity', () => {
    const small = new LogRing(3);
    for (let i = 0; i < 5; i++) small.write(line(`req-${i}`));
    expect([0, 1, 2, 3, 4].map((i) => small.find(`req-${i}`).length)).toEqual([0, 0, 1, 1, 1]);

    // The default keeps 5000.
    const ring = new LogRing();
    for (let i = 0; i <= 5000; i++) ring.write(line(`id-${i}.`));
    expect(ring.find('id-0.')).toEqual([]);
    expect(ring.find('id-1.')).toHaveLength(1);
    expect(ring.find('id-5000.')).toHaveLength(1);
  });

  it("receives createLogger's lines at the logger's level, beside its output", () => {
    const ring = new LogRing();
    const written: string[] = [];
    const log = createLogger('info', ring, { write: (line: string) => void written.push(line) });
    log.debug({ requestId: 'req-debug' }, 'below the level');
    log.info({ requestId: 'req-ring-1', instance: 'hot' }, 'request');
    expect(ring.find('req-debug')).toEqual([]);
    const [found, ...rest] = ring.find('req-ring-1') as Record<string, unknown>[];
    expect(rest).toEqual([]);
    expect(found).toMatchObject({ level: 30, app: 'understudy', requestId: 'req-ring-1', instance: 'hot', msg: 'request' });
    expect(new Date(found!.time as string).getTime()).not.toBeNaN();
    // The output got the same line, as JSON.
    expect(written.map((line) => JSON.parse(line) as unknown)).toEqual([found]);
  });
});
