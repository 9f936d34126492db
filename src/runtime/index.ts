import path from 'node:path';
import type { InstanceConfig } from '../config/index.js';
import { ProcessRuntime } from './process.js';
import { ExternalRuntime, type Runtime } from './runtime.js';

export { ProcessRuntime } from './process.js';
export { ExternalRuntime, StartError, type Runtime } from './runtime.js';

/** `onOrphan` hears of an instance left running by an earlier Understudy, as it is stopped. */
export function createRuntime(instance: InstanceConfig, stateDir: string, onOrphan?: (pid: number, detail: string) => void): Runtime {
  const name = `${instance.service}.${instance.name}`;
  switch (instance.runtime.type) {
    case 'external':
      return new ExternalRuntime();
    case 'process':
      return new ProcessRuntime(instance.runtime, path.join(stateDir, 'logs', `${name}.log`), path.join(stateDir, 'run', `${name}.pid`), onOrphan);
  }
}
