export { DrillError } from './errors.js';
export { renderReportMarkdown, renderTimelineSvg } from './render.js';
export { latencies, recoveryMs, round } from './summary.js';
export { judge, ProbeTraffic, type ProbeTarget } from './traffic.js';
export { FAULT_KINDS, type DrillMark, type DrillReport, type FaultKind, type LatencySummary, type ProbeSample, type StateSpan } from './types.js';
