export type ProxyName = 'nginx' | 'haproxy' | 'understudy';

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
  /** Why it cannot run on this machine, or null when it can. */
  unavailable(): string | null;
  version(): string;
  /** Starts it in front of backends, with its files in dir; resolves once it answers. */
  start(backends: Backends, dir: string): Promise<RunningProxy>;
}
