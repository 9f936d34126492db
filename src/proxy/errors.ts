import { UnderstudyError } from '../core/index.js';

/** An error the gateway answers itself, as JSON with a stable code. */
export class ProxyError extends UnderstudyError {
  override name = 'ProxyError';
  constructor(
    code: string,
    readonly status: number,
    message: string,
    readonly details: { service?: string; retryAfterSeconds?: number; [key: string]: unknown } = {},
    options?: { cause?: unknown },
  ) {
    super(code, message, false, options);
  }

  body(requestId: string): string {
    const { retryAfterSeconds: _, ...rest } = this.details;
    return JSON.stringify({ error: { code: this.code, message: this.message, requestId, ...rest } });
  }
}

/** The instance an attempt ran on was declared down; the attempt may go to another. */
export class InstanceDownError extends UnderstudyError {
  override name = 'InstanceDownError';
  constructor(instance: string, reason: string) {
    super('INSTANCE_DOWN', `${instance} was declared down: ${reason}`, true);
  }
}
