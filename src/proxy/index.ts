export { InstanceDownError, ProxyError } from './errors.js';
export { exchange, type Answer, type Ended, type Outgoing, type ProxyHooks, type RequestReport } from './forward.js';
export { Idempotency, type Reply, type ReplyStore } from './idempotency.js';
export { Gateway, type ListenerSpec, type Route } from './server.js';
export type { Attempt, InjectedFault, Upstreams } from './types.js';
