import type { Config } from './load.js';

/**
 * Service fields a running Understudy takes up at once: each is read per request or per
 * decision of the failover machine, so the next request or input follows the new value.
 */
export const LIVE_SERVICE_FIELDS = ['failback', 'timeouts', 'retry', 'streams', 'limits', 'queue', 'passive', 'quarantine', 'drill', 'deploy'] as const;

/** Instance fields taken up at once: the probes restart their loop, capabilities are read per continuation. */
export const LIVE_INSTANCE_FIELDS = ['capabilities', 'probes'] as const;

/** What differs between the configuration a node runs and another, as dotted field paths. */
export interface ConfigDiff {
  /** Changed fields that apply without a restart. */
  live: string[];
  /** Changed fields that need `understudy up` started again on this node (listeners, processes, services added…). */
  restart: string[];
}

/**
 * Compares two compiled configurations field by field (key order in the YAML does not
 * matter). A field outside LIVE_SERVICE_FIELDS and LIVE_INSTANCE_FIELDS that changed,
 * a service or instance added or removed, is a restart.
 */
export function diffConfigs(running: Config, next: Config): ConfigDiff {
  const diff: ConfigDiff = { live: [], restart: [] };
  const { services: runningServices, file: _a, ...runningTop } = running;
  const { services: nextServices, file: _b, ...nextTop } = next;
  for (const key of keysOf(runningTop, nextTop)) {
    if (!same(field(runningTop, key), field(nextTop, key))) diff.restart.push(key);
  }
  const before = new Map(runningServices.map((s) => [s.name, s]));
  const after = new Map(nextServices.map((s) => [s.name, s]));
  for (const name of new Set([...before.keys(), ...after.keys()])) {
    const a = before.get(name);
    const b = after.get(name);
    if (!a || !b) {
      diff.restart.push(`services.${name} (${a ? 'removed' : 'added'})`);
      continue;
    }
    const { instances: aInstances, ...aRest } = a;
    const { instances: bInstances, ...bRest } = b;
    for (const key of keysOf(aRest, bRest)) {
      if (same(field(aRest, key), field(bRest, key))) continue;
      // A drill's schedule is set up at start; the rest of `drill` is read when a drill begins.
      if (key === 'drill' && !same(a.drill.schedule, b.drill.schedule)) {
        diff.restart.push(`services.${name}.drill.schedule`);
        continue;
      }
      (isLive(LIVE_SERVICE_FIELDS, key) ? diff.live : diff.restart).push(`services.${name}.${key}`);
    }
    const aByName = new Map(aInstances.map((i) => [i.name, i]));
    const bByName = new Map(bInstances.map((i) => [i.name, i]));
    for (const instance of new Set([...aByName.keys(), ...bByName.keys()])) {
      const x = aByName.get(instance);
      const y = bByName.get(instance);
      const at = `services.${name}.instances.${instance}`;
      if (!x || !y) {
        diff.restart.push(`${at} (${x ? 'removed' : 'added'})`);
        continue;
      }
      for (const key of keysOf(x, y)) {
        if (same(field(x, key), field(y, key))) continue;
        (isLive(LIVE_INSTANCE_FIELDS, key) ? diff.live : diff.restart).push(`${at}.${key}`);
      }
    }
  }
  return diff;
}

function isLive(fields: readonly string[], key: string): boolean {
  return fields.includes(key);
}

function keysOf(a: object, b: object): string[] {
  return [...new Set([...Object.keys(a), ...Object.keys(b)])];
}

function field(value: object, key: string): unknown {
  return (value as Record<string, unknown>)[key];
}

function same(a: unknown, b: unknown): boolean {
  return canonical(a) === canonical(b);
}

/** JSON with object keys sorted, and undefined fields left out, so only values count. */
function canonical(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v !== null && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([x], [y]) => x.localeCompare(y)))
      : v,
  );
}
