/**
 * Durations and sizes as users write them: `"750ms"`, `"30s"`, `"5m"`, `"1h"`, `"30d"`, or a
 * bare number of milliseconds; sizes as `"1MiB"`, `"512KiB"`, `"10MB"` or bytes.
 * They are compiled to numbers once, at load time.
 */
const DURATION = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$/;
const DURATION_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** A duration as the configuration writes it, in the largest unit that divides it: 30d, 12h, 750ms. */
export function formatDuration(ms: number): string {
  const [unit, size] = Object.entries(DURATION_MS)
    .sort(([, a], [, b]) => b - a)
    .find(([, size]) => ms >= size && ms % size === 0) ?? ['ms', 1];
  return `${ms / size}${unit}`;
}

export function parseDuration(value: string | number): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) && value >= 0 ? value : undefined;
  const match = DURATION.exec(value.trim());
  if (!match) return undefined;
  return Math.round(Number(match[1]) * DURATION_MS[match[2]!]!);
}

const SIZE = /^(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB)$/;
const SIZE_BYTES: Record<string, number> = {
  B: 1,
  KB: 1e3,
  KiB: 1024,
  MB: 1e6,
  MiB: 1024 ** 2,
  GB: 1e9,
  GiB: 1024 ** 3,
};

export function parseSize(value: string | number): number | undefined {
  if (typeof value === 'number') return Number.isInteger(value) && value >= 0 ? value : undefined;
  const match = SIZE.exec(value.trim());
  if (!match) return undefined;
  return Math.round(Number(match[1]) * SIZE_BYTES[match[2]!]!);
}

/** `host:port`, `:port` or a bare port; the host defaults to the given one. */
export function parseListen(value: string | number, defaultHost: string): { host: string; port: number } | undefined {
  const text = String(value).trim();
  const colon = text.lastIndexOf(':');
  const host = colon > 0 ? text.slice(0, colon).replace(/^\[|\]$/g, '') : defaultHost;
  const portText = colon >= 0 ? text.slice(colon + 1) : text;
  if (!/^\d+$/.test(portText)) return undefined;
  const port = Number(portText);
  return port <= 65535 ? { host, port } : undefined;
}
