import type { InstanceState } from '../core/index.js';

/**
 * What a drill does to an instance: `kill` (SIGKILL its process group), `hang` (SIGSTOP),
 * `error` and `slow` (the gateway answers its attempts with errors, or holds them, as
 * Envoy's fault filter does), `cold-start` (every warm instance is lost, so the cold
 * standby must start and serve). The list lives with the config, which names them.
 */
export { FAULT_KINDS, type FaultKind } from '../config/index.js';
import type { FaultKind } from '../config/index.js';

/** One probe request of a drill, as its client saw it. Times are ms from the drill's start. */
export interface ProbeSample {
  sentAt: number;
  endedAt: number;
  /** HTTP status, or null when no answer came (connection error, timeout). */
  status: number | null;
  /** The instance that answered (the gateway's x-understudy-instance header), if any. */
  instance: string | null;
  ok: boolean;
  /** Why it failed, when it did. */
  error: string | null;
}

/** An instance in one state over a stretch of the drill (ms from the drill's start; `to` is the drill's end for the last span). */
export interface StateSpan {
  instance: string;
  state: InstanceState;
  from: number;
  to: number;
  /** Whether the instance carried the service's traffic (was active) during this span. */
  active: boolean;
}

/** A moment of the drill worth a line on the timeline. */
export interface DrillMark {
  at: number;
  kind: 'fault' | 'detected' | 'recovered' | 'lifted' | 'restored' | 'event';
  label: string;
}

/** Latencies of the probe requests that succeeded, in ms. */
export interface LatencySummary {
  p50: number | null;
  p99: number | null;
  max: number | null;
}

/** What one drill did and found: kept as report.json, and rendered as report.md and timeline.svg. */
export interface DrillReport {
  id: string;
  service: string;
  fault: FaultKind;
  /** The instance(s) the fault hit: for cold-start, every warm instance. */
  instances: string[];
  trigger: 'manual' | 'schedule';
  /** Wall-clock start (epoch ms); every other time in the report is ms from here. */
  startedAt: number;
  /** Length of the whole drill in ms. */
  durationMs: number;
  /** When the fault began, and when it was lifted (null when it ends by itself, as a kill does). */
  faultAt: number;
  liftedAt: number | null;
  /** The drill passed: no failed probe request, no lost job item, and the original state back. */
  passed: boolean;
  /** Cut short by a shutdown of Understudy: not a finding about the service. */
  aborted: boolean;
  /** In words: why it passed or failed. */
  verdict: string;
  /** From the fault to Understudy taking the instance out of service; null if it never did. */
  detectedMs: number | null;
  /** From the fault to the first good answer from an instance the fault did not hit; 0 when no traffic was on the faulted instance. */
  recoveredMs: number | null;
  /** From the fault to the service back as it was before the drill; null if it was not restored. */
  restoredMs: number | null;
  requests: {
    sent: number;
    ok: number;
    failed: number;
    /** The first few failures, in words. */
    failures: string[];
    /** Before the fault, and from the fault until it was restored. */
    before: LatencySummary;
    during: LatencySummary;
  };
  /**
   * The job run through the drill, if any: items lost (every try failed), unfinished (still
   * pending when the drill ended) and redone (tried more than once).
   */
  job: { id: string; items: number; succeeded: number; lost: number; unfinished: number; redone: number } | null;
  /** Which instance was active and each one's state, before the drill and at its end. */
  before: { active: string | null; states: Record<string, InstanceState> };
  after: { active: string | null; states: Record<string, InstanceState> };
  samples: ProbeSample[];
  spans: StateSpan[];
  marks: DrillMark[];
  /** Anything else worth knowing (a restart that took long, a fault that could not be lifted). */
  notes: string[];
}
