import { performance } from 'node:perf_hooks';
import { request } from 'undici';
import { expectedText, renderChat } from '../../test/fixtures/llm-model.mjs';
import { startLlmServer, type LlmServer } from '../../test/support/llm.js';
import { freePort } from '../../test/support/ports.js';
import { startUnderstudy, type UnderstudyGateway } from '../proxies/understudy.js';
import { freshDir, progress } from '../workload.js';

/**
 * Streams cut mid-answer: a primary and a hot standby (imitation vLLM servers) behind
 * `understudy up`. Each round starts CONCURRENCY chat streams, SIGKILLs the instance
 * answering them once every stream has had some tokens, and reads every stream to its
 * end; the killed server is started again and the next round kills the other one.
 * Then steady streaming, through Understudy and straight to a server, measures what
 * Understudy adds to each chunk.
 */
export const ROUNDS = 50;
export const CONCURRENCY = 20;
export const MAX_TOKENS = 60;
export const TOKEN_DELAY_MS = 3;
/** Steady streaming: streams each way, their length, and how many run at once. */
export const OVERHEAD_STREAMS = 200;
export const OVERHEAD_TOKENS = 50;
export const OVERHEAD_CONCURRENCY = 4;
const MODEL = 'bench-llm';
const ROUND_TIMEOUT_MS = 30_000;

export interface Spread {
  p50: number;
  p99: number;
  max: number;
}

export interface StreamsResult {
  streams: number;
  rounds: number;
  /** Streams that ended with their final chunk and one [DONE], and no error. */
  complete: number;
  /** Streams that ended with an in-band error or a broken connection. */
  cut: number;
  /** Streams whose final chunk says they were continued. */
  continued: number;
  /** Streams whose text is exactly the uninterrupted answer. */
  identical: number;
  /** Client-side gap at the seam: from the later of the kill and the last chunk before it, to the first chunk after. */
  seamMs: Spread;
  /** The standby's own time to first token for a continuation request, asked directly. */
  standbyTtftMs: Spread;
  /** Per chunk, from the server's x_sent_at to the client reading it. */
  chunk: { direct: Spread; understudy: Spread; addedP50Ms: number; addedP99Ms: number; chunks: number };
  failures: string[];
}

interface Read {
  /** Content chunks with the time (epoch ms, sub-ms) each was read and the server's x_sent_at. */
  chunks: { at: number; sentAt: number; text: string }[];
  done: number;
  errors: number;
  final: Record<string, any> | undefined;
  broken: string | undefined;
}

const now = () => performance.timeOrigin + performance.now();

function spread(values: number[]): Spread {
  if (values.length === 0) return { p50: Number.NaN, p99: Number.NaN, max: Number.NaN };
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
  return { p50: at(0.5), p99: at(0.99), max: sorted[sorted.length - 1]! };
}

/** Reads one chat stream, timing every content chunk as it arrives. */
async function readChat(url: string, body: Record<string, unknown>, onContent?: (n: number) => void): Promise<Read> {
  const read: Read = { chunks: [], done: 0, errors: 0, final: undefined, broken: undefined };
  try {
    const response = await request(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, stream: true, ...body }),
      bodyTimeout: ROUND_TIMEOUT_MS,
    });
    if (response.statusCode !== 200) {
      read.broken = `status ${response.statusCode}: ${(await response.body.text()).slice(0, 200)}`;
      return read;
    }
    let buffer = '';
    for await (const piece of response.body) {
      const at = now();
      buffer += (piece as Buffer).toString('utf8');
      let end: number;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event.startsWith('data: ') ? event.slice(6) : '';
        if (data === '') continue;
        if (data === '[DONE]') {
          read.done += 1;
          continue;
        }
        const chunk = JSON.parse(data) as Record<string, any>;
        if (chunk.error) read.errors += 1;
        const choice = chunk.choices?.[0];
        if (choice?.finish_reason) read.final = chunk;
        const text = choice?.delta?.content;
        if (typeof text === 'string' && text !== '') {
          read.chunks.push({ at, sentAt: chunk.x_sent_at as number, text });
          onContent?.(read.chunks.length);
        }
      }
    }
  } catch (error) {
    read.broken = (error as Error).message;
  }
  return read;
}

interface Status {
  services: Record<string, { active: string | null; instances: { name: string; state: string }[] }>;
}

