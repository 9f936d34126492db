import type { ClusterView } from '../src/cluster/index.js';
import type { ServiceView } from '../src/controller/index.js';
import type { UnderstudyEvent } from '../src/core/index.js';
import type { JobView } from '../src/jobs/index.js';
import type { RecentRequest, TrafficSecond } from '../src/observe/index.js';
import type { LiveState } from './api.js';

export type { ClusterView, JobView, RecentRequest, ServiceView, TrafficSecond, UnderstudyEvent };

/** Events kept in the page (the timeline shows the newest). */
const KEEP_EVENTS = 2000;
/** Seconds of traffic kept per instance for the charts. */
export const CHART_SECONDS = 120;

export interface Toast {
  id: number;
  tone: 'good' | 'bad';
  text: string;
}

/** Everything the page shows that arrives live; views read it, the feed writes it. */
export class Model {
  services: ServiceView[] = [];
  events: UnderstudyEvent[] = [];
  traffic: Record<string, Record<string, TrafficSecond[]>> = {};
  last: Record<string, RecentRequest[]> = {};
  jobs = new Map<string, JobView>();
  node: string | null = null;
  live: LiveState = 'connecting';
  /** Pages open on this Understudy, as it said at connect. */
  pages = 0;
  toasts: Toast[] = [];
  /** Bumped by events that change what the recovery, cluster and jobs views fetch. */
  recoveryStamp = 0;
  clusterStamp = 0;
  jobsStamp = 0;
  /** When the views were last told to redraw (epoch ms). */
  drawnAt = 0;
  private version = 0;
  private readonly watchers = new Set<() => void>();
  private frame: number | undefined;

  watch(watcher: () => void): () => void {
    this.watchers.add(watcher);
    return () => this.watchers.delete(watcher);
  }

  get stamp(): number {
    return this.version;
  }

  /** Redraws at most once a frame, however many messages arrive. */
  changed(): void {
    this.version += 1;
    if (this.frame !== undefined) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = undefined;
      this.drawnAt = Date.now();
      for (const watcher of this.watchers) watcher();
    });
  }

  receive(kind: string, data: unknown): void {
    if (kind === 'hello') {
      const hello = data as { time: number; node: string | null; services: ServiceView[]; traffic: Model['traffic']; last: Model['last']; live: number };
      this.services = hello.services;
      this.traffic = hello.traffic;
      this.last = hello.last;
      this.node = hello.node;
      this.pages = hello.live;
      this.recoveryStamp += 1;
      this.clusterStamp += 1;
      this.jobsStamp += 1;
    } else if (kind === 'status') {
      this.services = (data as { services: ServiceView[] }).services;
    } else if (kind === 'event') {
      const event = data as UnderstudyEvent;
      this.events.push(event);
      if (this.events.length > KEEP_EVENTS) this.events.splice(0, this.events.length - KEEP_EVENTS);
      if (/^(deploy|rollback|snapshot|drill|alert)/.test(event.type) || event.type === 'operator-action') this.recoveryStamp += 1;
      if (/^(leader|coordination|config|desired)/.test(event.type)) this.clusterStamp += 1;
      if (event.type === 'job-state' || event.type === 'job-resumed') this.jobsStamp += 1;
    } else if (kind === 'job') {
      const job = data as JobView;
      this.jobs.set(job.id, job);
    } else if (kind === 'traffic') {
      const { seconds, last } = data as { seconds: Record<string, Record<string, TrafficSecond>>; last: Model['last'] };
      for (const [service, byInstance] of Object.entries(seconds)) {
        const series = (this.traffic[service] ??= {});
        for (const [instance, second] of Object.entries(byInstance)) {
          const list = (series[instance] ??= []);
          // A second the hello already had (closed just before the page connected) is not added twice.
          if (list.some((s) => s.t === second.t)) continue;
          list.push(second);
          if (list.length > CHART_SECONDS * 2) list.splice(0, list.length - CHART_SECONDS * 2);
        }
      }
      this.last = last;
    }
    this.changed();
  }

  /** Events from before the page opened (the feed brings only new ones), merged without repeats. */
  history(events: UnderstudyEvent[]): void {
    const seen = new Set<string>();
    this.events = [...events, ...this.events]
      .filter((e) => {
        const key = `${e.time}|${e.type}|${e.traceId}|${e.service}`;
        if (seen.has(key)) return false;
        seen.add(key);
        return true;
      })
      .sort((a, b) => a.time - b.time)
      .slice(-KEEP_EVENTS);
    this.changed();
  }

  toast(tone: Toast['tone'], text: string): void {
    const toast = { id: Math.random(), tone, text };
    this.toasts = [...this.toasts, toast].slice(-4);
    this.changed();
    setTimeout(() => {
      this.toasts = this.toasts.filter((t) => t !== toast);
      this.changed();
    }, 6000);
  }
}
