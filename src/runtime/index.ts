import path from 'node:path';
import type { InstanceConfig } from '../config/index.js';
import { ProcessRuntime } from './process.js';
import { ExternalRuntime, type Runtime } from './runtime.js';

export { ProcessRuntime } from './process.js';
export { ExternalRuntime, StartError, type Runtime } from './runtime.js';

export function createRuntime(instance: InstanceConfig, stateDir: string): Runtime {
  switch (instance.runtime.type) {
    case 'external':
      return new ExternalRuntime();
    case 'process':
      return new ProcessRuntime(instance.runtime, path.join(stateDir, 'logs', `${instance.service}.${instance.name}.log`));
  }
}
