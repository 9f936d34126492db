import { describe, expect, it } from 'vitest';
import { parseConfig, type ServiceConfig } from '../../src/config/index.js';
import {
  initialState,
  isRoutable,
  nextDeadline,
  step,
  type Action,
  type EventBody,
  type Input,
  type ServiceStatus,
} from '../../src/core/index.js';

const BASE = `
services:
  tts:
    route: { pathPrefix: /tts }
    FAILBACK
    VERSION
    quarantine: { failures: 3, within: 10m }
    instances:
      primary:
        tier: primary
        url: http://127.0.0.1:7001
        runtime: { type: process, command: [model-server], restartDelay: 1s, restartDelayMax: 4s }
        probes: { startup: { http: { path: /health }, budget: 60s } }
      hot:
        tier: hot
        url: http://127.0.0.1:7002
      cold:
        tier: cold
        url: http://127.0.0.1:7003
        runtime: { type: process, command: [model-server] }
`;

function service(options: { failback?: string; version?: string; drop?: string[] } = {}): ServiceConfig {
  let text = BASE.replace('FAILBACK', options.failback ? `failback: ${options.failback}` : '').replace(
    'VERSION',
    options.version ? `version: { expect: "${options.version}" }` : '',
  );
  const config = parseConfig(text, 'test.yaml').services[0]!;
  return { ...config, instances: config.instances.filter((i) => !options.drop?.includes(i.name)) };
}

/** Drives the machine like the controller does and keeps what it said. */
class Harness {
  state: ServiceStatus;
  now = 1_000_000;
  actions: Action[] = [];

  constructor(readonly config: ServiceConfig) {
    this.state = initialState(config, this.now);
  }

  send(input: Input): string | undefined {
    const result = step(this.config, this.state, input, this.now);
    this.state = result.state;
    this.actions.push(...result.actions);
    return result.rejected;
  }

  /** Advances the clock tick by tick through every deadline, as the controller's timer would. */
  advance(ms: number): void {
    const end = this.now + ms;
    for (let deadline = nextDeadline(this.config, this.state); deadline !== undefined && deadline <= end; ) {
      this.now = deadline;
      this.send({ type: 'tick' });
      const next = nextDeadline(this.config, this.state);
      if (next === deadline) throw new Error('a tick did not consume its deadline');
      deadline = next;
    }
    this.now = end;
  }

  ready(...names: string[]): void {
    for (const name of names) {
      this.send({ type: 'probe', instance: name, probe: 'startup', ok: true, detail: '200' });
      if (this.config.version) {
        this.send({ type: 'version', instance: name, version: this.config.version.expect, detail: '200' });
      }
    }
  }

  take(): Action[] {
    const taken = this.actions;
    this.actions = [];
    return taken;
  }

  events(type?: EventBody['type']): EventBody[] {
    return this.take()
      .flatMap((a) => (a.type === 'emit' ? [a.event] : []))
      .filter((e) => type === undefined || e.type === type);
  }

  stateOf(name: string) {
    return this.state.instances[name]!.state;
  }
}

function booted(config = service()): Harness {
  const h = new Harness(config);
  h.send({ type: 'boot' });
  h.ready('primary', 'hot');
  h.take();
  return h;
}

describe('boot', () => {
  it('starts primary and hot standbys, leaves cold stopped, and makes the primary active', () => {
    const h = new Harness(service());
    h.send({ type: 'boot' });
    expect(h.take().filter((a) => a.type === 'start')).toEqual([
      { type: 'start', instance: 'primary' },
      { type: 'start', instance: 'hot' },
    ]);
    expect(h.stateOf('cold')).toBe('stopped');
    expect(h.state.active).toBeNull();
    h.ready('primary');
    expect(h.state.active).toBe('primary');
    expect(h.events('active-changed')).toEqual([
      { type: 'active-changed', from: null, to: 'primary', kind: 'initial', reason: 'primary is ready' },
    ]);
  });

  it('serves from the hot standby while the primary loads, then moves to the primary', () => {
    const h = new Harness(service());
    h.send({ type: 'boot' });
    h.ready('hot');
    expect(h.state.active).toBe('hot');
    h.ready('primary');
    expect(h.state.active).toBe('primary');
    expect(h.events('active-changed').map((e) => e.type === 'active-changed' && e.kind)).toEqual(['initial', 'initial']);
  });

  it('does not start the cold standby just because the primary is still loading', () => {
    const h = new Harness(service({ drop: ['hot'] }));
    h.send({ type: 'boot' });
    expect(h.stateOf('cold')).toBe('stopped');
  });
});