/** Polls the admin API (every 50 ms, bounded) until `check` holds. */
async function until(gateway: Admin, check: (s: Status) => boolean, what: string): Promise<Status> {
  const deadline = Date.now() + ROUND_TIMEOUT_MS;
  for (;;) {
    const status = await gateway.status();
    if (check(status)) return status;
    if (Date.now() > deadline) throw new Error(`streams bench: not ${what} within ${ROUND_TIMEOUT_MS} ms: ${JSON.stringify(status.services)}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

interface Admin {
  status(): Promise<Status>;
}

const messagesFor = (i: number) => [{ role: 'user', content: `Stream ${i}: tell me about the harbour at night.` }];

export async function runStreams(root: string): Promise<StreamsResult> {
  const dir = await freshDir(root, 'streams');
  const ports = { a: await freePort(), b: await freePort() };
  const start = (name: 'a' | 'b') => startLlmServer({ name, port: ports[name], models: [MODEL], tokenDelayMs: TOKEN_DELAY_MS });
  const servers: Record<'a' | 'b', LlmServer> = { a: await start('a'), b: await start('b') };
  const probes = { ready: { http: { path: '/health' }, interval: '200ms' } };
  let gateway: UnderstudyGateway | undefined;
  const failures: string[] = [];
  try {
    gateway = await startUnderstudy(
      {
        llm: {
          route: { pathPrefix: '/' },
          // A killed server is taken out by passive checks and would stay out 30 s (the default) after it
          // is started again; the rounds wait for it, so a short ejection keeps the run short. It does
          // not change what is measured: the continuation goes to the instance that was ready all along.
          passive: { ejectFor: '1s' },
          // Each server dies 25 times in a few minutes, which would quarantine it (5 in 10 minutes) as flapping.
          quarantine: { failures: ROUNDS },
          instances: {
            a: { tier: 'primary', url: `http://127.0.0.1:${ports.a}`, probes },
            b: { tier: 'hot', url: `http://127.0.0.1:${ports.b}`, probes },
          },
        },
      },
      dir,
      { service: 'llm', instance: 'a' },
    );
    const admin: Admin = { status: () => gateway!.admin<Status>('/v1/status') };
    const url = gateway.url;

    // The standby's own time to first token for a continuation, asked directly.
    const ttft: number[] = [];
    for (let i = 0; i < 50; i++) {
      const head = expectedText(renderChat(messagesFor(i)), 20, { seed: MODEL });
      const asked = now();
      const read = await readChat(servers.b.url, {
        messages: [...messagesFor(i), { role: 'assistant', content: head }],
        continue_final_message: true,
        add_generation_prompt: false,
        max_tokens: 5,
      });
      if (read.chunks[0]) ttft.push(read.chunks[0].at - asked);
    }

    let complete = 0;
    let cut = 0;
    let continued = 0;
    let identical = 0;
    const seams: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const status = await until(admin, (s) => s.services.llm!.instances.every((i) => i.state === 'ready'), 'both instances ready');
      const victim = status.services.llm!.active as 'a' | 'b';
      // The seam moves through the answer from round to round.
      const killAfter = 3 + ((round * 7) % (MAX_TOKENS - 10));
      const had = new Array<number>(CONCURRENCY).fill(0);
      let killedAt: number | undefined;
      const maybeKill = () => {
        if (killedAt === undefined && had.every((n) => n >= killAfter)) {
          killedAt = now();
          servers[victim].kill('SIGKILL');
        }
      };
      const reads = await Promise.all(
        had.map((_, k) => {
          const i = round * CONCURRENCY + k;
          return readChat(url, { messages: messagesFor(i), max_tokens: MAX_TOKENS }, (n) => {
            had[k] = n;
            maybeKill();
          });
        }),
      );
      if (killedAt === undefined) failures.push(`round ${round}: the streams ended before the kill`);
      reads.forEach((read, k) => {
        const i = round * CONCURRENCY + k;
        const text = read.chunks.map((c) => c.text).join('');
        const whole = read.done === 1 && read.errors === 0 && read.final !== undefined && read.broken === undefined;
        if (whole) complete += 1;
        else {
          cut += 1;
          if (failures.length < 20) failures.push(`stream ${i}: ${read.broken ?? `done ${read.done}, errors ${read.errors}`}`);
        }
        if (text === expectedText(renderChat(messagesFor(i)), MAX_TOKENS, { seed: MODEL })) identical += 1;
        const seam = (read.final?.understudy?.continued as { atTokens: number }[] | undefined)?.[0];
        if (seam) {
          continued += 1;
          const before = read.chunks[seam.atTokens - 1];
          const after = read.chunks[seam.atTokens];
          if (before && after && killedAt !== undefined) seams.push(after.at - Math.max(before.at, killedAt));
        }
      });
      progress(`streams: round ${round + 1}/${ROUNDS}: ${complete} complete, ${cut} cut so far`);
      await until(admin, (s) => s.services.llm!.instances.find((i) => i.name === victim)!.state !== 'ready', `${victim} taken out`);
      servers[victim] = await start(victim);
    }
    await until(admin, (s) => s.services.llm!.instances.every((i) => i.state === 'ready'), 'both instances ready');

    // Steady streaming, alternating the two ways so that drift in the machine's load hits both.
    const active = (await admin.status()).services.llm!.active as 'a' | 'b';
    const perChunk = { direct: [] as number[], understudy: [] as number[] };
    for (let batch = 0; batch < OVERHEAD_STREAMS / OVERHEAD_CONCURRENCY; batch++) {
      for (const way of batch % 2 === 0 ? (['direct', 'understudy'] as const) : (['understudy', 'direct'] as const)) {
        const base = way === 'direct' ? servers[active].url : url;
        const reads = await Promise.all(
          Array.from({ length: OVERHEAD_CONCURRENCY }, (_, k) => readChat(base, { messages: messagesFor(100_000 + batch * 10 + k), max_tokens: OVERHEAD_TOKENS })),
        );
        for (const read of reads) for (const c of read.chunks) perChunk[way].push(c.at - c.sentAt);
      }
    }
    const direct = spread(perChunk.direct);
    const through = spread(perChunk.understudy);
    return {
      streams: ROUNDS * CONCURRENCY,
      rounds: ROUNDS,
      complete,
      cut,
      continued,
      identical,
      seamMs: spread(seams),
      standbyTtftMs: spread(ttft),
      chunk: { direct, understudy: through, addedP50Ms: through.p50 - direct.p50, addedP99Ms: through.p99 - direct.p99, chunks: perChunk.understudy.length },
      failures,
    };
  } finally {
    await gateway?.stop();
    await Promise.all([servers.a.stop(), servers.b.stop()]);
  }
}
