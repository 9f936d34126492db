import type { InstanceConfig } from './load.js';

const PLACEHOLDER = /\$\{version\}/g;

/**
 * The instance as it runs `version`: every `${version}` in its runtime (image, command,
 * env, volumes, requires) replaced. `tts-server:${version}` is how a release becomes an image.
 */
export function atVersion(instance: InstanceConfig, version: string): InstanceConfig {
  return { ...instance, runtime: substitute(instance.runtime, version) };
}

/** Paths with `${version}` replaced, e.g. a backup of `models/${version}`. */
export function pathsAtVersion(paths: readonly string[], version: string): string[] {
  return paths.map((p) => p.replace(PLACEHOLDER, version));
}

function substitute<T>(value: T, version: string): T {
  if (typeof value === 'string') return value.replace(PLACEHOLDER, version) as T;
  if (Array.isArray(value)) return value.map((v: unknown) => substitute(v, version)) as T;
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, substitute(v, version)])) as T;
  }
  return value;
}
