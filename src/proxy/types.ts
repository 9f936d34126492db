import type { Dispatcher } from 'undici';
import type { ServiceConfig } from '../config/index.js';
import type { AttemptOutcome } from '../health/index.js';

/** One try of a request on one instance, handed out by the controller. */
export interface Attempt {
  readonly instance: string;
  readonly url: URL;
  readonly dispatcher: Dispatcher;
  /** Aborted when the instance is declared down while the attempt runs, or by `abort`. */
  readonly signal: AbortSignal;
  /** Ends the attempt early (the client left, the total timeout passed). */
  abort(reason: Error): void;
  /** The response head arrived after `ms`. */
  firstByte(ms: number): void;
  /** The attempt ended; its outcome feeds passive health. Call once. */
  finish(outcome: AttemptOutcome, detail: string): void;
}

/** What the data plane needs of a service: where to send the next attempt. */
export interface Upstreams {
  readonly config: ServiceConfig;
  /**
   * The instance for the next attempt, preferring ones not in `tried`. Waits in the
   * service's bounded queue while no instance is ready; rejects with a ProxyError
   * (503) when the queue is full or its timeout passes, or with the abort reason.
   */
  acquire(tried: ReadonlySet<string>, signal: AbortSignal): Promise<Attempt>;
}
