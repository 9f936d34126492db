import { UnderstudyError } from '../core/index.js';

export type ClusterErrorCode =
  /** etcd could not be reached within `cluster.etcd.timeout`, or has no quorum: nothing was changed. */
  | 'ETCD_UNAVAILABLE'
  /** A leader's action asked of a node that does not lead (or no longer may act); `leader` names who does. */
  | 'NOT_LEADER'
  /** A write by a leader that was replaced was refused by the store. */
  | 'FENCED'
  /** A write that expected another state (`config apply --if-revision`): nothing was changed. */
  | 'CONFLICT'
  /** Bad arguments: the message names what. */
  | 'INVALID_INPUT';

export class ClusterError extends UnderstudyError {
  override name = 'ClusterError';
  constructor(
    override readonly code: ClusterErrorCode,
    message: string,
    readonly details: { leader?: string | null; url?: string | null } = {},
    options?: { cause?: unknown },
  ) {
    super(code, message, code === 'ETCD_UNAVAILABLE', options);
  }

  /** The HTTP status the admin API answers with. */
  get status(): number {
    return this.code === 'INVALID_INPUT' ? 400 : this.code === 'NOT_LEADER' || this.code === 'CONFLICT' ? 409 : 503;
  }
}
