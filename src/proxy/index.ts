export { InstanceDownError, ProxyError } from './errors.js';
export type { ProxyHooks, RequestReport } from './forward.js';
export { Gateway, type ListenerSpec, type Route } from './server.js';
export type { Attempt, Upstreams } from './types.js';
