export { ManualClock, systemClock, type Clock, type Timer } from './clock.js';
export { byPreference, initialState, isRoutable, nextDeadline, routable, step } from './machine.js';
export type {
  Action,
  ActiveMode,
  DeployStep,
  EventBody,
  EventType,
  Input,
  InstanceState,
  InstanceStatus,
  JobState,
  MoveKind,
  ServiceStatus,
  Step,
  UnderstudyEvent,
} from './types.js';
export { UnderstudyError } from './errors.js';
