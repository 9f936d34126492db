/** Base of Understudy's own errors: a stable `code`, and whether trying again may help. */
export class UnderstudyError extends Error {
  override name = 'UnderstudyError';
  constructor(
    readonly code: string,
    message: string,
    readonly retryable = false,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
