/**
 * Passive health: what real traffic says about one instance. It turns attempt
 * outcomes into a verdict (`eject`), leaving the decision to the state machine.
 *
 * - Nothing listening (connection refused, host unreachable) is a hard verdict at once.
 * - `failures` consecutive failed attempts (reset, timeout, retried 5xx) is a soft verdict.
 * - A request is slow past max(slowMin, slowFactor × the instance's normal time to
 *   first byte); `slow` consecutive slow requests is a soft verdict. The normal is an
 *   exponentially weighted mean over fast answers, judged only after a warm-up, so a
 *   service whose every answer takes seconds is never called slow for it.
 */
export interface PassiveOptions {
  failures: number;
  slowFactor: number;
  slowMin: number;
  slow: number;
}

export type AttemptOutcome =
  | 'ok'
  | 'status'
  | 'connect'
  | 'reset'
  | 'timeout'
  | 'stalled'
  | 'instance-down'
  | 'client-abort'
  /** The request itself was at fault (e.g. its body outgrew limits.body): says nothing of the instance. */
  | 'bad-request'
  | 'error';

export interface Verdict {
  hard: boolean;
  reason: string;
}

const WARM_UP = 20;
const WEIGHT = 0.1;

export class PassiveDetector {
  private failures = 0;
  private slow = 0;
  private samples = 0;
  private normal = 0;

  constructor(private options: PassiveOptions) {}

  /** New thresholds from a live change of the configuration; the counts so far stay. */
  configure(options: PassiveOptions): void {
    this.options = options;
  }

  /** Milliseconds after which a request still waiting for its first byte is slow, or undefined before warm-up. */
  slowAfter(): number | undefined {
    if (this.options.slow === 0 || this.samples < WARM_UP) return undefined;
    return Math.max(this.options.slowMin, this.options.slowFactor * this.normal);
  }

  /** A request passed `slowAfter` without a first byte. */
  onSlow(): Verdict | undefined {
    this.slow += 1;
    if (this.slow >= this.options.slow) {
      return { hard: false, reason: `${this.slow} consecutive requests slower than ${Math.round(this.slowAfter() ?? 0)}ms` };
    }
    return undefined;
  }

  /** The first byte arrived after `ms`. */
  onFirstByte(ms: number): void {
    const threshold = this.slowAfter();
    if (threshold !== undefined && ms > threshold) return; // already counted by onSlow
    this.slow = 0;
    this.samples += 1;
    this.normal = this.samples === 1 ? ms : this.normal + WEIGHT * (ms - this.normal);
  }

  onOutcome(outcome: AttemptOutcome, detail: string): Verdict | undefined {
    switch (outcome) {
      case 'ok':
        this.failures = 0;
        return undefined;
      case 'connect':
        return { hard: true, reason: detail };
      case 'status':
      case 'reset':
      case 'timeout':
      case 'stalled':
      case 'error':
        this.failures += 1;
        if (this.failures >= this.options.failures) {
          return { hard: false, reason: `${this.failures} consecutive failed requests, last: ${detail}` };
        }
        return undefined;
      default:
        return undefined;
    }
  }

  /** A fresh start (after a restart) forgets the failure and slow counts; the instance's normal latency is kept. */
  reset(): void {
    this.failures = 0;
    this.slow = 0;
  }
}
