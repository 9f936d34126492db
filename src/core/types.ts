import type { Tier } from '../config/index.js';

export type InstanceState = 'stopped' | 'starting' | 'ready' | 'suspect' | 'down' | 'draining' | 'quarantined';

/** What the failover machine knows of one instance. Plain data: copied, never shared. */
export interface InstanceStatus {
  name: string;
  tier: Tier;
  priority: number;
  /** Whether Understudy runs the instance (and so can stop and restart it). */
  supervised: boolean;
  state: InstanceState;
  /** When the instance entered its state (ms). */
  since: number;
  /** Why it is in its state, in words. */
  reason: string;
  /** Consecutive successful ready probes while down. */
  successes: number;
  /** Consecutive failed ready probes while ready or suspect. */
  failures: number;
  /** The version the instance last reported; undefined until read. */
  version: string | undefined;
  /** Serves a version the service admits (always true when none is pinned). */
  admitted: boolean;
  /** The version problem last reported, so a problem that persists is reported once, not at every read. */
  versionProblem: string | undefined;
  /** Times of recent failures, for flap damping. */
  failureTimes: number[];
  /** Restarts since the instance was last ready, for the restart backoff. */
  restarts: number;
  /** End of the start-up budget while starting. */
  startDeadline: number | undefined;
  /** When a down, supervised instance is started again. */
  restartAt: number | undefined;
  /** Probes cannot bring back a passively ejected instance before this time. */
  ejectedUntil: number | undefined;
  /** Stopped or drained on purpose: not started again until resumed. */
  maintenance: boolean;
}

/**
 * How the current active instance was chosen, which decides what may move it:
 * `normal`: a better instance takes over as soon as it is ready (e.g. the primary after boot);
 * `failed-over`: the failback policy decides; `pinned`: a person chose it, only a failure moves it.
 */
export type ActiveMode = 'normal' | 'failed-over' | 'pinned';

export interface ServiceStatus {
  name: string;
  active: string | null;
  mode: ActiveMode;
  /** Whether the service ever had an active instance (the first choice is `initial`). */
  everActive: boolean;
  /**
   * Versions an instance may serve to be admitted, the service's pinned one first;
   * two only while a deploy watches a new version with the old one kept ready. Empty when none is pinned.
   */
  expected: string[];
  instances: Record<string, InstanceStatus>;
}

/** A durable job's life (see src/jobs): it runs until every item has a result, or a person pauses or cancels it. */
export type JobState = 'running' | 'paused' | 'succeeded' | 'failed' | 'cancelled';

export type MoveKind = 'initial' | 'failover' | 'switchover' | 'failback' | 'recovered';

/** Every change of state is one of these; the timeline, metrics, logs and alerts are views of them. */
export type EventBody =
  | { type: 'instance-state'; instance: string; from: InstanceState; to: InstanceState; reason: string }
  | { type: 'active-changed'; from: string | null; to: string; kind: MoveKind; reason: string }
  | { type: 'no-ready-instance'; reason: string }
  | { type: 'quarantined'; instance: string; failures: number; withinMs: number; reason: string }
  | { type: 'version-mismatch'; instance: string; expected: string; actual: string | null; reason: string }
  | { type: 'ejection-skipped'; instance: string; reason: string }
  | { type: 'restart-scheduled'; instance: string; delayMs: number; reason: string }
  | { type: 'start-failed'; instance: string; reason: string }
  | { type: 'orphan-stopped'; instance: string; pid: number; reason: string }
  | { type: 'job-state'; job: string; from: JobState | null; to: JobState; done: number; total: number; reason: string }
  | { type: 'job-resumed'; job: string; done: number; total: number; reason: string }
  | { type: 'item-failed'; job: string; item: number; attempts: number; status: number | null; final: boolean; reason: string }
  | { type: 'deploy-started'; from: string; to: string; reason: string }
  | { type: 'deploy-step'; to: string; instance: string | null; step: DeployStep; reason: string }
  | { type: 'deploy-failed'; from: string; to: string; reason: string }
  | { type: 'deploy-finished'; to: string; reason: string }
  | { type: 'rollback-started'; from: string; to: string; reason: string }
  | {
      type: 'rollback-finished';
      from: string;
      to: string;
      /** From the first failure seen on the bad version (or the rollback's start) to `to` serving everywhere. */
      durationMs: number;
      ok: boolean;
      reason: string;
    }
  | SnapshotEventBody
  | DrillEventBody
  | StreamEventBody
  | ClusterEventBody
  | OperatorEventBody;

/**
 * A person asked for something through the admin API (the dashboard or the CLI):
 * `by` is who they said they are, `via` what they used, `outcome` whether it was taken up.
 */
export type OperatorEventBody = {
  type: 'operator-action';
  action: string;
  target: string;
  by: string;
  via: string;
  outcome: 'accepted' | 'refused';
  reason: string;
};