describe('failover', () => {
  it('moves traffic to the hot standby in the same step the primary exits, and restarts the primary', () => {
    const h = booted();
    h.send({ type: 'exited', instance: 'primary', code: null, signal: 'SIGKILL' });
    expect(h.state.active).toBe('hot');
    const actions = h.take();
    expect(actions).toContainEqual({ type: 'abort-inflight', instance: 'primary', reason: 'process killed by SIGKILL' });
    expect(actions).toContainEqual({ type: 'stop', instance: 'primary', reason: 'process killed by SIGKILL' });
    expect(actions).toContainEqual({
      type: 'emit',
      event: { type: 'active-changed', from: 'primary', to: 'hot', kind: 'failover', reason: 'primary is down: process killed by SIGKILL' },
    });
    expect(h.stateOf('primary')).toBe('down');
    expect(h.stateOf('cold')).toBe('stopped');

    h.advance(999);
    expect(h.take().filter((a) => a.type === 'start')).toEqual([]);
    h.advance(1);
    expect(h.take()).toContainEqual({ type: 'start', instance: 'primary' });
    expect(h.stateOf('primary')).toBe('starting');
    h.ready('primary');
    expect(h.stateOf('primary')).toBe('ready');
    expect(h.state.active).toBe('hot'); // failback: never
  });

  it('starts the cold standby when no instance can serve and reports it', () => {
    const h = booted(service({ drop: ['hot'] }));
    h.send({ type: 'exited', instance: 'primary', code: 137, signal: null });
    expect(h.state.active).toBeNull();
    const actions = h.take();
    expect(actions).toContainEqual({ type: 'start', instance: 'cold' });
    expect(actions).toContainEqual({
      type: 'emit',
      event: { type: 'no-ready-instance', reason: 'primary is down: process exited with code 137' },
    });
    h.ready('cold');
    expect(h.state.active).toBe('cold');
    expect(h.events('active-changed')).toEqual([
      { type: 'active-changed', from: null, to: 'cold', kind: 'recovered', reason: 'cold is ready' },
    ]);
  });

  it('keeps a suspect instance active until the fall threshold, then fails over', () => {
    const h = booted();
    const fail = () => h.send({ type: 'probe', instance: 'primary', probe: 'ready', ok: false, detail: 'timeout after 1000ms' });
    fail();
    expect(h.stateOf('primary')).toBe('suspect');
    expect(h.state.active).toBe('primary');
    fail();
    expect(h.state.active).toBe('primary');
    fail();
    expect(h.stateOf('primary')).toBe('down');
    expect(h.state.active).toBe('hot');
  });

  it('forgets a failed probe once one passes again', () => {
    const h = booted();
    h.send({ type: 'probe', instance: 'primary', probe: 'ready', ok: false, detail: 'x' });
    h.send({ type: 'probe', instance: 'primary', probe: 'ready', ok: true, detail: '200' });
    h.send({ type: 'probe', instance: 'primary', probe: 'ready', ok: false, detail: 'x' });
    h.send({ type: 'probe', instance: 'primary', probe: 'ready', ok: false, detail: 'x' });
    expect(h.stateOf('primary')).toBe('suspect');
  });

  it('fails a start that outlives its budget, not a millisecond earlier', () => {
    const h = new Harness(service());
    h.send({ type: 'boot' });
    h.advance(59_999);
    expect(h.stateOf('primary')).toBe('starting');
    h.advance(1);
    expect(h.stateOf('primary')).toBe('down');
    expect(h.state.instances.primary!.reason).toBe('start-up budget of 60000ms ran out before the startup probe passed');
  });

  it('doubles the restart delay up to its cap', () => {
    const h = booted(service({ drop: ['cold'] }));
    const delays: number[] = [];
    for (let i = 0; i < 2; i++) {
      h.send({ type: 'exited', instance: 'primary', code: 1, signal: null });
      delays.push(...h.events('restart-scheduled').map((e) => (e.type === 'restart-scheduled' ? e.delayMs : -1)));
      h.advance(10_000);
    }
    expect(delays).toEqual([1000, 2000]);
    const quick = booted(service({ drop: ['cold'] }));
    quick.state.instances.primary!.restarts = 5;
    quick.send({ type: 'exited', instance: 'primary', code: 1, signal: null });
    expect(quick.events('restart-scheduled')).toMatchObject([{ delayMs: 4000 }]);
  });
});

