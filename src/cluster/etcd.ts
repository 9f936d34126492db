import { circuitBreaker, ConsecutiveBreaker, ExponentialBackoff, handleWhen, retry } from 'cockatiel';
import { Etcd3, isRecoverableError, type IKeyValue } from 'etcd3';
import type { Coordination, KeyHolder, LeaseGrant } from './coordination.js';
import { ClusterError } from './errors.js';

export interface EtcdOptions {
  endpoints: string[];
  /** Longest wait for one call, in ms. */
  timeout: number;
}

/**
 * `Coordination` on etcd through `etcd3`. Every unary call has a deadline of
 * `timeout`, tried once more on another endpoint when the first fails; a member that
 * failed three calls in a row is skipped for a second (etcd3's defaults, five seconds
 * and three tries, would hold a leader past its own lease). Failures are ClusterError
 * ETCD_UNAVAILABLE naming the endpoints.
 */
export class EtcdCoordination implements Coordination {
  private readonly client: Etcd3;
  private closed = false;

  constructor(private readonly options: EtcdOptions) {
    const recoverable = handleWhen(isRecoverableError);
    this.client = new Etcd3({
      hosts: options.endpoints,
      dialTimeout: options.timeout,
      defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + options.timeout }),
      faultHandling: {
        host: () => circuitBreaker(recoverable, { halfOpenAfter: 1000, breaker: new ConsecutiveBreaker(3) }),
        global: retry(recoverable, { maxAttempts: Math.min(2, options.endpoints.length) }),
        // etcd3 types this as a backoff step and calls next() on it first.
        watchBackoff: new ExponentialBackoff({ initialDelay: 100, maxDelay: 1000 }).next(),
      },
    });
  }

  async grant(ttlMs: number): Promise<LeaseGrant> {
    return this.call('grant a lease', async () => {
      const response = await this.client.leaseClient.leaseGrant({ TTL: String(Math.ceil(ttlMs / 1000)), ID: '0' });
      return { id: String(response.ID), ttlMs: Number(response.TTL) * 1000 };
    });
  }

  async keepAlive(lease: string): Promise<number> {
    return this.call('renew the lease', async () => {
      // One request on a keep-alive stream of its own, with the call's deadline. etcd3 does not
      // retry streams, and picks a member at random: a dead member would fail the renewal, so
      // each member is tried in turn (a refused connection fails in a millisecond).
      let lastError: unknown;
      for (let attempt = 0; attempt < this.options.endpoints.length; attempt++) {
        const stream = await this.client.leaseClient.leaseKeepAlive({ deadline: Date.now() + this.options.timeout });
        try {
          const response = await new Promise<{ TTL: string }>((resolve, reject) => {
            stream.on('data', resolve);
            stream.on('error', reject);
            stream.write({ ID: lease });
          });
          return Number(response.TTL) * 1000;
        } catch (error) {
          lastError = error;
        } finally {
          stream.end();
        }
      }
      throw lastError;
    });
  }

  async revoke(lease: string): Promise<void> {
    await this.call('revoke the lease', async () => {
      await this.client.leaseClient.leaseRevoke({ ID: lease });
    });
  }

  async claim(key: string, value: string, lease: string): Promise<{ won: boolean; holder: KeyHolder | null }> {
    return this.call(`claim ${key}`, async () => {
      const result = await this.client
        .if(key, 'Create', '==', 0)
        .then(this.client.put(key).value(value).lease(lease))
        .else(this.client.get(key))
        .commit();
      if (result.succeeded) {
        const revision = Number(result.header.revision);
        return { won: true, holder: { value, revision, modRevision: revision, lease } };
      }
      const kv = result.responses[0]?.response_range?.kvs[0];
      return { won: false, holder: kv ? holderOf(kv) : null };
    });
  }

  async read(key: string): Promise<KeyHolder | null> {
    return this.call(`read ${key}`, async () => {
      const response = await this.client.get(key).exec();
      const kv = response.kvs[0];
      return kv ? holderOf(kv) : null;
    });
  }

  async list(prefix: string): Promise<{ entries: Map<string, string>; revision: number }> {
    return this.call(`read ${prefix}`, async () => {
      const response = await this.client.getAll().prefix(prefix).exec();
      const entries = new Map(response.kvs.map((kv) => [kv.key.toString(), kv.value.toString()]));
      return { entries, revision: Number(response.header.revision) };
    });
  }

  async fencedPut(fenceKey: string, epoch: number, key: string, value: string | null): Promise<boolean> {
    return this.call(`write ${key}`, async () => {
      const write = value === null ? this.client.delete().key(key) : this.client.put(key).value(value);
      const result = await this.client.if(fenceKey, 'Create', '==', epoch).then(write).commit();
      return result.succeeded;
    });
  }

  async putIfUnchanged(key: string, modRevision: number, writes: { key: string; value: string | null }[]): Promise<number | null> {
    return this.call(`write ${key}`, async () => {
      const ops = writes.map((w) => (w.value === null ? this.client.delete().key(w.key) : this.client.put(w.key).value(w.value)));
      const result = await this.client.if(key, 'Mod', '==', modRevision).then(...ops).commit();
      return result.succeeded ? Number(result.header.revision) : null;
    });
  }

  async put(key: string, value: string | null, lease?: string): Promise<void> {
    await this.call(`write ${key}`, async () => {
      if (value === null) await this.client.delete().key(key).exec();
      else if (lease !== undefined) await this.client.put(key).value(value).lease(lease).exec();
      else await this.client.put(key).value(value).exec();
    });
  }

  async watch(prefix: string, fromRevision: number, onChange: (key: string, value: string | null, holder: KeyHolder | null) => void): Promise<() => Promise<void>> {
    const watcher = await this.call(`watch ${prefix}`, () => this.client.watch().prefix(prefix).startRevision(String(fromRevision)).create());
    watcher.on('put', (kv) => onChange(kv.key.toString(), kv.value.toString(), holderOf(kv)));
    watcher.on('delete', (kv) => onChange(kv.key.toString(), null, null));
    // The watch manager reconnects with backoff and resumes from the last revision seen.
    watcher.on('error', () => undefined);
    return () => watcher.cancel();
  }

  async health(): Promise<{ endpoint: string; ok: boolean; ms: number; error?: string }[]> {
    return Promise.all(
      this.options.endpoints.map(async (endpoint) => {
        const started = performance.now();
        try {
          const response = await fetch(new URL('/health', endpoint), { signal: AbortSignal.timeout(this.options.timeout) });
          const body = (await response.json()) as { health?: string; reason?: string };
          const ok = body.health === 'true';
          return { endpoint, ok, ms: performance.now() - started, ...(ok ? {} : { error: body.reason || 'unhealthy (no quorum?)' }) };
        } catch (error) {
          return { endpoint, ok: false, ms: performance.now() - started, error: (error as Error).message };
        }
      }),
    );
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.client.close();
  }

  private async call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    if (this.closed) throw new ClusterError('ETCD_UNAVAILABLE', `cannot ${what}: the etcd client is closed`);
    // A hard bound as well as the call deadlines: a stream or a retry must not outlast two tries.
    let timer: NodeJS.Timeout | undefined;
    const bound = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${2 * this.options.timeout}ms`)), 2 * this.options.timeout);
    });
    try {
      return await Promise.race([fn(), bound]);
    } catch (error) {
      if (error instanceof ClusterError) throw error;
      const reason = (error as Error).message.split('\n')[0];
      throw new ClusterError('ETCD_UNAVAILABLE', `cannot ${what}: etcd at ${this.options.endpoints.join(', ')} did not answer (${reason})`, {}, { cause: error });
    } finally {
      clearTimeout(timer);
    }
  }
}

function holderOf(kv: IKeyValue): KeyHolder {
  return { value: kv.value.toString(), revision: Number(kv.create_revision), modRevision: Number(kv.mod_revision), lease: String(kv.lease) };
}
