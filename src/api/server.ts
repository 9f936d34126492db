import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { BackupError } from '../backup/index.js';
import { ClusterError } from '../cluster/index.js';
import { ConfigError, parseDuration } from '../config/index.js';
import { ReleaseError, type Understudy } from '../controller/index.js';
import { UnderstudyError, type UnderstudyEvent } from '../core/index.js';
import { DrillError, FAULT_KINDS, renderTimelineSvg, type FaultKind } from '../drill/index.js';
import { itemsInOrder, JobError, resultBytes, resultLine, StoreError, type JobState, type JobView } from '../jobs/index.js';
import { actorOf } from './actor.js';
import { LiveFeed } from './live.js';
import { tokenMatches } from './token.js';
import { hostRefusal, UiAssets } from './ui.js';

const JOB_STATES = new Set<JobState>(['running', 'paused', 'succeeded', 'failed', 'cancelled']);

/**
 * The admin API. Everything but `/healthz`, `/healthz/vip` and `/metrics` needs the
 * bearer token; it listens on 127.0.0.1 unless configured otherwise.
 *
 *   GET  /healthz/vip                                    200 when this node should hold a virtual IP
 *                                                        (it runs and serves every service), else 503
 *   GET  /v1/status                                      services, instances, active
 *   GET  /v1/cluster                                     in a cluster: leader, epoch, members and their views, routing
 *   POST /v1/cluster/failover               {"to"}       the leader hands leadership to another member (202)
 *   GET  /v1/config                                      in a cluster: the shared configuration's revision this node runs, the newest, one it refused
 *   GET  /v1/config/history                              the revisions kept, newest first
 *   GET  /v1/config/text?revision=                       a revision's YAML (the current one by default)
 *   POST /v1/config                {"text","ifRevision"?} check as every node reads it, store as the next revision (201)
 *   POST /v1/config/rollback       {"to","ifRevision"?}   store revision "to" again as the next revision (201)
 *   GET  /v1/events?service=&type=&since=10m&limit=      the event timeline
 *   POST /v1/services/:service/switchover   {"to"?}      move traffic on purpose
 *   POST /v1/services/:service/instances/:name/drain     take out of rotation, then stop
 *   POST /v1/services/:service/instances/:name/resume    bring back a drained or quarantined instance
 *   POST /v1/services/:service/deploy       {"version"}  roll a new version out (202; goes on in the background)
 *   POST /v1/services/:service/rollback     {"to"?}      back to the newest known-good version (or "to")
 *   GET  /v1/services/:service/releases                  current, known-good, history, the deploy running
 *
 *   GET  /v1/snapshots?service=      snapshots, newest first (damaged ones marked broken), next scheduled runs
 *   POST /v1/snapshots {"service"}   take one now (201)
 *   POST /v1/services/:service/drill {"fault","instance"?}  begin a drill (202; its report follows as drill-finished)
 *   GET  /v1/drills?service=         drill reports kept, oldest first, and the next scheduled drills
 *   GET  /v1/drills/:id              one report, whole (samples, states, marks)
 *   GET  /v1/drills/:id/timeline.svg its timeline picture
 *
 *   GET  /ui/                        the dashboard (its files need no token; everything it shows does)
 *   GET  /v1/live                    server-sent events for the dashboard: hello, event, status, job, traffic
 *   GET  /v1/traffic                 per instance and second: requests, errors, p50/p95 ms; the last requests per service
 *   GET  /v1/logs?request=           the log lines kept in memory that mention a request or trace id
 *
 * Every POST is recorded as an operator-action event, with who asked (X-Understudy-Actor)
 * and through what (X-Understudy-Client: dashboard or cli).
 *   GET  /v1/alerts?service=&limit=  alerts raised, newest last, and whether each was sent
 *   GET  /v1/snapshots/:id           its manifest
 *   POST /v1/snapshots/verify {"id"?}  re-hash every blob; names each damaged file
 *   POST /v1/snapshots/prune {"dryRun"?}  apply retention
 *   POST /v1/snapshots/:id/restore   put its files (staging, then a swap) and image back
 *
 *   POST /v1/jobs                    submit a job (Idempotency-Key: the same job for a repeat)
 *   GET  /v1/jobs?state=&service=&limit=
 *   GET  /v1/jobs/:id                the job with its progress
 *   POST /v1/jobs/:id/pause|resume|cancel
 *   POST /v1/jobs/prune              remove finished jobs past jobs.retention (or {maxAge, maxCount}); {dryRun: true} only says which
 *   GET  /v1/jobs/:id/stream         server-sent events: progress until the job ends
 *   GET  /v1/jobs/:id/results?bodies=0  JSON Lines, one result per item in item order (bodies=0: without the answers)
 *   GET  /v1/jobs/:id/items/:index/body   the raw body of one item's result
 *   GET  /v1/jobs/:id/output         the joined output (join: wav or concat), once the job ended
 */