/** Per (instance, model) health and streams that moved: see docs/streams.md. */
export type StreamEventBody =
  /** One model's answers on an instance failed `passive.failures` times in a row: its requests go elsewhere for `passive.ejectFor`. */
  | { type: 'model-ejected'; instance: string; model: string; forMs: number; reason: string }
  /** A request for the model succeeded on the instance again after its ejection. */
  | { type: 'model-restored'; instance: string; model: string; reason: string }
  /** A stream that broke mid-answer goes on from another instance; the client reads one answer. */
  | {
      type: 'stream-continued';
      from: string;
      to: string;
      stream: 'chat' | 'completions' | 'segments';
      requestId: string;
      /** Text (characters and content chunks) the client had at the seam, for a generation. */
      atChars?: number;
      atTokens?: number;
      /** The first segment the continuation sent, for a segmented stream. */
      atSegment?: number;
      reason: string;
    }
  /** A stream broke and could not be continued: the client was told in band and the connection ended without a clean end. */
  | {
      type: 'stream-cut';
      instance: string;
      stream: 'chat' | 'completions' | 'segments';
      requestId: string;
      atChars?: number;
      atTokens?: number;
      atSegment?: number;
      reason: string;
    };

/** A drill's start and end: see docs/recovery.md. */
export type DrillEventBody =
  | { type: 'drill-started'; drill: string; fault: string; instances: string[]; trigger: 'manual' | 'schedule'; reason: string }
  | {
      type: 'drill-finished';
      drill: string;
      fault: string;
      instances: string[];
      passed: boolean;
      /** Cut short by a shutdown: neither passed nor a finding about the service. */
      aborted: boolean;
      /** From the fault to the first good answer from an instance it did not hit. */
      recoveredMs: number | null;
      failedRequests: number;
      lostItems: number;
      /** The report's folder. */
      report: string;
      reason: string;
    }
  | { type: 'drill-skipped'; fault: string; reason: string };

/** A cluster's leadership and coordination, published with service "*": see docs/cluster.md. */
export type ClusterEventBody =
  /** Who leads changed, as this node saw it (`node` is this node). */
  | { type: 'leader-changed'; node: string; leader: string | null; previous: string | null; epoch: number | null; self: boolean; reason: string }
  /** etcd stopped answering this node: it serves on the routing it has, and takes no leader action. */
  | { type: 'coordination-lost'; node: string; reason: string }
  | { type: 'coordination-restored'; node: string; reason: string }
  /** This node started or stopped a cold standby it runs, on the leader's word (its desired state in etcd). */
  | { type: 'desired-state'; node: string; instance: string; state: 'running' | 'stopped'; leader: string; reason: string }
  /** This node took up a revision of the shared configuration, live (`changed`: the fields). */
  | { type: 'config-applied'; node: string; revision: number; previous: number | null; changed: string[]; reason: string }
  /** This node kept what it runs: the revision needs a restart here, or this node cannot read it (`reason`). */
  | { type: 'config-refused'; node: string; revision: number; running: number | null; reason: string }
  /**
   * The config file, read again on SIGHUP (`systemctl reload`): its changes taken up live,
   * or all of it refused (a mistake in it, or a field only a restart takes up: `restart`).
   */
  | { type: 'config-reloaded'; file: string; outcome: 'applied' | 'refused'; changed: string[]; restart: string[]; reason: string };

/** A snapshot's lifecycle: see docs/recovery.md. */
export type SnapshotEventBody =
  | { type: 'snapshot-created'; snapshot: string; version: string | null; trigger: string; bytes: number; newBytes: number; reason: string }
  | { type: 'snapshot-failed'; version: string | null; trigger: string; reason: string }
  | { type: 'snapshots-pruned'; deleted: string[]; freedBytes: number; reason: string }
  /** `snapshot verify` re-read a service's snapshots: which it checked, which are damaged. */
  | { type: 'snapshots-verified'; checked: string[]; damaged: string[]; reason: string }
  | { type: 'snapshot-restored'; snapshot: string; version: string | null; reason: string };

/** The steps of a deploy, in order: see docs/recovery.md. */
export type DeployStep = 'backup' | 'upgrade' | 'smoke' | 'switch' | 'watch' | 'complete' | 'known-good';

export type EventType = EventBody['type'];

/** An event as stored and shown: the body plus when, where and a trace id. */
export type UnderstudyEvent = EventBody & { time: number; service: string; traceId: string };

/** What happens to a service: facts observed by runtimes, probes, traffic, commands and the clock. */
export type Input =
  | { type: 'boot' }
  | { type: 'tick' }
  | { type: 'probe'; instance: string; probe: 'startup' | 'ready'; ok: boolean; detail: string }
  | { type: 'version'; instance: string; version: string | undefined; detail: string }
  | { type: 'passive'; instance: string; hard: boolean; reason: string }
  | { type: 'exited'; instance: string; code: number | null; signal: string | null }
  | { type: 'start-failed'; instance: string; reason: string }
  | { type: 'switchover'; to: string | undefined; reason?: string }
  | { type: 'drain'; instance: string }
  | { type: 'drained'; instance: string }
  /** Ends maintenance; `start: false` leaves a stopped instance stopped (a cold standby back in its place). */
  | { type: 'resume'; instance: string; start?: boolean }
  /** Forgets an instance's recent failures (a drill caused them on purpose), so they count toward no quarantine. */
  | { type: 'forgive'; instance: string }
  /** A deploy or rollback changes which versions are admitted. */
  | { type: 'expect'; versions: string[] };

/** What the machine asks the controller to do. */
export type Action =
  | { type: 'start'; instance: string }
  | { type: 'stop'; instance: string; reason: string }
  | { type: 'abort-inflight'; instance: string; reason: string }
  | { type: 'check-version'; instance: string }
  | { type: 'emit'; event: EventBody };

export interface Step {
  state: ServiceStatus;
  actions: Action[];
  /** Set when a command cannot be carried out; the state is then unchanged. */
  rejected?: string;
}
