export type ProxyName = 'nginx' | 'haproxy' | 'understudy' | 'node-floor';

/** The model servers a proxy fronts: the primary, and a standby for when it fails. */
export interface Backends {
  primaryPort: number;
  standbyPort: number;
}

export interface RunningProxy {
  url: string;
  stop(): Promise<void>;
}

export interface ProxyLauncher {
  name: ProxyName;
  /** A reference that does no failover: measured in the overhead scenario only. */
  overheadOnly?: boolean;
  /** Why it cannot run on this machine, or null when it can. */
  unavailable(): string | null;
  version(): string;
  /** Starts it in front of backends, with its files in dir; resolves once it answers. */
  start(backends: Backends, dir: string): Promise<RunningProxy>;
}