export class AdminServer {
  private server: Server | undefined;
  private readonly ui = new UiAssets();
  readonly live: LiveFeed;

  constructor(
    private readonly app: Understudy,
    private readonly token: string,
  ) {
    this.live = new LiveFeed(app);
  }

  async start(): Promise<{ host: string; port: number }> {
    const { host, port } = this.app.config.admin.listen;
    const server = createServer((req, res) => {
      this.handle(req, res).catch((error: unknown) => {
        if (res.headersSent) res.destroy();
        else if (error instanceof ClusterError) send(res, error.status, { error: { code: error.code, message: error.message, ...error.details } });
        else send(res, 500, { error: { code: 'INTERNAL', message: String(error) } });
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    this.server = server;
    const address = server.address();
    return typeof address === 'object' && address ? { host: address.address, port: address.port } : { host, port };
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    this.live.close();
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  }

  private async config(req: IncomingMessage, res: ServerResponse, url: URL, route: string): Promise<void> {
    const revisionOf = (value: unknown, name: string): number | undefined => {
      if (value === undefined || value === null || value === '') return undefined;
      const n = typeof value === 'string' ? Number(value) : value;
      if (typeof n !== 'number' || !Number.isInteger(n) || n < 0) throw new ClusterError('INVALID_INPUT', `${name} must be a revision number (0 or more), got ${JSON.stringify(value)}`);
      return n;
    };
    if (route === 'GET /v1/config') return send(res, 200, { config: await this.app.configView() });
    if (route === 'GET /v1/config/history') return send(res, 200, { revisions: await this.app.sharedConfig().history() });
    if (route === 'GET /v1/config/text') {
      return send(res, 200, { config: await this.app.sharedConfig().show(revisionOf(url.searchParams.get('revision'), 'revision')) });
    }
    if (route === 'POST /v1/config') {
      const { text, ifRevision } = (await readJson(req, 4 * 1024 * 1024)) as { text?: unknown; ifRevision?: unknown };
      if (typeof text !== 'string' || text.trim() === '') return send(res, 400, { error: { code: 'BAD_REQUEST', message: 'send {"text": "<the YAML>"}' } });
      return send(res, 201, await this.app.configApply(text, { ifRevision: revisionOf(ifRevision, 'ifRevision') }));
    }
    if (route === 'POST /v1/config/rollback') {
      const { to, ifRevision } = (await readJson(req, 64 * 1024)) as { to?: unknown; ifRevision?: unknown };
      const revision = revisionOf(to, 'to');
      if (revision === undefined) return send(res, 400, { error: { code: 'BAD_REQUEST', message: 'send {"to": <revision>}' } });
      return send(res, 201, await this.app.configRollback(revision, { ifRevision: revisionOf(ifRevision, 'ifRevision') }));
    }
    return send(res, 404, { error: { code: 'NOT_FOUND', message: `no route ${route}` } });
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://admin');
    const route = `${req.method} ${url.pathname}`;
    if (route === 'GET /healthz') return send(res, 200, { status: 'ok' });
    if (route === 'GET /healthz/vip') {
      const { ok, reason } = this.app.canServe();
      return send(res, ok ? 200 : 503, { hold: ok, reason });
    }
    if (route === 'GET /metrics') {
      const registry = this.app.metrics.registry;
      const text = await registry.metrics();
      res.writeHead(200, { 'content-type': registry.contentType }).end(text);
      return;
    }
    const { listen, allowedHosts } = this.app.config.admin;
    const refused = hostRefusal(req, listen.host, allowedHosts);
    if (refused !== undefined) return send(res, 403, { error: { code: 'WRONG_HOST', message: refused } });
    // No CORS, ever: a page on another site cannot read any answer, nor send the token header.
    if (req.method === 'OPTIONS') return send(res, 405, { error: { code: 'NO_CORS', message: 'the admin API answers its own pages only' } });
    if ((req.method === 'GET' || req.method === 'HEAD') && (url.pathname === '/' || url.pathname === '/ui' || url.pathname.startsWith('/ui/'))) {
      return this.ui.serve(req, res, url.pathname);
    }
    if (!tokenMatches(req.headers.authorization, this.token)) {
      return send(res, 401, { error: { code: 'UNAUTHORIZED', message: 'send Authorization: Bearer <admin token>' } });
    }
    if (req.method === 'POST') this.record(req, res, url.pathname);
    if (route === 'GET /v1/live') return this.live.attach(req, res);
    if (route === 'GET /v1/traffic') {
      this.app.traffic.settle();
      return send(res, 200, { series: this.app.traffic.series(), last: this.app.traffic.lastRequests() });
    }
    if (route === 'GET /v1/logs') {
      const request = url.searchParams.get('request') ?? '';
      if (!/^[\w.:-]{4,128}$/.test(request)) return send(res, 400, { error: { code: 'BAD_FIELD', message: 'request is a request or trace id' } });
      return send(res, 200, { request, lines: this.app.logLines.find(request), access: this.app.config.log.access });
    }
    if (route === 'GET /v1/status') {
      return send(res, 200, { services: Object.fromEntries(this.app.status().map((s) => [s.name, s])) });
    }
    if (route === 'GET /v1/events') return this.events(url, res);
    if (route === 'GET /v1/cluster') return send(res, 200, { cluster: await this.app.clusterView() });
    if (route === 'POST /v1/cluster/failover') {
      const { to } = (await readJson(req, 64 * 1024)) as { to?: unknown };
      if (typeof to !== 'string' || to === '') return send(res, 400, { error: { code: 'BAD_REQUEST', message: 'send {"to": "<node>"}' } });
      await this.app.clusterFailover(to);
      return send(res, 202, { cluster: await this.app.clusterView() });
    }
    if (url.pathname === '/v1/config' || url.pathname.startsWith('/v1/config/')) {
      try {
        return await this.config(req, res, url, route);
      } catch (error) {
        if (error instanceof ConfigError) return send(res, 400, { error: { code: 'INVALID_CONFIG', message: error.message, issues: error.issues } });
        throw error;
      }
    }
    if (url.pathname === '/v1/jobs' || url.pathname.startsWith('/v1/jobs/')) {
      try {
        return await this.jobs(req, res, url);
      } catch (error) {
        if (res.headersSent) return void res.destroy();
        if (error instanceof JobError) return send(res, error.status, { error: { code: error.code, message: error.message, ...error.details } });
        if (error instanceof StoreError) return send(res, 503, { error: { code: error.code, message: error.message } });
        throw error;
      }
    }

    if (url.pathname === '/v1/snapshots' || url.pathname.startsWith('/v1/snapshots/')) {
      try {
        return await this.snapshots(req, res, url);
      } catch (error) {
        if (error instanceof BackupError) {
          const status = error.code === 'SNAPSHOT_NOT_FOUND' ? 404 : error.code === 'INVALID_INPUT' ? 400 : error.code === 'SNAPSHOT_CORRUPT' ? 409 : 500;
          return send(res, status, { error: { code: error.code, message: error.message, ...error.details } });
        }
        throw error;
      }
    }

    if (route === 'GET /v1/alerts') {
      const limit = Number(url.searchParams.get('limit') ?? 100);
      const service = url.searchParams.get('service') ?? undefined;
      const alerts = this.app.alerts.recent({ service, limit: Number.isInteger(limit) && limit > 0 ? limit : 100 });
      return send(res, 200, { alerts: alerts.map(({ event: _event, ...alert }) => alert) });
    }

    const picture = /^\/v1\/drills\/([^/]+)\/timeline\.svg$/.exec(url.pathname);
    if (route.startsWith('GET ') && picture) {
      try {
        const svg = renderTimelineSvg(await this.app.drills.get(decodeURIComponent(picture[1]!)));
        res.writeHead(200, { 'content-type': 'image/svg+xml', 'content-length': Buffer.byteLength(svg), 'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'" }).end(svg);
        return;
      } catch (error) {
        if (error instanceof DrillError) return send(res, error.status, { error: { code: error.code, message: error.message } });
        throw error;
      }
    }
    const drill = /^\/v1\/(?:services\/([^/]+)\/drill|drills(?:\/([^/]+))?)$/.exec(url.pathname);
    if (drill) {
      try {
        return await this.drill(req, res, url, drill[1] === undefined ? undefined : decodeURIComponent(drill[1]), drill[2] === undefined ? undefined : decodeURIComponent(drill[2]));
      } catch (error) {
        if (error instanceof DrillError) return send(res, error.status, { error: { code: error.code, message: error.message } });
        throw error;
      }
    }

    const release = /^\/v1\/services\/([^/]+)\/(deploy|rollback|releases)$/.exec(url.pathname);
    if (release) {
      try {
        return await this.release(req, res, decodeURIComponent(release[1]!), release[2] as 'deploy' | 'rollback' | 'releases');
      } catch (error) {
        if (error instanceof ReleaseError) return send(res, error.status, { error: { code: error.code, message: error.message } });
        throw error;
      }
    }

    const command = /^\/v1\/services\/([^/]+)(?:\/instances\/([^/]+))?\/(switchover|drain|resume)$/.exec(url.pathname);
    if (req.method === 'POST' && command) {
      const [, serviceName, instance, verb] = command;
      const service = this.app.service(decodeURIComponent(serviceName!));
      if (!service) return send(res, 404, { error: { code: 'NO_SERVICE', message: `no service named ${serviceName}` } });
      const body = await readJson(req, 64 * 1024);
      if (body instanceof UnderstudyError) return send(res, 400, { error: { code: body.code, message: body.message } });
      let rejected: string | undefined;
      if (verb === 'switchover' && instance === undefined) {
        const to = (body as { to?: unknown }).to;
        if (to !== undefined && typeof to !== 'string') {
          return send(res, 400, { error: { code: 'BAD_FIELD', message: '"to" must be an instance name' } });
        }
        // In a cluster the leader moves traffic, and every node follows it.
        this.app.mustLead(`switch ${service.config.name} over`);
        const { by, via } = actorOf(req);
        rejected = service.dispatch({ type: 'switchover', to, reason: `switchover requested by ${by} via ${via}` });
      } else if ((verb === 'drain' || verb === 'resume') && instance !== undefined) {
        // So is a drain: the leader publishes what it holds, and every node holds the same.
        this.app.mustLead(`${verb} ${service.config.name}/${decodeURIComponent(instance)}`);
        rejected = service.dispatch({ type: verb, instance: decodeURIComponent(instance) });
      } else {
        return notFound(res);
      }
      if (rejected !== undefined) return send(res, 409, { error: { code: 'REFUSED', message: rejected } });
      return send(res, 200, { ok: true, service: service.view() });
    }
    return notFound(res);
  }

  /**
   * Records an action (every POST) as an `operator-action` event once it is answered:
   * who asked, through what, whether it was taken up, and why not.
   */
  private record(req: IncomingMessage, res: ServerResponse, pathname: string): void {
    const { by, via } = actorOf(req);
    const parts = pathname.split('/').slice(2).map(decodeURIComponent);
    res.once('finish', () => {
      const answer = answers.get(res) as { error?: { message?: string }; job?: { id?: string; service?: string }; snapshot?: { service?: string } } | undefined;
      let action = parts.join(' ');
      let target = '*';
      let service = '*';
      if (parts[0] === 'services' && parts[1] !== undefined) {
        service = parts[1];
        target = parts[2] === 'instances' && parts[3] !== undefined ? `${parts[1]}/${parts[3]}` : parts[1];
        action = parts[parts.length - 1]!;
      } else if (parts[0] === 'jobs' && parts[1] === 'prune') {
        action = 'prune jobs';
        target = 'jobs';
      } else if (parts[0] === 'jobs') {
        target = answer?.job?.id ?? parts[1] ?? 'job';
        service = answer?.job?.service ?? '*';
        action = parts[2] === undefined ? 'submit job' : `${parts[2]} job`;
      } else if (parts[0] === 'snapshots') {
        target = parts[1] === undefined || parts[1] === 'verify' || parts[1] === 'prune' ? 'snapshots' : parts[1];
        service = answer?.snapshot?.service ?? '*';
        action = parts[1] === undefined ? 'snapshot' : parts[1] === 'verify' || parts[1] === 'prune' ? `${parts[1]} snapshots` : `${parts[2] ?? 'change'} snapshot`;
      } else if (parts[0] === 'cluster' || parts[0] === 'config') {
        action = parts.join(' ');
        target = parts[0];
      }
      const outcome = res.statusCode < 400 ? 'accepted' : 'refused';
      const why = outcome === 'accepted' ? `${action} ${target} requested by ${by} via ${via}` : `${action} ${target} refused (${res.statusCode}): ${answer?.error?.message ?? 'no reason given'}`;
      this.app.events.publish({
        type: 'operator-action',
        action,
        target,
        by,
        via,
        outcome,
        reason: why,
        service,
        time: Date.now(),
        traceId: String(req.headers['x-request-id'] ?? '') || randomBytes(8).toString('hex'),
      });
    });
  }

  private async snapshots(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    const backups = this.app.backups;
    const [id, verb] = url.pathname.split('/').slice(3).map(decodeURIComponent);
    const method = req.method ?? 'GET';
    if (id === undefined && method === 'GET') {
      const service = url.searchParams.get('service') ?? undefined;
      const verified = lastVerified(this.app.events.list({ type: 'snapshots-verified' }));
      const snapshots = (await backups.store.list({ service })).map((s) => ({
        ...s,
        // A snapshot is read back and hashed when taken; a later `verify` says more.
        verified: verified.get(s.id) ?? (s.broken ? null : { at: s.createdAt, ok: true, by: 'taken' as const }),
      }));
      return send(res, 200, { snapshots, schedules: backups.nextRuns() });
    }
    const body = method === 'POST' ? await readJson(req, 64 * 1024) : {};
    if (body instanceof UnderstudyError) return send(res, 400, { error: { code: body.code, message: body.message } });
    const fields = body as { service?: unknown; id?: unknown; dryRun?: unknown };
    if (id === undefined && method === 'POST') {
      if (typeof fields.service !== 'string' || !this.app.service(fields.service)) {
        return send(res, 400, { error: { code: 'BAD_FIELD', message: '"service" must name a service' } });
      }
      const snapshot = await backups.snapshot(fields.service, this.app.service(fields.service)!.release ?? null, 'manual');
      if (snapshot === undefined) {
        return send(res, 409, { error: { code: 'NOTHING_TO_KEEP', message: `service ${fields.service} has no backup.paths and no backup.images` } });
      }
      return send(res, 201, { snapshot: (await backups.store.get(snapshot)).manifest });
    }
    if (id === 'verify' && method === 'POST') {
      if (fields.id !== undefined && typeof fields.id !== 'string') return send(res, 400, { error: { code: 'BAD_FIELD', message: '"id" must be a snapshot id' } });
      return send(res, 200, await backups.verify(fields.id as string | undefined));
    }
    if (id === 'prune' && method === 'POST') return send(res, 200, await backups.prune(fields.dryRun === true));
    if (id !== undefined && verb === undefined && method === 'GET') return send(res, 200, await backups.store.get(id));
    if (id !== undefined && verb === 'restore' && method === 'POST') return send(res, 200, await backups.restore(id, 'restore requested'));
    return notFound(res);
  }

  private async release(req: IncomingMessage, res: ServerResponse, name: string, verb: 'deploy' | 'rollback' | 'releases'): Promise<void> {
    if (!this.app.service(name)) return send(res, 404, { error: { code: 'NO_SERVICE', message: `no service named ${name}` } });
    if (verb === 'releases') {
      if (req.method !== 'GET') return notFound(res);
      const releases = this.app.releases.get(name);
      return send(res, 200, {
        service: name,
        current: releases?.current ?? null,
        knownGood: releases?.knownGood ?? [],
        history: releases?.history ?? [],
        running: this.app.deploys.view(name) ?? null,
      });
    }
    if (req.method !== 'POST') return notFound(res);
    const body = await readJson(req, 64 * 1024);
    if (body instanceof UnderstudyError) return send(res, 400, { error: { code: body.code, message: body.message } });
    const { version, to } = body as { version?: unknown; to?: unknown };
    if (verb === 'deploy') {
      if (typeof version !== 'string' || version.length === 0) {
        return send(res, 400, { error: { code: 'BAD_FIELD', message: '"version" must name the version to deploy, e.g. {"version":"2.1"}' } });
      }
      return send(res, 202, { deploy: await this.app.deploys.deploy(name, version) });
    }
    if (to !== undefined && (typeof to !== 'string' || to.length === 0)) {
      return send(res, 400, { error: { code: 'BAD_FIELD', message: '"to" must name a version' } });
    }
    return send(res, 202, { rollback: await this.app.deploys.rollback(name, 'rollback requested', to as string | undefined) });
  }

  private async drill(req: IncomingMessage, res: ServerResponse, url: URL, service: string | undefined, id: string | undefined): Promise<void> {
    const drills = this.app.drills;
    if (service === undefined) {
      if (req.method !== 'GET') return notFound(res);
      if (id !== undefined) return send(res, 200, { drill: { ...(await drills.get(id)), dir: drills.dirOf(id) } });
      return send(res, 200, { drills: await drills.list(url.searchParams.get('service') ?? undefined), schedules: drills.nextRuns() });
    }
    if (req.method !== 'POST') return notFound(res);
    const body = await readJson(req, 64 * 1024);
    if (body instanceof UnderstudyError) return send(res, 400, { error: { code: body.code, message: body.message } });
    const { fault, instance } = (typeof body === 'object' && body !== null ? body : {}) as { fault?: unknown; instance?: unknown };
    if (typeof fault !== 'string') {
      return send(res, 400, { error: { code: 'BAD_FIELD', message: `"fault" must be one of ${FAULT_KINDS.join(', ')}` } });
    }
    if (instance !== undefined && typeof instance !== 'string') return send(res, 400, { error: { code: 'BAD_FIELD', message: '"instance" must name an instance' } });
    const begun = drills.begin({ service, fault: fault as FaultKind, instance });
    begun.done.catch((error: unknown) => this.app.log.error({ err: error }, `drill ${begun.id} failed`));
    return send(res, 202, { drill: { id: begun.id, service, fault: begun.fault, instances: begun.instances } });
  }

  private async jobs(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    const jobs = this.app.jobs;
    const parts = url.pathname.split('/').slice(3).map(decodeURIComponent);
    const [id, verb, index, tail] = parts;
    const method = req.method ?? 'GET';
    if (id === undefined) {
      if (method === 'POST') {
        const body = await readJson(req, this.app.config.jobs.submitLimit);
        if (body instanceof UnderstudyError) {
          return send(res, body.code === 'TOO_LARGE' ? 413 : 400, { error: { code: body.code, message: body.message } });
        }
        const key = req.headers['idempotency-key'];
        const { job, created } = await jobs.submit(body, typeof key === 'string' && key !== '' ? key : null);
        return send(res, created ? 201 : 200, { job, created });
      }
      if (method === 'GET') {
        const state = url.searchParams.get('state') ?? undefined;
        if (state !== undefined && !JOB_STATES.has(state as JobState)) {
          return send(res, 400, { error: { code: 'BAD_FIELD', message: `state is one of ${[...JOB_STATES].join(', ')}` } });
        }
        const limit = url.searchParams.get('limit');
        if (limit !== null && !/^\d+$/.test(limit)) return send(res, 400, { error: { code: 'BAD_FIELD', message: 'limit is a whole number' } });
        const list = await jobs.list({
          state: state as JobState | undefined,
          service: url.searchParams.get('service') ?? undefined,
          limit: limit === null ? 100 : Number(limit),
        });
        return send(res, 200, { jobs: list });
      }
      return notFound(res);
    }
    if (id === 'prune' && verb === undefined && method === 'POST') return this.pruneJobs(req, res);
    if (method === 'GET' && verb === undefined) return send(res, 200, { job: await jobs.view(id) });
    if (method === 'POST' && (verb === 'pause' || verb === 'resume' || verb === 'cancel') && index === undefined) {
      return send(res, 200, { job: await jobs[verb](id) });
    }
    if (method !== 'GET') return notFound(res);
    if (verb === 'stream' && index === undefined) return this.jobStream(req, res, id);
    if (verb === 'results' && index === undefined) {
      await jobs.view(id); // 404 for an unknown job
      const store = this.app.jobStore();
      const jobId = id;
      // bodies=0: what each item did, without its answer (the dashboard's job page).
      const bodies = url.searchParams.get('bodies') !== '0';
      async function* lines() {
        for await (const item of itemsInOrder(store, jobId)) {
          const line = resultLine(item);
          if (!bodies) for (const key of ['json', 'text', 'base64']) delete line[key];
          yield `${JSON.stringify(line)}\n`;
        }
      }
      res.writeHead(200, { 'content-type': 'application/x-ndjson' });
      // pipeline: backpressure, and a client that leaves (or a store that fails midway) ends both sides.
      await pipeline(Readable.from(lines()), res).catch(() => res.destroy());
      return;
    }
    if (verb === 'items' && index !== undefined && /^\d+$/.test(index) && tail === 'body') {
      await jobs.view(id);
      const [item] = await this.app.jobStore().items(id, Number(index), 1);
      if (!item || item.index !== Number(index)) return send(res, 404, { error: { code: 'NO_ITEM', message: `job ${id} has no item ${index}` } });
      if (!item.result) return send(res, 409, { error: { code: 'NOT_DONE', message: `item ${index} has no result yet` } });
      const bytes = await resultBytes(item.result.body);
      res.writeHead(200, {
        'content-type': item.result.headers['content-type'] ?? 'application/octet-stream',
        'content-length': bytes.length,
        'x-item-status': String(item.result.status ?? ''),
      });
      res.end(bytes);
      return;
    }
    if (verb === 'output' && index === undefined) {
      const job = await jobs.view(id);
      const file = job.outputs.joined;
      if (!file) return send(res, 404, { error: { code: 'NO_OUTPUT', message: `job ${id} joins no output; submit it with "join": "wav" or "concat"` } });
      if (!['succeeded', 'failed', 'cancelled'].includes(job.state)) {
        return send(res, 409, { error: { code: 'NOT_DONE', message: `job ${id} is ${job.state}; its output is written when it ends` } });
      }
      const info = await stat(file).catch(() => undefined);
      if (!info) return send(res, 404, { error: { code: 'NO_OUTPUT', message: `${file} is missing` } });
      res.writeHead(200, { 'content-type': job.options.join === 'wav' ? 'audio/wav' : 'application/octet-stream', 'content-length': info.size });
      await pipeline(createReadStream(file), res).catch(() => res.destroy());
      return;
    }
    return notFound(res);
  }

  /** Server-sent events: `progress` with the job's view as it changes, then `end` once it is over. */
  /** POST /v1/jobs/prune {dryRun?, maxAge?, maxCount?}: jobs.retention now, or the one given for this once. */
  private async pruneJobs(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readJson(req, 64 * 1024);
    if (body instanceof UnderstudyError) return send(res, 400, { error: { code: body.code, message: body.message } });
    const bad = (message: string) => send(res, 400, { error: { code: 'BAD_FIELD', message } });
    // Removing is for good: a body that is not exactly what is meant (a misspelt dryRun) is refused, never taken as {}.
    if (typeof body !== 'object' || body === null || Array.isArray(body)) return bad('the body is a JSON object: {"dryRun"?, "maxAge"?, "maxCount"?}');
    const unknown = Object.keys(body).filter((key) => !['dryRun', 'maxAge', 'maxCount'].includes(key));
    if (unknown.length > 0) return bad(`unknown field ${unknown.map((key) => JSON.stringify(key)).join(', ')}: the fields are dryRun, maxAge and maxCount`);
    const { dryRun, maxAge, maxCount } = body as Record<string, unknown>;
    if (dryRun !== undefined && typeof dryRun !== 'boolean') return bad('"dryRun" is true or false');
    // A duration with its unit only: a bare 7 would be 7 milliseconds, and remove nearly everything.
    const age = maxAge === null || maxAge === undefined ? maxAge : typeof maxAge === 'string' ? (parseDuration(maxAge) ?? NaN) : NaN;
    if (age !== null && age !== undefined && !(Number.isInteger(age) && age > 0)) {
      return bad('"maxAge" is a duration with its unit, such as "7d" or "12h", or null for no limit by age');
    }
    if (maxCount !== undefined && maxCount !== null && !(typeof maxCount === 'number' && Number.isInteger(maxCount) && maxCount >= 0)) {
      return bad('"maxCount" is a whole number of finished jobs to keep, or null for no limit by number');
    }
    const retention = this.app.config.jobs.retention;
    const rule = { maxAge: age === undefined ? retention.maxAge : age, maxCount: maxCount === undefined ? retention.maxCount : (maxCount as number | null) };
    const removed = await this.app.jobs.prune({ ...rule, dryRun: dryRun === true });
    return send(res, 200, {
      dryRun: dryRun === true,
      retention: rule,
      removed: removed.map(({ id, service, name, state, finishedAt, total }) => ({ id, service, name, state, finishedAt, total })),
    });
  }

  private async jobStream(req: IncomingMessage, res: ServerResponse, id: string): Promise<void> {
    const jobs = this.app.jobs;
    const first = await jobs.view(id);
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
    const over = (view: JobView) => ['succeeded', 'failed', 'cancelled'].includes(view.state);
    const sendView = (view: JobView) => {
      res.write(`event: ${over(view) ? 'end' : 'progress'}\ndata: ${JSON.stringify(view)}\n\n`);
      if (over(view)) finish();
    };
    const heartbeat = setInterval(() => res.write(': keep-alive\n\n'), 15_000);
    let unsubscribe = () => {};
    const finish = () => {
      clearInterval(heartbeat);
      unsubscribe();
      res.end();
    };
    req.once('close', finish);
    unsubscribe = jobs.subscribe(id, sendView);
    sendView(first);
  }

  private events(url: URL, res: ServerResponse): void {
    const since = url.searchParams.get('since');
    const limit = url.searchParams.get('limit');
    let sinceTime: number | undefined;
    if (since !== null) {
      const ago = /^\d+$/.test(since) ? undefined : parseDuration(since);
      sinceTime = ago !== undefined ? Date.now() - ago : Number(since);
      if (!Number.isFinite(sinceTime)) {
        return send(res, 400, { error: { code: 'BAD_FIELD', message: 'since is a duration ago ("10m") or epoch milliseconds' } });
      }
    }
    if (limit !== null && !/^\d+$/.test(limit)) {
      return send(res, 400, { error: { code: 'BAD_FIELD', message: 'limit is a whole number' } });
    }
    const events = this.app.events.list({
      service: url.searchParams.get('service') ?? undefined,
      type: url.searchParams.get('type') ?? undefined,
      since: sinceTime,
      limit: limit === null ? undefined : Number(limit),
    });
    send(res, 200, { events });
  }
}

/** What each POST answered, read back when it is recorded as an operator-action. */
const answers = new WeakMap<ServerResponse, unknown>();

function send(res: ServerResponse, status: number, body: unknown): void {
  answers.set(res, body);
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text);
}

function notFound(res: ServerResponse): void {
  send(res, 404, { error: { code: 'NOT_FOUND', message: 'no such admin endpoint; see `understudy --help`' } });
}

/** The body as JSON, or an UnderstudyError (TOO_LARGE, BAD_JSON) that says what is wrong with it. */
async function readJson(req: IncomingMessage, limit: number): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  // Events, not for-await: leaving a for-await early destroys the socket, and the 413 with it.
  await new Promise<void>((resolve, reject) => {
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= limit) chunks.push(chunk);
    });
    req.once('end', resolve).once('error', reject);
  });
  if (size > limit) return new UnderstudyError('TOO_LARGE', `the body is larger than ${limit} bytes; refer to files for large inputs`);
  const text = Buffer.concat(chunks, size).toString('utf8');
  if (text.trim() === '') return {};
  try {
    return JSON.parse(text) as unknown;
  } catch (error) {
    return new UnderstudyError('BAD_JSON', `the body is not JSON: ${(error as Error).message}`);
  }
}

/** Each snapshot's newest `snapshots-verified` outcome. */
function lastVerified(events: UnderstudyEvent[]): Map<string, { at: number; ok: boolean; by: 'verify' }> {
  const outcome = new Map<string, { at: number; ok: boolean; by: 'verify' }>();
  for (const event of events) {
    if (event.type !== 'snapshots-verified') continue;
    for (const id of event.checked) outcome.set(id, { at: event.time, ok: !event.damaged.includes(id), by: 'verify' });
  }
  return outcome;
}
