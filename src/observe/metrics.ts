import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { InstanceState, UnderstudyEvent } from '../core/index.js';

const STATES: InstanceState[] = ['stopped', 'starting', 'ready', 'suspect', 'down', 'draining', 'quarantined'];

/** Prometheus metrics. Requests are counted by the proxy; state metrics follow the events. */
export class Metrics {
  readonly registry = new Registry();

  readonly requests = new Counter({
    name: 'understudy_requests_total',
    help: 'Requests answered to clients, by service, the instance that answered and outcome.',
    labelNames: ['service', 'instance', 'outcome'] as const,
    registers: [this.registry],
  });

  readonly attempts = new Counter({
    name: 'understudy_attempts_total',
    help: 'Attempts sent to instances, by outcome (ok, status, connect, reset, timeout, instance-down, ...).',
    labelNames: ['service', 'instance', 'outcome'] as const,
    registers: [this.registry],
  });

  readonly retries = new Counter({
    name: 'understudy_retries_total',
    help: 'Attempts retried before any byte reached the client, by the failure class (refused, broken, timeout, server-error, rate-limited, context-length, cannot-take), "(same instance)" when tried there again.',
    labelNames: ['service', 'reason'] as const,
    registers: [this.registry],
  });

  readonly duration = new Histogram({
    name: 'understudy_request_duration_seconds',
    help: 'Time from the request head to the end of the response, as the client sees it.',
    labelNames: ['service', 'outcome'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
    registers: [this.registry],
  });

  readonly jobItems = new Counter({
    name: 'understudy_job_items_total',
    help: 'Tries of job items, by outcome: succeeded, failed (recorded as failed), retried (will be tried again), duplicate (a second run whose result was not recorded).',
    labelNames: ['service', 'outcome'] as const,
    registers: [this.registry],
  });

  readonly jobItemDuration = new Histogram({
    name: 'understudy_job_item_duration_seconds',
    help: 'Time of the try that finished a job item, by outcome.',
    labelNames: ['service', 'outcome'] as const,
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800],
    registers: [this.registry],
  });

  readonly streams = new Counter({
    name: 'understudy_stream_breaks_total',
    help: 'Streams that broke mid-answer, by kind (chat, completions, segments) and result: continued (on another instance) or cut.',
    labelNames: ['service', 'stream', 'result'] as const,
    registers: [this.registry],
  });

  readonly modelEjections = new Counter({
    name: 'understudy_model_ejections_total',
    help: 'Models ejected from an instance after failed answers for them (the instance keeps serving its other models).',
    labelNames: ['service', 'instance'] as const,
    registers: [this.registry],
  });

  readonly queued = new Gauge({
    name: 'understudy_queue_depth',
    help: 'Requests waiting for a ready instance.',
    labelNames: ['service'] as const,
    registers: [this.registry],
  });

  readonly failovers = new Counter({
    name: 'understudy_active_changes_total',
    help: 'Moves of the active instance, by kind (initial, failover, switchover, failback, recovered).',
    labelNames: ['service', 'kind'] as const,
    registers: [this.registry],
  });

  readonly instanceState = new Gauge({
    name: 'understudy_instance_state',
    help: '1 for the state each instance is in, 0 for the others.',
    labelNames: ['service', 'instance', 'state'] as const,
    registers: [this.registry],
  });

  readonly active = new Gauge({
    name: 'understudy_instance_active',
    help: '1 for the instance that takes the service traffic.',
    labelNames: ['service', 'instance'] as const,
    registers: [this.registry],
  });

  readonly probeDuration = new Histogram({
    name: 'understudy_probe_duration_seconds',
    help: 'Active probe latency, by probe kind and result.',
    labelNames: ['service', 'instance', 'probe', 'result'] as const,
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5],
    registers: [this.registry],
  });

  readonly events = new Counter({
    name: 'understudy_events_total',
    help: 'Events by type.',
    labelNames: ['service', 'type'] as const,
    registers: [this.registry],
  });

  private readonly activeOf = new Map<string, string>();

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'understudy_process_' });
  }

  instance(service: string, instance: string, state: InstanceState): void {
    for (const s of STATES) this.instanceState.set({ service, instance, state: s }, s === state ? 1 : 0);
  }

  readonly leader = new Gauge({
    name: 'understudy_leader',
    help: 'In a cluster: 1 while this node leads and may act, else 0.',
    registers: [this.registry],
  });

  readonly leaderChanges = new Counter({
    name: 'understudy_leader_changes_total',
    help: 'In a cluster: changes of the leading node, as this node saw them.',
    registers: [this.registry],
  });

  readonly etcdDuration = new Histogram({
    name: 'understudy_etcd_request_duration_seconds',
    help: 'In a cluster: etcd calls (grant, keepalive, claim, read, list, put, fenced-put), by result (ok, error).',
    labelNames: ['operation', 'result'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2],
    registers: [this.registry],
  });

  readonly storeDuration = new Histogram({
    name: 'understudy_job_store_duration_seconds',
    help: 'In a cluster: operations of the PostgreSQL job store, by operation (record-the-result-of-item, change-a-job, ...) and result (ok, error).',
    labelNames: ['operation', 'result'] as const,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5],
    registers: [this.registry],
  });

  observe(event: UnderstudyEvent): void {
    this.events.inc({ service: event.service, type: event.type });
    if (event.type === 'instance-state') this.instance(event.service, event.instance, event.to);
    if (event.type === 'leader-changed') {
      if (event.leader !== event.previous) this.leaderChanges.inc();
      this.leader.set(event.self ? 1 : 0);
    }
    if (event.type === 'active-changed') this.failovers.inc({ service: event.service, kind: event.kind });
    if (event.type === 'stream-continued') this.streams.inc({ service: event.service, stream: event.stream, result: 'continued' });
    if (event.type === 'stream-cut') this.streams.inc({ service: event.service, stream: event.stream, result: 'cut' });
    if (event.type === 'model-ejected') this.modelEjections.inc({ service: event.service, instance: event.instance });
    if (event.type === 'active-changed' || event.type === 'no-ready-instance') {
      const previous = this.activeOf.get(event.service);
      if (previous) this.active.set({ service: event.service, instance: previous }, 0);
      if (event.type === 'active-changed') {
        this.active.set({ service: event.service, instance: event.to }, 1);
        this.activeOf.set(event.service, event.to);
      } else {
        this.activeOf.delete(event.service);
      }
    }
  }
}