describe('passive signals', () => {
  it('ejects an instance that another can replace, and probes cannot bring it back early', () => {
    const h = booted();
    h.send({ type: 'passive', instance: 'hot', hard: false, reason: '5 consecutive failures' });
    expect(h.stateOf('hot')).toBe('down');
    h.send({ type: 'probe', instance: 'hot', probe: 'ready', ok: true, detail: '200' });
    h.send({ type: 'probe', instance: 'hot', probe: 'ready', ok: true, detail: '200' });
    expect(h.stateOf('hot')).toBe('down');
    h.now += 30_000;
    h.send({ type: 'probe', instance: 'hot', probe: 'ready', ok: true, detail: '200' });
    expect(h.stateOf('hot')).toBe('ready');
  });

  it('does not eject the last instance on a soft signal', () => {
    const h = booted(service({ drop: ['hot', 'cold'] }));
    h.send({ type: 'passive', instance: 'primary', hard: false, reason: '3 slow requests' });
    expect(h.state.active).toBe('primary');
    expect(h.stateOf('primary')).toBe('suspect');
    expect(h.events('ejection-skipped')).toHaveLength(1);
  });

  it('takes the last instance down on a hard signal (nothing is listening)', () => {
    const h = booted(service({ drop: ['hot'] }));
    h.send({ type: 'passive', instance: 'primary', hard: true, reason: 'connect ECONNREFUSED' });
    expect(h.state.active).toBeNull();
    expect(h.stateOf('cold')).toBe('starting');
  });
});

describe('failback', () => {
  function failedOver(failback?: string): Harness {
    const h = booted(service({ failback }));
    h.send({ type: 'exited', instance: 'primary', code: 1, signal: null });
    h.advance(1000);
    h.ready('primary');
    h.take();
    return h;
  }

  it('never: stays on the standby', () => {
    const h = failedOver('never');
    h.advance(3_600_000);
    expect(h.state.active).toBe('hot');
  });

  it('after 30s stable: returns exactly when the primary has been ready for 30s', () => {
    const h = failedOver('"after 30s stable"');
    h.advance(29_999);
    expect(h.state.active).toBe('hot');
    h.advance(1);
    expect(h.state.active).toBe('primary');
    expect(h.events('active-changed')).toMatchObject([{ kind: 'failback', from: 'hot', to: 'primary' }]);
  });

  it('after 30s: a failed probe restarts the count', () => {
    const h = failedOver('"after 30s"');
    h.advance(20_000);
    h.send({ type: 'probe', instance: 'primary', probe: 'ready', ok: false, detail: 'x' });
    h.send({ type: 'probe', instance: 'primary', probe: 'ready', ok: true, detail: '200' });
    h.advance(29_999);
    expect(h.state.active).toBe('hot');
    h.advance(1);
    expect(h.state.active).toBe('primary');
  });

  it('manual: only a switchover returns', () => {
    const h = failedOver('manual');
    h.advance(3_600_000);
    expect(h.state.active).toBe('hot');
    expect(h.send({ type: 'switchover', to: 'primary' })).toBeUndefined();
    expect(h.state.active).toBe('primary');
  });
});

