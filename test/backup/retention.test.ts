import { describe, expect, it } from 'vitest';
import { selectRetained, type RetentionCandidate } from '../../src/backup/index.js';

const DAY = 86_400_000;
const at = (iso: string) => Date.parse(iso);
const snap = (id: string, createdAt: number, service = 'tts', knownGood = false): RetentionCandidate => ({ id, service, createdAt, knownGood });
const UTC = { timeZone: 'UTC' };

/** One snapshot a day at 03:00 UTC from Monday 2025-01-06, named d0, d1, …; d39 is Friday 2025-02-14. */
function daily(count: number, service = 'tts'): RetentionCandidate[] {
  return Array.from({ length: count }, (_, i) => snap(`d${i}`, at('2025-01-06T03:00:00Z') + i * DAY, service));
}

const sorted = (set: Set<string>) => [...set].sort((a, b) => Number(a.slice(1)) - Number(b.slice(1)) || (a < b ? -1 : 1));

describe('selectRetained', () => {
  it('keeps exactly last ∪ daily ∪ weekly of 40 daily snapshots', () => {
    const kept = selectRetained(daily(40), { last: 5, daily: 7, weekly: 4 }, UTC);
    // last 5: d35-d39; daily 7: d33-d39; weekly 4: the newest of the ISO weeks of Feb 10 (d39, Fri),
    // Feb 3 (d34, Sun), Jan 27 (d27, Sun), Jan 20 (d20, Sun).
    expect(sorted(kept)).toEqual(['d20', 'd27', 'd33', 'd34', 'd35', 'd36', 'd37', 'd38', 'd39']);
  });

  it('each rule alone', () => {
    const list = daily(40);
    expect(sorted(selectRetained(list, { last: 3, daily: 0, weekly: 0 }, UTC))).toEqual(['d37', 'd38', 'd39']);
    expect(sorted(selectRetained(list, { last: 0, daily: 3, weekly: 0 }, UTC))).toEqual(['d37', 'd38', 'd39']);
    expect(sorted(selectRetained(list, { last: 0, daily: 0, weekly: 6 }, UTC))).toEqual(['d6', 'd13', 'd20', 'd27', 'd34', 'd39']);
    expect(selectRetained(list, { last: 0, daily: 0, weekly: 0 }, UTC).size).toBe(0);
  });

  it('keeps everything when the policy is larger than the history', () => {
    expect(selectRetained(daily(10), { last: 50, daily: 0, weekly: 0 }, UTC).size).toBe(10);
    expect(selectRetained(daily(10), { last: 0, daily: 50, weekly: 0 }, UTC).size).toBe(10);
  });

  it('keeps the newest of a day with several snapshots, and counts only days that have one', () => {
    const list = [
      snap('a1', at('2025-03-01T01:00:00Z')),
      snap('a2', at('2025-03-01T13:00:00Z')),
      snap('b1', at('2025-03-05T08:00:00Z')),
      snap('c1', at('2025-03-20T08:00:00Z')),
      snap('c2', at('2025-03-20T09:00:00Z')),
      snap('c3', at('2025-03-20T10:00:00Z')),
    ];
    // The two most recent days that have a snapshot are Mar 20 and Mar 5, however far apart.
    expect([...selectRetained(list, { last: 0, daily: 2, weekly: 0 }, UTC)].sort()).toEqual(['b1', 'c3']);
    expect([...selectRetained(list, { last: 0, daily: 3, weekly: 0 }, UTC)].sort()).toEqual(['a2', 'b1', 'c3']);
    expect([...selectRetained(list, { last: 2, daily: 1, weekly: 0 }, UTC)].sort()).toEqual(['c2', 'c3']);
  });

  it('always keeps the newest known-good snapshot, older than everything else kept', () => {
    const list = daily(40).map((s) => (s.id === 'd2' || s.id === 'd5' ? { ...s, knownGood: true } : s));
    const kept = selectRetained(list, { last: 3, daily: 0, weekly: 0 }, UTC);
    expect(sorted(kept)).toEqual(['d5', 'd37', 'd38', 'd39']);
    // With nothing else kept, still the known-good one; without one, nothing.
    expect(sorted(selectRetained(list, { last: 0, daily: 0, weekly: 0 }, UTC))).toEqual(['d5']);
  });

  it('applies the policy to each service on its own, with per-service overrides', () => {
    const list = [...daily(10, 'tts'), ...daily(10, 'asr').map((s) => ({ ...s, id: `asr-${s.id}` }))];
    const kept = selectRetained(list, { last: 2, daily: 0, weekly: 0 }, UTC);
    expect([...kept].sort()).toEqual(['asr-d8', 'asr-d9', 'd8', 'd9']);
    const perService = new Map([['asr', { last: 1, daily: 0, weekly: 0 }]]);
    expect([...selectRetained(list, { last: 2, daily: 0, weekly: 0 }, { ...UTC, perService })].sort()).toEqual(['asr-d9', 'd8', 'd9']);
    const knownGood = list.map((s) => (s.id === 'asr-d0' ? { ...s, knownGood: true } : s));
    expect([...selectRetained(knownGood, { last: 1, daily: 0, weekly: 0 }, UTC)].sort()).toEqual(['asr-d0', 'asr-d9', 'd9']);
  });

  it('counts days in the given time zone', () => {
    const list = [
      snap('a', at('2025-03-10T22:00:00Z')),
      snap('b', at('2025-03-10T23:30:00Z')),
      snap('c', at('2025-03-11T00:30:00Z')),
    ];
    const policy = { last: 0, daily: 2, weekly: 0 };
    expect([...selectRetained(list, policy, { timeZone: 'UTC' })].sort()).toEqual(['b', 'c']);
    // All three on Mar 11 in Tokyo (UTC+9) and on Mar 10 in New York (UTC-4): one day, its newest kept, and the day before has none.
    expect([...selectRetained(list, policy, { timeZone: 'Asia/Tokyo' })].sort()).toEqual(['c']);
    expect([...selectRetained(list, policy, { timeZone: 'America/New_York' })].sort()).toEqual(['c']);
    // Tokyo's Mar 11 also holds 14:30Z on Mar 11 (23:30 local), but not 15:30Z (00:30 on Mar 12).
    const later = [...list, snap('d', at('2025-03-11T14:30:00Z')), snap('e', at('2025-03-11T15:30:00Z'))];
    expect([...selectRetained(later, { last: 0, daily: 2, weekly: 0 }, { timeZone: 'Asia/Tokyo' })].sort()).toEqual(['d', 'e']);
  });

  it('uses ISO weeks across the turn of a year', () => {
    const list = [
      snap('sun-2024-w52', at('2024-12-29T12:00:00Z')),
      snap('mon-2025-w01', at('2024-12-30T12:00:00Z')),
      snap('wed-2025-w01', at('2025-01-01T12:00:00Z')),
    ];
    expect([...selectRetained(list, { last: 0, daily: 0, weekly: 1 }, UTC)]).toEqual(['wed-2025-w01']);
    expect([...selectRetained(list, { last: 0, daily: 0, weekly: 2 }, UTC)].sort()).toEqual(['sun-2024-w52', 'wed-2025-w01']);
    const w53 = [snap('thu-2020-w53', at('2020-12-31T12:00:00Z')), snap('sun-2020-w53', at('2021-01-03T12:00:00Z')), snap('mon-2021-w01', at('2021-01-04T12:00:00Z'))];
    expect([...selectRetained(w53, { last: 0, daily: 0, weekly: 2 }, UTC)].sort()).toEqual(['mon-2021-w01', 'sun-2020-w53']);
  });

  it('breaks ties of the same time by id, whatever the input order', () => {
    const t = at('2025-05-01T00:00:00Z');
    const list = [snap('tts-b', t), snap('tts-a', t), snap('tts-c', t)];
    expect([...selectRetained(list, { last: 1, daily: 0, weekly: 0 }, UTC)]).toEqual(['tts-c']);
    expect([...selectRetained([...list].reverse(), { last: 1, daily: 0, weekly: 0 }, UTC)]).toEqual(['tts-c']);
  });

  it('refuses an unknown time zone by name', () => {
    expect(() => selectRetained(daily(1), { last: 1, daily: 0, weekly: 0 }, { timeZone: 'Mars/Olympus' })).toThrow('unknown time zone "Mars/Olympus"');
  });
});
