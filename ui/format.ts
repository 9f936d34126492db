/** Times in the viewer's own zone, and "3 s ago" from the viewer's clock corrected to the server's. */
let skew = 0;

export function setServerTime(serverNow: number): void {
  skew = serverNow - Date.now();
}

export function serverNow(): number {
  return Date.now() + skew;
}

const clock = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
const dated = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });

export function localTime(ms: number): string {
  return serverNow() - ms < 12 * 3600_000 ? clock.format(ms) : dated.format(ms);
}

export function fullTime(ms: number): string {
  return new Date(ms).toString();
}

export function ago(ms: number): string {
  return `${span(serverNow() - ms)} ago`;
}

/** A length of time in one or two units: "850 ms", "3 s", "4 min 10 s", "2 h 5 min", "3 d". */
export function span(ms: number): string {
  const s = Math.max(0, ms) / 1000;
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${Math.floor(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min${s % 60 >= 1 ? ` ${Math.floor(s % 60)} s` : ''}`;
  if (s < 86400) return `${Math.floor(s / 3600)} h${Math.floor((s % 3600) / 60) ? ` ${Math.floor((s % 3600) / 60)} min` : ''}`;
  return `${Math.floor(s / 86400)} d`;
}

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

/** Each state has a word and a tone (the colour is never the only sign). */
export type Tone = 'good' | 'warn' | 'bad' | 'idle' | 'info';

export function instanceTone(state: string): Tone {
  if (state === 'ready') return 'good';
  if (state === 'starting' || state === 'suspect' || state === 'draining') return 'warn';
  if (state === 'down' || state === 'quarantined') return 'bad';
  return 'idle';
}

export function jobTone(state: string): Tone {
  if (state === 'succeeded') return 'good';
  if (state === 'running') return 'info';
  if (state === 'paused') return 'warn';
  if (state === 'failed') return 'bad';
  return 'idle';
}
