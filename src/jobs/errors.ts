import { UnderstudyError } from '../core/index.js';

/** A job request that cannot be carried out; `status` is the admin API's answer. */
export class JobError extends UnderstudyError {
  override name = 'JobError';
  constructor(
    code: string,
    message: string,
    readonly status: number,
    readonly details: Record<string, unknown> = {},
    options?: { cause?: unknown },
  ) {
    super(code, message, false, options);
  }
}

/**
 * The job store cannot be used: locked by another Understudy, corrupt, full, or
 * unwritable. Nothing already recorded is changed by the failed operation.
 */
export class StoreError extends UnderstudyError {
  override name = 'StoreError';
  constructor(
    code: 'STORE_LOCKED' | 'STORE_CORRUPT' | 'STORE_FULL' | 'STORE_IO' | 'STORE_CLOSED' | 'STORE_FENCED' | 'STORE_UNAVAILABLE',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(code, message, code === 'STORE_FULL' || code === 'STORE_IO' || code === 'STORE_UNAVAILABLE', options);
  }
}
