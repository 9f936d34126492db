import { afterEach, describe, expect, it } from 'vitest';
import { closeAllGateways, inferService, on, startGateway, type RunningGateway } from '../support/gateway.js';
import { startLlmServer, stopAllLlmServers, type LlmServer, type LlmServerOptions } from '../support/llm.js';

afterEach(async () => {
  await closeAllGateways();
  await stopAllLlmServers();
});

const MODEL = 'fixture-llm';
const MESSAGES = [{ role: 'user', content: 'Summarise the harbour report.' }];

/** A primary and a hot standby behind a gateway with the shipped defaults, unless `yaml` says otherwise. */
async function pair(yaml = '', primaryOptions: LlmServerOptions = {}, standbyOptions: LlmServerOptions = {}, extra = { primary: '', standby: '' }) {
  const [primary, standby] = await Promise.all([
    startLlmServer({ name: 'primary', tokenDelayMs: 0, ...primaryOptions }),
    startLlmServer({ name: 'standby', tokenDelayMs: 0, ...standbyOptions }),
  ]);
  const gateway = await startGateway(
    inferService(`
instances:
  primary: { tier: primary, url: "${primary.url}"${extra.primary} }
  standby: { tier: hot, url: "${standby.url}"${extra.standby} }
${yaml}`),
  );
  await gateway.event(on.active('primary'));
  await gateway.event(on.state('standby', 'ready'));
  return { gateway, primary, standby };
}

async function ask(gateway: RunningGateway, body: Record<string, unknown> = {}) {
  const started = performance.now();
  const response = await fetch(`${gateway.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages: MESSAGES, max_tokens: 5, ...body }),
  });
  const text = await response.text();
  return { status: response.status, instance: response.headers.get('x-understudy-instance'), text, ms: performance.now() - started };
}

const statuses = async (server: LlmServer) => (await server.log()).map((entry) => entry.status);
const instanceOf = (gateway: RunningGateway, name: string) => gateway.app.service('infer')!.view().instances.find((i) => i.name === name)!;

describe('LLM errors routed by their meaning, with the shipped defaults', () => {
  it('a 429 with a short Retry-After is waited out on the same instance', async () => {
    const { gateway, primary, standby } = await pair();
    await primary.fault({ mode: 'status', status: 429, retryAfter: 1, times: 1 });
    const answer = await ask(gateway);
    expect([answer.status, answer.instance]).toEqual([200, 'primary']);
    expect(answer.ms).toBeGreaterThanOrEqual(900);
    expect([await statuses(primary), await statuses(standby)]).toEqual([[429, 200], []]);
  });

  it('a 429 asking for longer than retry.rateLimited.maxWait goes to the ready standby at once', async () => {
    const { gateway, primary, standby } = await pair();
    await primary.fault({ mode: 'status', status: 429, retryAfter: 30, times: 1 });
    const answer = await ask(gateway);
    expect([answer.status, answer.instance]).toEqual([200, 'standby']);
    expect(answer.ms).toBeLessThan(5000);
    expect([await statuses(primary), await statuses(standby)]).toEqual([[429], [200]]);
  });

  it('a 429 without Retry-After is retried with backoff on the same instance, then failed over', async () => {
    const { gateway, primary, standby } = await pair();
    await primary.fault({ mode: 'status', status: 429 });
    const answer = await ask(gateway);
    expect([answer.status, answer.instance]).toEqual([200, 'standby']);
    // One try and retry.rateLimited.retries (2) more, 250 ms then 500 ms apart.
    expect([await statuses(primary), await statuses(standby)]).toEqual([[429, 429, 429], [200]]);
    expect(answer.ms).toBeGreaterThanOrEqual(700);
  });

  it('a 500 once is retried on the same instance before failing over', async () => {
    const { gateway, primary, standby } = await pair();
    await primary.fault({ mode: 'status', status: 500, times: 1 });
    const answer = await ask(gateway);
    expect([answer.status, answer.instance]).toEqual([200, 'primary']);
    expect([await statuses(primary), await statuses(standby)]).toEqual([[500, 200], []]);
  });

  it('a context-length 400 goes to the instance declared with a larger context window, never again to the same one', async () => {
    const { gateway, primary, standby } = await pair('', { contextWindow: 64 }, { contextWindow: 4096 }, {
      primary: ', capabilities: { contextWindow: 64 }',
      standby: ', capabilities: { contextWindow: 4096 }',
    });
    const long = [{ role: 'user', content: 'word '.repeat(100) }];
    const answer = await ask(gateway, { messages: long });
    expect([answer.status, answer.instance]).toEqual([200, 'standby']);
    expect([await statuses(primary), await statuses(standby)]).toEqual([[400], [200]]);
  });

  it('a context-length 400 with no larger window declared is passed through unchanged', async () => {
    const { gateway, primary, standby } = await pair('', { contextWindow: 64 }, { contextWindow: 64 });
    const long = [{ role: 'user', content: 'word '.repeat(100) }];
    const direct = await fetch(`${primary.url}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ model: MODEL, messages: long, max_tokens: 5 }) });
    const answer = await ask(gateway, { messages: long });
    expect(answer.status).toBe(400);
    expect(JSON.parse(answer.text)).toEqual(await direct.json());
    expect(await statuses(standby)).toEqual([]);
  });

  it('a large 400 (read to tell whether it is a context-length error) is passed on whole', async () => {
    const { gateway, primary } = await pair();
    const body = { error: { message: 'invalid input: '.padEnd(200_000, 'x'), type: 'invalid_request_error' } };
    await primary.fault({ mode: 'status', status: 400, body, times: 1 });
    const answer = await ask(gateway);
    expect([answer.status, answer.text.length]).toEqual([400, JSON.stringify(body).length]);
    expect(JSON.parse(answer.text)).toEqual(body);
  });

  it('content-policy and other client errors pass through at once, are never failed over and never count against the instance', async () => {
    const { gateway, primary, standby } = await pair();
    // Whatever moves the boot made (a standby ready first, then the primary), none after it.
    const boot = gateway.app.events.list().length;
    const policy = { error: { message: 'Your request was rejected by the safety system.', type: 'invalid_request_error', code: 'content_policy_violation' } };
    for (const status of [400, 401, 403, 404, 422]) {
      // More of each than passive.failures (5): had they counted, the primary would be out.
      await primary.fault({ mode: 'status', status, body: policy, times: 6 });
      for (let i = 0; i < 6; i++) {
        const answer = await ask(gateway);
        expect([answer.status, answer.instance, JSON.parse(answer.text)]).toEqual([status, 'primary', policy]);
      }
    }
    expect(await statuses(standby)).toEqual([]);
    expect(gateway.app.service('infer')!.view().active).toBe('primary');
    expect(instanceOf(gateway, 'primary').state).toBe('ready');
    expect(gateway.app.events.list().slice(boot).filter((e) => e.type === 'model-ejected' || e.type === 'active-changed').map((e) => e.type)).toEqual([]);
  });
});

