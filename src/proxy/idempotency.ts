import { createHash } from 'node:crypto';

/** An answer kept for repeats of an Idempotency-Key. */
export interface Reply {
  /** Hash of the request's method, path and body: a repeat must match it. */
  fingerprint: string;
  status: number;
  headers: Record<string, string | string[]>;
  body: Buffer;
  expiresAt: number;
}

/** Where finished answers are kept (the job store), so a repeat after a restart is still answered once. */
export interface ReplyStore {
  get(scope: string, key: string, now: number): Promise<Reply | undefined>;
  put(scope: string, key: string, reply: Reply, now: number): Promise<void>;
}

export type Claim =
  /** This request runs; call `finish` with the answer to keep, or undefined to release the key. */
  | { kind: 'run'; finish(reply: Omit<Reply, 'fingerprint' | 'expiresAt'> | undefined): Promise<void> }
  | { kind: 'replay'; reply: Reply }
  /** The key was used for a different request. */
  | { kind: 'mismatch' };

interface Running {
  fingerprint: string;
  done: Promise<Reply | undefined>;
}

/**
 * Answers each Idempotency-Key once: the first request runs, repeats wait for its
 * answer (while it runs) or get the kept answer (for `ttlMs` after). Answers of 5xx,
 * 408, 425, 429 (try again later), gateway errors and broken responses are not kept,
 * so a repeat runs again.
 */
export class Idempotency {
  private readonly running = new Map<string, Running>();

  constructor(
    private readonly store: ReplyStore,
    readonly ttlMs: number,
    readonly maxResponse: number,
    private readonly now: () => number = Date.now,
  ) {}

  static fingerprint(method: string, path: string, body: Buffer | null): string {
    return createHash('sha256')
      .update(`${method}\n${path}\n`)
      .update(body ?? Buffer.alloc(0))
      .digest('hex');
  }

  async claim(scope: string, key: string, fingerprint: string): Promise<Claim> {
    const id = `${scope}\u0000${key}`;
    for (;;) {
      const running = this.running.get(id);
      if (!running) break;
      if (running.fingerprint !== fingerprint) return { kind: 'mismatch' };
      const reply = await running.done;
      if (reply) return { kind: 'replay', reply };
      // The first run kept no answer: the next waiter to get here runs it.
    }
    // Registered before the store is asked, so a repeat arriving meanwhile waits on this one.
    let settle!: (reply: Reply | undefined) => void;
    const done = new Promise<Reply | undefined>((resolve) => (settle = resolve));
    this.running.set(id, { fingerprint, done });
    let kept: Reply | undefined;
    try {
      kept = await this.store.get(scope, key, this.now());
    } catch (error) {
      this.running.delete(id);
      settle(undefined);
      throw error;
    }
    if (kept) {
      this.running.delete(id);
      // Waiters registered under this request's fingerprint: a kept answer for another request is not theirs.
      const same = kept.fingerprint === fingerprint;
      settle(same ? kept : undefined);
      return same ? { kind: 'replay', reply: kept } : { kind: 'mismatch' };
    }
    return {
      kind: 'run',
      finish: async (answer) => {
        let reply: Reply | undefined;
        try {
          if (answer) {
            const now = this.now();
            reply = { ...answer, fingerprint, expiresAt: now + this.ttlMs };
            await this.store.put(scope, key, reply, now);
          }
        } finally {
          this.running.delete(id);
          settle(reply);
        }
      },
    };
  }
}
