import { randomBytes, timingSafeEqual } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Config } from '../config/index.js';

export const TOKEN_ENV = 'UNDERSTUDY_ADMIN_TOKEN';

export function tokenFile(config: Config): string {
  return path.join(config.stateDir, 'admin.token');
}

/** The admin token: from the config, else the environment, else the state directory's token file. */
export function readToken(config: Config): string | undefined {
  if (config.admin.token) return config.admin.token;
  if (process.env[TOKEN_ENV]) return process.env[TOKEN_ENV];
  try {
    return readFileSync(tokenFile(config), 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

/** Like readToken, but makes and stores a token (mode 0600) the first time. */
export function ensureToken(config: Config): string {
  const existing = readToken(config);
  if (existing) return existing;
  const token = randomBytes(24).toString('base64url');
  mkdirSync(config.stateDir, { recursive: true });
  writeFileSync(tokenFile(config), `${token}\n`, { mode: 0o600 });
  return token;
}

export function tokenMatches(header: string | undefined, token: string): boolean {
  const given = Buffer.from(header?.startsWith('Bearer ') ? header.slice(7).trim() : '');
  const wanted = Buffer.from(token);
  return given.length === wanted.length && timingSafeEqual(given, wanted);
}