describe('switchover and drain', () => {
  it('moves traffic on purpose and keeps both instances ready', () => {
    const h = booted();
    expect(h.send({ type: 'switchover', to: undefined })).toBeUndefined();
    expect(h.state.active).toBe('hot');
    expect(h.stateOf('primary')).toBe('ready');
    expect(h.take().filter((a) => a.type !== 'emit')).toEqual([]);
    expect(h.state.mode).toBe('pinned');
  });

  it('refuses a switchover nobody can take, and changes nothing', () => {
    const h = booted(service({ drop: ['hot'] }));
    const before = h.state;
    expect(h.send({ type: 'switchover', to: undefined })).toBe('no other instance of tts is ready to take the traffic');
    expect(h.send({ type: 'switchover', to: 'cold' })).toBe('cold cannot take the traffic: it is stopped');
    expect(h.send({ type: 'switchover', to: 'nope' })).toBe('service tts has no instance nope');
    expect(h.state).toBe(before);
    expect(h.take()).toEqual([]);
  });

  it('drains the active instance: traffic moves first, the process stops once idle, resume starts it', () => {
    const h = booted();
    expect(h.send({ type: 'drain', instance: 'primary' })).toBeUndefined();
    expect(h.state.active).toBe('hot');
    expect(h.stateOf('primary')).toBe('draining');
    h.send({ type: 'drained', instance: 'primary' });
    expect(h.stateOf('primary')).toBe('stopped');
    expect(h.take()).toContainEqual({ type: 'stop', instance: 'primary', reason: 'drained' });
    h.advance(3_600_000);
    expect(h.stateOf('primary')).toBe('stopped');
    expect(h.send({ type: 'resume', instance: 'primary' })).toBeUndefined();
    expect(h.take()).toContainEqual({ type: 'start', instance: 'primary' });
    h.ready('primary');
    expect(h.state.active).toBe('hot'); // the switchover pinned it
  });

  it('holds a stopped cold standby out of use, and puts it back stopped', () => {
    const calm = booted();
    calm.send({ type: 'drain', instance: 'cold' });
    calm.send({ type: 'resume', instance: 'cold', start: false });
    expect(calm.stateOf('cold')).toBe('stopped');
    expect(calm.take().filter((a) => a.type === 'start')).toEqual([]);

    const h = booted();
    expect(h.send({ type: 'drain', instance: 'cold' })).toBeUndefined();
    expect(h.state.instances.cold!.maintenance).toBe(true);
    // Everything else fails: the held cold standby is not started on demand.
    h.send({ type: 'exited', instance: 'primary', code: 1, signal: null });
    h.send({ type: 'probe', instance: 'hot', probe: 'ready', ok: false, detail: 'x' });
    h.send({ type: 'passive', instance: 'hot', hard: true, reason: 'reset' });
    expect(h.take().filter((a) => a.type === 'start' && a.instance === 'cold')).toEqual([]);
    expect(h.send({ type: 'resume', instance: 'cold', start: false })).toBeUndefined();
    expect(h.state.instances.cold!.maintenance).toBe(false);
    // Back in its place: with nothing ready, it is started on demand at once.
    expect(h.stateOf('cold')).toBe('starting');
    expect(h.send({ type: 'resume', instance: 'primary', start: false })).toMatch(/only a drained, stopped or quarantined instance/);
  });

  it('calls off a drain that takes too long: the instance serves again once its probe passes', () => {
    const h = booted();
    expect(h.send({ type: 'drain', instance: 'hot' })).toBeUndefined();
    expect(h.stateOf('hot')).toBe('draining');
    expect(h.send({ type: 'resume', instance: 'hot' })).toBeUndefined();
    expect(h.stateOf('hot')).toBe('suspect');
    expect(h.state.instances.hot!.maintenance).toBe(false);
    expect(h.take().filter((a) => a.type === 'start' || a.type === 'stop')).toEqual([]);
    h.send({ type: 'probe', instance: 'hot', probe: 'ready', ok: true, detail: '200' });
    expect(h.stateOf('hot')).toBe('ready');
  });

  it('lets a drain called off with start: false finish into a stopped instance that is not held', () => {
    const h = booted();
    h.send({ type: 'drain', instance: 'hot' });
    expect(h.send({ type: 'resume', instance: 'hot', start: false })).toBeUndefined();
    expect(h.stateOf('hot')).toBe('draining');
    h.send({ type: 'drained', instance: 'hot' });
    expect(h.stateOf('hot')).toBe('stopped');
    expect(h.state.instances.hot!.maintenance).toBe(false);
  });

  it('refuses to drain the only ready instance', () => {
    const h = booted(service({ drop: ['hot'] }));
    expect(h.send({ type: 'drain', instance: 'primary' })).toBe(
      'cannot drain the active instance primary: no other instance of tts is ready to take the traffic',
    );
    expect(h.stateOf('primary')).toBe('ready');
  });
});

