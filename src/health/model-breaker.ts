/**
 * Health per (instance, model). One model server often serves several models (vLLM with
 * LoRA adapters, Ollama, a llama.cpp router): when one of them fails, its requests go
 * elsewhere while the instance keeps serving the others. Connection-level faults
 * (refused, reset, timeouts) stay the instance's (PassiveDetector); answers that fail
 * for a request naming a model count here.
 *
 * A model's breaker opens after `failures` failed answers in a row and stays open for
 * `ejectFor`; after that the model's requests are sent to the instance again, and the
 * first success closes it (one more failure opens it for another `ejectFor`).
 */
export interface BreakerOptions {
  failures: number;
  ejectFor: number;
}

export type BreakerChange = { kind: 'ejected'; model: string; reason: string } | { kind: 'restored'; model: string; reason: string };

interface ModelHealth {
  failures: number;
  /** Set while the model is ejected from this instance; requests avoid it before this time. */
  ejectedUntil: number | undefined;
}

/** Model names come from clients: only this many failing ones are remembered per instance. */
const MAX_MODELS = 256;

export class ModelBreakers {
  private readonly models = new Map<string, ModelHealth>();
  /** Ejected models, so the router's common case (none) costs one comparison. */
  private ejected = 0;

  constructor(private options: BreakerOptions) {}

  /** New thresholds from a live change of the configuration; the counts so far stay. */
  configure(options: BreakerOptions): void {
    this.options = options;
  }

  /** Whether requests for `model` should go to another instance now. */
  isOpen(model: string, now: number): boolean {
    if (this.ejected === 0) return false;
    const until = this.models.get(model)?.ejectedUntil;
    return until !== undefined && now < until;
  }

  /** An answer to a request for `model` ended: `failed` when the instance answered with a failure. */
  onOutcome(model: string, failed: boolean, now: number, detail: string): BreakerChange | undefined {
    const health = this.models.get(model);
    if (!failed) {
      if (!health) return undefined;
      this.models.delete(model);
      if (health.ejectedUntil === undefined) return undefined;
      this.ejected -= 1;
      return { kind: 'restored', model, reason: `${model} answered again: ${detail}` };
    }
    const entry = health ?? this.remember(model);
    entry.failures += 1;
    if (entry.ejectedUntil !== undefined) {
      // Tried again after its ejection and failed: out for another round.
      if (now >= entry.ejectedUntil) entry.ejectedUntil = now + this.options.ejectFor;
      return undefined;
    }
    if (entry.failures < this.options.failures) return undefined;
    entry.ejectedUntil = now + this.options.ejectFor;
    this.ejected += 1;
    return { kind: 'ejected', model, reason: `${entry.failures} failed answers in a row for model ${model}, last: ${detail}` };
  }

  /** A fresh start of the instance (a restart) forgets every model's record. */
  reset(): void {
    this.models.clear();
    this.ejected = 0;
  }

  private remember(model: string): ModelHealth {
    if (this.models.size >= MAX_MODELS) {
      for (const [name, health] of this.models) {
        if (health.ejectedUntil === undefined) {
          this.models.delete(name);
          break;
        }
      }
    }
    const health: ModelHealth = { failures: 0, ejectedUntil: undefined };
    this.models.set(model, health);
    return health;
  }
}
