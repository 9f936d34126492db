export { PassiveDetector, type AttemptOutcome, type PassiveOptions, type Verdict } from './passive.js';
export { ModelBreakers, type BreakerChange } from './model-breaker.js';
export { readOwner, readVersion, runProbe, type ProbeResult, type VersionResult } from './probes.js';
