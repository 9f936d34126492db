import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

/** Where `npm run build` puts the dashboard (ui/ built by scripts/build-ui.mjs). */
export const UI_DIR = fileURLToPath(new URL('../../dist/ui/', import.meta.url));

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.json': 'application/json',
};

/**
 * The page's own rules: scripts and styles from this origin only, no framing (so no
 * click-jacking of an action), nothing sent to other sites, no guessing of types.
 */
const SECURITY_HEADERS = {
  'content-security-policy': "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
  'x-frame-options': 'DENY',
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
};

interface Asset {
  type: string;
  body: Buffer;
  gzip: Buffer | undefined;
  etag: string;
}

/** The dashboard's built files, read once and kept (gzipped too) in memory: a few hundred KB. */
export class UiAssets {
  private assets: Map<string, Asset> | undefined;
  private loading: Promise<Map<string, Asset>> | undefined;

  constructor(private readonly dir = UI_DIR) {}

  /** GET /ui/... (and / and /ui, sent on to /ui/). */
  async serve(req: IncomingMessage, res: ServerResponse, pathname: string): Promise<void> {
    if (pathname === '/ui' || pathname === '/') {
      res.writeHead(302, { location: '/ui/', ...SECURITY_HEADERS }).end();
      return;
    }
    const assets = await this.load();
    const name = pathname === '/ui/' ? 'index.html' : pathname.slice('/ui/'.length);
    const asset = assets.get(name);
    if (!asset) {
      const missing = assets.size === 0 ? `the dashboard is not built (${this.dir} is empty); run \`npm run build\`` : `no file ${name} in the dashboard`;
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8', ...SECURITY_HEADERS }).end(`${missing}\n`);
      return;
    }
    const headers: Record<string, string | number> = {
      'content-type': asset.type,
      'cache-control': 'no-cache',
      etag: asset.etag,
      vary: 'accept-encoding',
      ...SECURITY_HEADERS,
    };
    if (req.headers['if-none-match'] === asset.etag) {
      res.writeHead(304, headers).end();
      return;
    }
    const gzip = asset.gzip && /\bgzip\b/.test(String(req.headers['accept-encoding'] ?? ''));
    const body = gzip ? asset.gzip! : asset.body;
    if (gzip) headers['content-encoding'] = 'gzip';
    headers['content-length'] = body.length;
    res.writeHead(200, headers).end(req.method === 'HEAD' ? undefined : body);
  }

  private load(): Promise<Map<string, Asset>> {
    if (this.assets) return Promise.resolve(this.assets);
    this.loading ??= (async () => {
      const assets = new Map<string, Asset>();
      const names = await readdir(this.dir, { recursive: true }).catch(() => [] as string[]);
      for (const name of names) {
        const type = TYPES[path.extname(name)];
        if (!type) continue;
        const body = await readFile(path.join(this.dir, name)).catch(() => undefined);
        if (!body) continue;
        const squeezable = !type.startsWith('image/png');
        assets.set(name.split(path.sep).join('/'), {
          type,
          body,
          gzip: squeezable ? gzipSync(body, { level: 9 }) : undefined,
          etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 16)}"`,
        });
      }
      // An empty dir (not built yet) is looked at again next time.
      if (assets.size > 0) this.assets = assets;
      this.loading = undefined;
      return assets;
    })();
    return this.loading;
  }
}

const LOOPBACK_NAMES = new Set(['localhost', '127.0.0.1', '[::1]', '::1']);

/** A loopback address, the kind the admin API listens on unless bound elsewhere on purpose. */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}

/**
 * DNS rebinding guard: while the admin API listens on loopback only, a request must
 * name a loopback host (or one of `allowed`), so a web page on some other site whose
 * name was pointed at 127.0.0.1 cannot talk to it. Bound to another address on
 * purpose, any Host is taken. Returns why a request is refused, or undefined.
 */
export function hostRefusal(req: IncomingMessage, listenHost: string, allowed: readonly string[]): string | undefined {
  if (!isLoopback(listenHost)) return undefined;
  const header = req.headers.host ?? '';
  const name = header.startsWith('[') ? header.slice(0, header.indexOf(']') + 1) : header.split(':')[0]!;
  const lower = name.toLowerCase();
  if (LOOPBACK_NAMES.has(lower) || /^127\.\d+\.\d+\.\d+$/.test(lower) || allowed.includes(lower)) return undefined;
  return `the admin API listens on ${listenHost} only and answers requests for localhost or 127.0.0.1, not for "${header}" (a guard against DNS rebinding); open http://127.0.0.1:<port>/ui, or list the name in admin.allowedHosts`;
}
