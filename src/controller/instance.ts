import { Pool } from 'undici';
import type { InstanceConfig, PrefillShape } from '../config/index.js';
import { ModelBreakers, PassiveDetector } from '../health/index.js';
import type { InjectedFault } from '../proxy/index.js';
import type { Runtime } from '../runtime/index.js';
import type { Timer } from '../core/index.js';

/** Attempts that ended, and falls out of service (into down or quarantined), since an instance began its version. */
export interface Outcomes {
  attempts: number;
  failed: number;
  firstFailedAt: number | undefined;
  downs: number;
}

export function newOutcomes(): Outcomes {
  return { attempts: 0, failed: 0, firstFailedAt: undefined, downs: 0 };
}

/** Everything with a lifetime that belongs to one instance. */
export class InstanceHandle {
  readonly url: URL;
  readonly pool: Pool;
  readonly passive: PassiveDetector;
  /** Health per model this instance serves, for requests that name one. */
  readonly models: ModelBreakers;
  /** How the instance takes a continuation, once read from it (capabilities.prefill: auto), for one generation. */
  prefill: { generation: number; shape: Promise<Exclude<PrefillShape, 'auto'>> } | undefined;
  /** Abort functions of the attempts now running on this instance. */
  readonly inflight = new Set<(reason: Error) => void>();
  /** Bumped at each start and each fall from service, so outcomes of an earlier run never judge a fresh one. */
  generation = 0;
  /** The generation whose start has finished: a startup probe before then could reach the old process. */
  launched = -1;
  /** What the probe loop does now; a change starts a new loop. */
  probeMode: string = 'none';
  /** The current probe loop's identity: a loop that is no longer current stops at its next turn. */
  probeLoop: object | undefined;
  probeTimer: Timer | undefined;
  versionTimer: Timer | undefined;

  /** A fault a drill injects in front of this instance, while it runs. */
  fault: InjectedFault | undefined;

  /** What happened on this instance since `release` began, for a deploy's watch; replaced (not reset) at each version change. */
  outcomes: Outcomes = newOutcomes();

  constructor(
    /** Replaced by a live change of the configuration (probes, capabilities); the process and address never change. */
    public config: InstanceConfig,
    /** Replaced when a deploy or rollback moves the instance to another version. */
    public runtime: Runtime,
    /** The version this instance's runtime was made for (`${version}` resolved); undefined when none is pinned. */
    public release: string | undefined,
    passive: ConstructorParameters<typeof PassiveDetector>[0] & { ejectFor: number },
  ) {
    this.url = new URL(config.url);
    this.passive = new PassiveDetector(passive);
    this.models = new ModelBreakers({ failures: passive.failures, ejectFor: passive.ejectFor });
    // A generous pool: model servers hold requests for a long time, and a connect
    // that takes over 2s on a local network means the host is gone.
    this.pool = new Pool(this.url.origin, { connections: 256, keepAliveTimeout: 30_000, connect: { timeout: 2000 } });
  }

  stopTimers(): void {
    this.probeTimer?.cancel();
    this.versionTimer?.cancel();
    this.probeTimer = undefined;
    this.versionTimer = undefined;
    this.probeMode = 'none';
    this.probeLoop = undefined;
  }
}
