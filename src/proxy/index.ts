export { InstanceDownError, ProxyError } from './errors.js';
export { exchange, type Answer, type Ended, type ExchangeOptions, type Outgoing } from './exchange.js';
export { type ProxyHooks, type RequestReport } from './forward.js';
export { describeRequest, shapeForOwner } from './generation.js';
export { classifyStatus, decideRetry, retryAfterMs, type FailedAttempt, type FailureClass, type RetryDecision, type RetryInput } from './retry-policy.js';
export { Idempotency, type Reply, type ReplyStore } from './idempotency.js';
export { Gateway, type ListenerSpec, type Route } from './server.js';
export type { Attempt, InjectedFault, Upstreams, Want } from './types.js';