describe('flap damping', () => {
  it('quarantines an instance that keeps failing, keeps it stopped, and says so', () => {
    const h = booted(service({ drop: ['cold'] }));
    for (let i = 0; i < 2; i++) {
      h.send({ type: 'exited', instance: 'primary', code: 1, signal: null });
      h.advance(5000);
      h.ready('primary');
    }
    h.take();
    h.send({ type: 'exited', instance: 'primary', code: 1, signal: null });
    expect(h.stateOf('primary')).toBe('quarantined');
    const actions = h.take();
    expect(actions).toContainEqual({ type: 'stop', instance: 'primary', reason: 'quarantined' });
    expect(actions.filter((a) => a.type === 'emit' && a.event.type === 'quarantined')).toHaveLength(1);
    h.advance(3_600_000);
    expect(h.take().filter((a) => a.type === 'start')).toEqual([]);
    expect(h.send({ type: 'resume', instance: 'primary' })).toBeUndefined();
    expect(h.stateOf('primary')).toBe('starting');
  });

  it('holds a quarantined instance for maintenance when drained, so it can be replaced and resumed', () => {
    const h = booted(service({ drop: ['cold'] }));
    for (let i = 0; i < 3; i++) {
      h.send({ type: 'exited', instance: 'primary', code: 1, signal: null });
      if (i < 2) {
        h.advance(5000);
        h.ready('primary');
      }
    }
    expect(h.stateOf('primary')).toBe('quarantined');
    h.take();
    expect(h.send({ type: 'drain', instance: 'primary' })).toBeUndefined();
    expect(h.stateOf('primary')).toBe('stopped');
    expect(h.state.instances.primary!.maintenance).toBe(true);
    // Already stopped by the quarantine: nothing more to stop.
    expect(h.take().filter((a) => a.type === 'stop' || a.type === 'start')).toEqual([]);
    expect(h.send({ type: 'resume', instance: 'primary' })).toBeUndefined();
    expect(h.stateOf('primary')).toBe('starting');
  });

  it('forgives failures a drill caused: they count toward no quarantine', () => {
    const h = booted(service({ drop: ['cold'] }));
    for (let i = 0; i < 2; i++) {
      h.send({ type: 'exited', instance: 'primary', code: 1, signal: null });
      h.advance(5000);
      h.ready('primary');
    }
    expect(h.send({ type: 'forgive', instance: 'primary' })).toBeUndefined();
    h.send({ type: 'exited', instance: 'primary', code: 1, signal: null });
    expect(h.stateOf('primary')).toBe('down');
    expect(h.send({ type: 'forgive', instance: 'nope' })).toMatch(/no instance nope/);
  });

  it('forgets failures older than the window', () => {
    const h = booted(service({ drop: ['cold'] }));
    for (let i = 0; i < 4; i++) {
      h.send({ type: 'exited', instance: 'primary', code: 1, signal: null });
      h.advance(1000);
      h.ready('primary');
      h.advance(299_000);
    }
    expect(h.stateOf('primary')).toBe('ready');
  });
});

