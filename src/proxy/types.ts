import type { Dispatcher } from 'undici';
import type { PrefillShape, ServiceConfig } from '../config/index.js';
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
  /** The instance's declared context window in tokens (capabilities.contextWindow). */
  readonly contextWindow: number | undefined;
  /**
   * How the instance continues a final assistant message: its capabilities.prefill, or
   * for `auto` what its GET /v1/models says (read once per start of the instance).
   */
  prefill(): Promise<Exclude<PrefillShape, 'auto'>>;
  /** Aborted when the instance is declared down while the attempt runs, or by `abort`. */
  readonly signal: AbortSignal;
  /** Ends the attempt early (the client left, the total timeout passed). */
  abort(reason: Error): void;
  /** The response head arrived after `ms`. */
  firstByte(ms: number): void;
  /**
   * The attempt ended; its outcome feeds passive health. Call once. A `status` outcome
   * (the instance answered, about its model) of a request that names a model counts
   * against that (instance, model) pair, not the whole instance.
   */
  finish(outcome: AttemptOutcome, detail: string): void;
}

/** What one request needs of the instance its next attempt goes to. */
export interface Want {
  /** The request's model: instances whose breaker for it is open are passed over while another can take it. */
  model?: string | undefined;
  /** Instances that cannot take the request (a continuation they cannot do). */
  exclude?: ReadonlySet<string> | undefined;
  /** This instance again if it is still routable (a 429 waited out, a 500 tried once more). */
  same?: string | undefined;
  /** Only instances that declare a context window larger than this many tokens. */
  contextAbove?: number | undefined;
  /** Longest wait in the queue for a ready instance, when shorter than queue.timeout (a continuation: timeouts.idle). */
  queueFor?: number | undefined;
}

/** What the data plane needs of a service: where to send the next attempt. */
export interface Upstreams {
  readonly config: ServiceConfig;
  /**
   * The instance for the next attempt, preferring ones not in `tried`. Waits in the
   * service's bounded queue while no instance is ready; rejects with a ProxyError
   * (503) when the queue is full or its timeout passes, or with the abort reason.
   */
  acquire(tried: ReadonlySet<string>, signal: AbortSignal, want?: Want): Promise<Attempt>;
  /** The instances other than `besides` that could take a request with `want` now, without waiting; best first. */
  others(besides: string, want?: Want): string[];
}
