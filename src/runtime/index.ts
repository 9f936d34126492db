import path from 'node:path';
import type { InstanceConfig } from '../config/index.js';
import { DockerRuntime } from './docker.js';
import { ProcessRuntime } from './process.js';
import { ExternalRuntime, type Runtime } from './runtime.js';

export { DockerRuntime, type DockerRuntimeOptions } from './docker.js';
export { ProcessRuntime } from './process.js';
export { ExternalRuntime, StartError, type Runtime } from './runtime.js';

export interface RuntimeOptions {
  /** The Docker Engine's Unix socket, for docker instances. Default /var/run/docker.sock. */
  dockerSocket?: string;
}

/** `onOrphan` hears of an instance left running by an earlier Understudy, as it is stopped. */
export function createRuntime(
  instance: InstanceConfig,
  stateDir: string,
  onOrphan?: (pid: number, detail: string) => void,
  options: RuntimeOptions = {},
): Runtime {
  const name = `${instance.service}.${instance.name}`;
  const logFile = path.join(stateDir, 'logs', `${name}.log`);
  switch (instance.runtime.type) {
    case 'external':
      return new ExternalRuntime();
    case 'process':
      return new ProcessRuntime(instance.runtime, logFile, path.join(stateDir, 'run', `${name}.pid`), onOrphan);
    case 'docker':
      return new DockerRuntime(
        instance.runtime,
        { service: instance.service, instance: instance.name },
        { socket: options.dockerSocket ?? '/var/run/docker.sock', logFile, ...(onOrphan && { onOrphan }) },
      );
  }
}
