import { describe, expect, it } from 'vitest';
import { Idempotency, type Reply, type ReplyStore } from '../../src/proxy/index.js';

/* The claim logic of Idempotency-Key, with a store whose lookups finish when the test says. */

/** Lookups wait until `answer()`, then find `kept`. */
function slowStore(kept: Reply | undefined): { store: ReplyStore; answer(): void } {
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  return {
    store: { get: () => gate.then(() => kept), put: async () => {} },
    answer: () => open(),
  };
}

const reply = (fingerprint: string): Reply => ({ fingerprint, status: 200, headers: {}, body: Buffer.from('A'), expiresAt: Date.now() + 60_000 });

describe('Idempotency', () => {
  it('a repeat waiting on a lookup that finds another body\'s answer is refused, not given that answer', async () => {
    const { store, answer } = slowStore(reply('fingerprint-A'));
    const idempotency = new Idempotency(store, 60_000, 1024);
    // Two requests with body B under a key kept for body A: the second waits on the first's lookup.
    const first = idempotency.claim('svc', 'k', 'fingerprint-B');
    const second = idempotency.claim('svc', 'k', 'fingerprint-B');
    answer();
    expect((await first).kind).toBe('mismatch');
    expect((await second).kind).toBe('mismatch');
  });

  it('a repeat waiting on a run in flight gets its answer once kept', async () => {
    const { store, answer } = slowStore(undefined);
    const idempotency = new Idempotency(store, 60_000, 1024);
    const first = idempotency.claim('svc', 'k', 'fp');
    const second = idempotency.claim('svc', 'k', 'fp');
    answer();
    const run = await first;
    expect(run.kind).toBe('run');
    if (run.kind === 'run') await run.finish({ status: 200, headers: {}, body: Buffer.from('done') });
    const repeat = await second;
    expect(repeat.kind).toBe('replay');
    expect(repeat.kind === 'replay' && repeat.reply.body.toString()).toBe('done');
  });
});