describe('the circuit breaker per (instance, model)', () => {
  it("one model's 503s on a shared server move that model's requests to the standby; the other model stays on the primary", async () => {
    const models = [MODEL, 'other-model'];
    const { gateway, primary, standby } = await pair('', { models }, { models });
    await primary.fault({ mode: 'status', status: 503, model: MODEL });
    for (let i = 0; i < 12; i++) {
      const broken = await ask(gateway);
      expect([broken.status, broken.instance]).toEqual([200, 'standby']);
      const other = await ask(gateway, { model: 'other-model' });
      expect([other.status, other.instance]).toEqual([200, 'primary']);
    }
    const ejected = await gateway.event((e) => e.type === 'model-ejected');
    expect(ejected).toMatchObject({ instance: 'primary', model: MODEL });
    // Once ejected (after passive.failures = 5 failures), the model's requests no longer try the primary first.
    const onPrimary = (await primary.log()).filter((e) => e.model === MODEL).length;
    expect(onPrimary).toBe(5);
    expect((await standby.log()).map((e) => e.model)).toEqual(new Array(12).fill(MODEL));
    expect(gateway.app.service('infer')!.view().active).toBe('primary');
    expect(instanceOf(gateway, 'primary').state).toBe('ready');
  });

  it('an ejected model returns to the instance after passive.ejectFor, on its first success', async () => {
    const { gateway, primary } = await pair('passive: { ejectFor: 500ms }');
    await primary.fault({ mode: 'status', status: 503, model: MODEL, times: 5 });
    for (let i = 0; i < 5; i++) expect((await ask(gateway)).instance).toBe('standby');
    await gateway.event((e) => e.type === 'model-ejected');
    expect((await ask(gateway)).instance).toBe('standby');
    const restored = gateway.event((e) => e.type === 'model-restored', 10_000);
    // Bounded: the breaker lets a request through once ejectFor has passed.
    let last: string | null = null;
    for (let i = 0; i < 200 && last !== 'primary'; i++) {
      last = (await ask(gateway)).instance;
      if (last !== 'primary') await new Promise((resolve) => setTimeout(resolve, 25));
    }
    expect(last).toBe('primary');
    expect(await restored).toMatchObject({ instance: 'primary', model: MODEL });
  });
});
