export { ServiceController, type InstanceView, type ServiceView } from './service.js';
export { Understudy } from './understudy.js';