describe('version pinning', () => {
  it('does not admit a standby that serves another version, so a failover cannot change the model', () => {
    const h = new Harness(service({ version: '1.0', drop: ['cold'] }));
    h.send({ type: 'boot' });
    h.ready('primary');
    h.send({ type: 'probe', instance: 'hot', probe: 'startup', ok: true, detail: '200' });
    h.send({ type: 'version', instance: 'hot', version: '2.0', detail: '200' });
    expect(h.events('version-mismatch')).toEqual([
      { type: 'version-mismatch', instance: 'hot', expected: '1.0', actual: '2.0', reason: 'serves version 2.0, expected 1.0; not admitted' },
    ]);
    h.send({ type: 'exited', instance: 'primary', code: 1, signal: null });
    expect(h.state.active).toBeNull();
    expect(h.send({ type: 'switchover', to: 'hot' })).toBe('hot cannot take the traffic: it is serving version 2.0');
  });

  it('admits an instance only once its version is read', () => {
    const h = new Harness(service({ version: '1.0' }));
    h.send({ type: 'boot' });
    h.send({ type: 'probe', instance: 'primary', probe: 'startup', ok: true, detail: '200' });
    expect(h.take()).toContainEqual({ type: 'check-version', instance: 'primary' });
    expect(h.state.active).toBeNull();
    h.send({ type: 'version', instance: 'primary', version: '1.0', detail: '200' });
    expect(h.state.active).toBe('primary');
  });

  it('does not start a cold standby while warm instances are ready and only their version is still being read', () => {
    const h = new Harness(service({ version: '1.0' }));
    h.send({ type: 'boot' });
    h.send({ type: 'probe', instance: 'primary', probe: 'startup', ok: true, detail: '200' });
    h.send({ type: 'probe', instance: 'hot', probe: 'startup', ok: true, detail: '200' });
    expect(h.stateOf('cold')).toBe('stopped');
    // An unreadable version is a failure to serve, not a read on its way: now the cold standby starts.
    h.send({ type: 'version', instance: 'primary', version: undefined, detail: 'connection refused' });
    h.send({ type: 'version', instance: 'hot', version: undefined, detail: 'connection refused' });
    expect(h.stateOf('cold')).toBe('starting');
  });

  it('moves traffic off an active instance whose version changes under it', () => {
    const h = booted(service({ version: '1.0' }));
    h.send({ type: 'version', instance: 'primary', version: '1.1', detail: '200' });
    expect(h.state.active).toBe('hot');
  });
});

describe('invariants over random histories', () => {
  // A small seeded generator keeps failures reproducible: the seed is in the test name.
  function rng(seed: number) {
    return () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed / 0x7fffffff;
    };
  }
  const names = ['primary', 'hot', 'cold'];

  function randomInput(r: () => number): Input {
    const instance = names[Math.floor(r() * names.length)]!;
    const roll = r();
    if (roll < 0.25) return { type: 'probe', instance, probe: r() < 0.5 ? 'startup' : 'ready', ok: r() < 0.6, detail: 'x' };
    if (roll < 0.35) return { type: 'version', instance, version: r() < 0.8 ? '1.0' : '2.0', detail: 'x' };
    if (roll < 0.45) return { type: 'passive', instance, hard: r() < 0.5, reason: 'x' };
    if (roll < 0.55) return { type: 'exited', instance, code: 1, signal: null };
    if (roll < 0.6) return { type: 'start-failed', instance, reason: 'x' };
    if (roll < 0.65) return { type: 'switchover', to: r() < 0.5 ? undefined : instance };
    if (roll < 0.7) return { type: 'drain', instance };
    if (roll < 0.75) return { type: 'drained', instance };
    if (roll < 0.8) return { type: 'resume', instance };
    return { type: 'tick' };
  }

  for (const seed of [1, 2, 3, 4, 5, 6, 7, 8]) {
    it(`holds for seed ${seed}`, () => {
      const r = rng(seed);
      for (const config of [service({ version: '1.0' }), service({ failback: '"after 10s"' })]) {
        const h = new Harness(config);
        h.send({ type: 'boot' });
        h.take();
        for (let i = 0; i < 3000; i++) {
          h.now += Math.floor(r() * 2000);
          const before = h.state;
          const input = randomInput(r);
          const rejected = h.send(input);
          const { state } = h;
          if (rejected !== undefined) expect(state).toBe(before);
          const candidates = Object.values(state.instances).filter(isRoutable);
          // Traffic always has a home when one exists, and never a home that cannot serve.
          if (state.active === null) expect(candidates).toEqual([]);
          else expect(isRoutable(state.instances[state.active]!)).toBe(true);
          for (const action of h.take()) {
            if (action.type === 'emit' && action.event.type === 'instance-state') {
              expect(action.event.from).not.toBe(action.event.to);
            }
            if (action.type === 'start') {
              expect(state.instances[action.instance]!.state, JSON.stringify(input)).toBe('starting');
            }
          }
          for (const instance of Object.values(state.instances)) {
            if (instance.state === 'quarantined' || instance.maintenance) expect(instance.restartAt).toBeUndefined();
          }
          // A tick never leaves an overdue deadline behind.
          const deadline = nextDeadline(config, state);
          if (deadline !== undefined && deadline <= h.now) {
            h.send({ type: 'tick' });
            const after = nextDeadline(config, h.state);
            expect(after === undefined || after > h.now).toBe(true);
            h.take();
          }
        }
      }
    });
  }
});

