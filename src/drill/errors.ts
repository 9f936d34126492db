import { UnderstudyError } from '../core/index.js';

/** Why a drill was refused or could not be read; `status` is the HTTP status the admin API answers with. */
export class DrillError extends UnderstudyError {
  override name = 'DrillError';
  constructor(
    code: 'DRILL_REFUSED' | 'DRILL_RUNNING' | 'NOT_FOUND' | 'BAD_REQUEST',
    message: string,
    readonly status: number,
  ) {
    super(code, message, false);
  }
}
