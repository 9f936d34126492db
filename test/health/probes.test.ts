import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readVersion, runProbe } from '../../src/health/index.js';

let server: Server;
let base: URL;

beforeAll(async () => {
  server = createServer((req, res) => {
    if (req.url === '/health') return res.end('{"status":"ok","gpu":"fine"}');
    if (req.url === '/sick') return res.writeHead(503).end('loading');
    if (req.url === '/version') return res.writeHead(200, { 'x-model-version': '3.1' }).end('{"model":{"version":"2.5"},"build":"v9-abc"}');
    if (req.url === '/hang') return; // never answers
    res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = new URL(`http://127.0.0.1:${(server.address() as { port: number }).port}`);
});
afterAll(() => {
  server.closeAllConnections();
  server.close();
});

const check = { timeout: 300 };

describe('active probes', () => {
  it('http: status and body', async () => {
    expect(await runProbe({ ...check, http: { path: '/health' } }, base)).toMatchObject({ ok: true, detail: '/health answered 200' });
    expect(await runProbe({ ...check, http: { path: '/health', body: '"gpu":"fine"' } }, base)).toMatchObject({ ok: true });
    expect(await runProbe({ ...check, http: { path: '/health', body: 'degraded' } }, base)).toMatchObject({
      ok: false,
      detail: '/health answered 200 without "degraded" in its body',
    });
    expect(await runProbe({ ...check, http: { path: '/sick' } }, base)).toMatchObject({ ok: false, detail: '/sick answered 503' });
    expect(await runProbe({ ...check, http: { path: '/sick', status: [200, 503] } }, base)).toMatchObject({ ok: true });
  });

  it('http: a server that accepts but never answers fails by timeout', async () => {
    expect(await runProbe({ ...check, http: { path: '/hang' } }, base)).toMatchObject({ ok: false, detail: 'timeout after 300ms' });
  });

  it('tcp: open and closed ports', async () => {
    expect(await runProbe({ ...check, tcp: true }, base)).toMatchObject({ ok: true });
    expect(await runProbe({ ...check, tcp: true }, new URL('http://127.0.0.1:1'))).toMatchObject({ ok: false, detail: 'connect ECONNREFUSED' });
  });

  it('command: exit status, output and timeout (e.g. a GPU check)', async () => {
    expect(await runProbe({ ...check, command: ['true'] }, base)).toMatchObject({ ok: true, detail: 'true exited 0' });
    expect(await runProbe({ ...check, command: ['sh', '-c', 'echo "GPU 0: ECC error" >&2; exit 3'] }, base)).toMatchObject({
      ok: false,
      detail: 'sh exited 3: GPU 0: ECC error',
    });
    expect(await runProbe({ ...check, command: ['sleep', '5'] }, base)).toMatchObject({ ok: false, detail: 'sleep timeout after 300ms' });
  });
});

describe('version probe', () => {
  const probe = { http: { path: '/version' }, timeout: 300, interval: 60_000 };
  it('reads a JSON field, a header or a regex', async () => {
    expect((await readVersion({ ...probe, json: 'model.version' }, base)).version).toBe('2.5');
    expect((await readVersion({ ...probe, header: 'X-Model-Version' }, base)).version).toBe('3.1');
    expect((await readVersion({ ...probe, regex: 'v(\\d+)-' }, base)).version).toBe('9');
  });

  it('says why when there is no version to read', async () => {
    expect(await readVersion({ ...probe, json: 'nope' }, base)).toEqual({ version: undefined, detail: '/version names no version' });
    expect(await readVersion({ ...probe, http: { path: '/sick' } }, base)).toEqual({ version: undefined, detail: '/sick answered 503' });
  });
});