describe('review findings', () => {
  it('a failed version read does not take an admitted instance out of rotation', () => {
    const h = booted(service({ version: '1.0' }));
    h.send({ type: 'version', instance: 'primary', version: undefined, detail: 'timeout after 2000ms' });
    expect(h.state.active).toBe('primary');
    expect(h.events('version-mismatch')).toEqual([]);
  });

  it('a primary quarantined by the failure that moved traffic returns by the failback policy, not at once', () => {
    const h = booted(service({ drop: ['cold'] }));
    h.state.instances.primary!.failureTimes = [h.now - 2, h.now - 1];
    h.send({ type: 'exited', instance: 'primary', code: 1, signal: null });
    expect(h.stateOf('primary')).toBe('quarantined');
    expect(h.state.active).toBe('hot');
    h.send({ type: 'resume', instance: 'primary' });
    h.ready('primary');
    expect(h.state.active).toBe('hot'); // failback: never
  });
});

describe('admitted versions during a deploy', () => {
  it('admits the new version next to the old one, then only the one named', () => {
    const h = booted(service({ version: '1.0', drop: ['cold'] }));
    // The standby is upgraded: not admitted while only 1.0 is expected.
    h.send({ type: 'version', instance: 'hot', version: '2.0', detail: '200' });
    expect(h.state.instances.hot!.admitted).toBe(false);
    h.take();

    expect(h.send({ type: 'expect', versions: ['2.0', '1.0'] })).toBeUndefined();
    expect(h.state.expected).toEqual(['2.0', '1.0']);
    expect(h.state.instances.hot!.admitted).toBe(true);
    expect(h.state.instances.primary!.admitted).toBe(true);
    expect(h.send({ type: 'switchover', to: 'hot' })).toBeUndefined();
    expect(h.state.active).toBe('hot');
    h.take();

    // Rollback: 2.0 is refused again, and traffic goes back to the instance on 1.0 at once.
    h.send({ type: 'expect', versions: ['1.0'] });
    expect(h.state.instances.hot!.admitted).toBe(false);
    expect(h.state.active).toBe('primary');
    const events = h.events();
    expect(events).toContainEqual({
      type: 'version-mismatch',
      instance: 'hot',
      expected: '1.0',
      actual: '2.0',
      reason: 'serves version 2.0, expected 1.0; not admitted',
    });
    expect(events.filter((e) => e.type === 'active-changed').map((e) => e.type === 'active-changed' && e.kind)).toEqual(['failover']);
  });

  it('refuses an empty list and a service that pins no version, changing nothing', () => {
    const pinned = booted(service({ version: '1.0' }));
    expect(pinned.send({ type: 'expect', versions: [] })).toBe('name at least one version');
    expect(pinned.state.expected).toEqual(['1.0']);
    const free = booted(service());
    expect(free.send({ type: 'expect', versions: ['2.0'] })).toBe('service tts pins no version (set version.expect)');
  });
});

describe('version problems', () => {
  it('are reported once while they last, and again when they change', () => {
    const h = new Harness(service({ version: '1.0' }));
    h.send({ type: 'boot' });
    h.send({ type: 'probe', instance: 'hot', probe: 'startup', ok: true, detail: '200' });
    h.take();
    for (let i = 0; i < 5; i++) h.send({ type: 'version', instance: 'hot', version: undefined, detail: '/version answered 404' });
    h.send({ type: 'version', instance: 'hot', version: '2.0', detail: '200' });
    h.send({ type: 'version', instance: 'hot', version: '2.0', detail: '200' });
    expect(h.events('version-mismatch').map((e) => e.reason)).toEqual([
      'version unreadable: /version answered 404; not admitted',
      'serves version 2.0, expected 1.0; not admitted',
    ]);
  });
});
