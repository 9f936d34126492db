export { PassiveDetector, type AttemptOutcome, type PassiveOptions, type Verdict } from './passive.js';
export { readVersion, runProbe, type ProbeResult, type VersionResult } from './probes.js';
