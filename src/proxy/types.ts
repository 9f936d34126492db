import type { Dispatcher } from 'undici';
import type { ServiceConfig } from '../config/index.js';
import type { AttemptOutcome } from '../health/index.js';

/**
 * A fault a drill puts in front of one instance, as Envoy's fault filter does: its
 * attempts are answered with `status` by the gateway itself, or held `delayMs` before
 * they are sent. The instance and its health probes are untouched.
 */
export type InjectedFault = { kind: 'error'; status: number } | { kind: 'slow'; delayMs: number };

/** One try of a request on one instance, handed out by the controller. */
export interface Attempt {
  readonly instance: string;
  readonly url: URL;
  readonly dispatcher: Dispatcher;
  /** Set while a drill injects a fault in front of the instance. */
  readonly fault?: InjectedFault;
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
