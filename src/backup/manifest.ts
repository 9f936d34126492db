import { createHash } from 'node:crypto';
import path from 'node:path';

export const MANIFEST_FORMAT = 1;

/** Why a snapshot was taken. Free text beyond the usual four. */
export type SnapshotTrigger = 'schedule' | 'deploy' | 'config-change' | 'manual' | (string & {});

export interface SnapshotRoot {
  /** Absolute path as configured; a symlink here is followed. */
  source: string;
  kind: 'dir' | 'file';
}

export interface ManifestEntry {
  /** Index into `roots`. */
  root: number;
  /** Relative to the root, '/'-separated; '' is the root itself. */
  path: string;
  type: 'file' | 'dir' | 'symlink';
  /** Permission bits (st_mode & 0o7777). */
  mode: number;
  size: number;
  mtimeMs: number;
  /** Full-precision times and the inode, as decimal strings (bigint stat): what tells an unchanged file without reading it. */
  mtimeNs: string;
  ctimeNs: string;
  ino: string;
  uid: number;
  gid: number;
  /** Files: the content's SHA-256, which names its blob. */
  sha256?: string;
  /** Symlinks: the link text. */
  target?: string;
}

/** A container image kept with the snapshot (filled in by the image step, not by the store). */
export interface ImageEntry {
  instance: string;
  ref: string;
  digest: string;
  size: number;
}

export interface SnapshotTotals {
  /** File entries. */
  files: number;
  /** Their bytes. */
  bytes: number;
  /** Bytes of blobs written by this snapshot (content the store did not have). */
  newBytes: number;
  /** bytes - newBytes: content the store already had. */
  reusedBytes: number;
  /** Bytes read from the sources: only files whose size, times, inode or mode changed (all with rehash). */
  readBytes: number;
}

export interface Manifest {
  format: typeof MANIFEST_FORMAT;
  id: string;
  service: string;
  /** The model version the service served, when the caller knows it. */
  version: string | null;
  trigger: SnapshotTrigger;
  /** Epoch ms. */
  createdAt: number;
  roots: SnapshotRoot[];
  entries: ManifestEntry[];
  images: ImageEntry[];
  totals: SnapshotTotals;
  /** SHA-256 of the manifest's other fields (compact JSON): a damaged manifest is told from a whole one. */
  checksum: string;
}

export const SERVICE_NAME = /^[a-z0-9][a-z0-9_-]*$/i;
const ID = /^([a-z0-9][a-z0-9_-]*)-(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})(\d{3})Z-([0-9a-f]{6})$/i;
export const SHA256 = /^[0-9a-f]{64}$/;
const DIGITS = /^\d+$/;

/** `<service>-<YYYYMMDDTHHMMSSmmmZ>-<6 hex>`: one service's ids sort by time. */
export function makeSnapshotId(service: string, createdAt: number, suffix: string): string {
  const d = new Date(createdAt);
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  const stamp = `${p(d.getUTCFullYear(), 4)}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}T${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}${p(d.getUTCMilliseconds(), 3)}Z`;
  return `${service}-${stamp}-${suffix}`;
}

/** The service and time an id names, or null when it is not a snapshot id. */
export function parseSnapshotId(id: string): { service: string; createdAt: number } | null {
  const m = ID.exec(id);
  if (!m) return null;
  const [, service, y, mo, d, h, mi, s, ms] = m;
  const createdAt = Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s), Number(ms));
  return Number.isFinite(createdAt) ? { service: service!, createdAt } : null;
}

/** The absolute path an entry was read from. */
export function entrySource(manifest: Pick<Manifest, 'roots'>, entry: ManifestEntry): string {
  const root = manifest.roots[entry.root]!;
  return entry.path === '' ? root.source : path.join(root.source, ...entry.path.split('/'));
}

function checksumOf(body: Omit<Manifest, 'checksum'>): string {
  return createHash('sha256').update(JSON.stringify(body)).digest('hex');
}

export function sealManifest(body: Omit<Manifest, 'checksum'>): Manifest {
  return { ...body, checksum: checksumOf(body) };
}

export function serializeManifest(manifest: Manifest): string {
  return `${JSON.stringify(manifest)}\n`;
}

/** Thrown by parseManifest: what is wrong, for a SNAPSHOT_CORRUPT error or a verify report. */
export class ManifestProblem extends Error {
  override name = 'ManifestProblem';
}

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

const isInt = (v: unknown, min = 0): v is number => Number.isSafeInteger(v) && (v as number) >= min;

function safeRelative(p: string): boolean {
  if (p === '') return true;
  if (p.includes('\0') || p.includes('\\')) return false;
  return p.split('/').every((part) => part !== '' && part !== '.' && part !== '..');
}

/**
 * Parses and checks a manifest read from `snapshots/<expectedId>.json`: shape, checksum, and that
 * restoring it can only write inside its roots (relative paths without `..`, every parent a
 * directory entry, so no entry lies under a symlink).
 */
export function parseManifest(text: string, expectedId: string): Manifest {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    throw new ManifestProblem(text.trim() === '' ? 'empty file' : `not whole JSON (truncated or damaged): ${(error as Error).message}`);
  }
  const fail = (what: string): never => {
    throw new ManifestProblem(what);
  };
  if (!isObject(raw)) return fail('not a JSON object');
  if (raw.format !== MANIFEST_FORMAT) fail(`format ${JSON.stringify(raw.format)} is not ${MANIFEST_FORMAT}`);
  const { checksum, ...body } = raw;
  if (typeof checksum !== 'string') fail('checksum is missing');
  if (checksumOf(body as Omit<Manifest, 'checksum'>) !== checksum) fail('checksum does not match its content (damaged or edited)');
  if (raw.id !== expectedId) fail(`id ${JSON.stringify(raw.id)} does not match the file name`);
  const named = parseSnapshotId(expectedId);
  if (!named || named.service !== raw.service) fail(`service ${JSON.stringify(raw.service)} does not match the id`);
  if (raw.version !== null && typeof raw.version !== 'string') fail('version must be a string or null');
  if (typeof raw.trigger !== 'string' || raw.trigger === '') fail('trigger must be a non-empty string');
  if (typeof raw.createdAt !== 'number' || !Number.isFinite(raw.createdAt)) fail('createdAt must be a number');

  if (!Array.isArray(raw.roots)) return fail('roots must be an array');
  const roots = raw.roots as unknown[];
  roots.forEach((root, i) => {
    if (!isObject(root) || typeof root.source !== 'string' || !path.isAbsolute(root.source) || (root.kind !== 'dir' && root.kind !== 'file')) {
      fail(`roots[${i}] must be { source: absolute path, kind: "dir" | "file" }`);
    }
  });

  if (!Array.isArray(raw.entries)) return fail('entries must be an array');
  const types = new Map<string, string>();
  (raw.entries as unknown[]).forEach((entry, i) => {
    const at = `entries[${i}]`;
    if (!isObject(entry)) return fail(`${at} is not an object`);
    if (!isInt(entry.root) || entry.root >= roots.length) fail(`${at}.root is not a root index`);
    if (typeof entry.path !== 'string' || !safeRelative(entry.path)) fail(`${at}.path ${JSON.stringify(entry.path)} is not a safe relative path`);
    if (entry.type !== 'file' && entry.type !== 'dir' && entry.type !== 'symlink') fail(`${at}.type must be file, dir or symlink`);
    if (!isInt(entry.mode) || entry.mode > 0o7777) fail(`${at}.mode is not permission bits`);
    if (!isInt(entry.size)) fail(`${at}.size is not a size`);
    if (typeof entry.mtimeMs !== 'number' || !Number.isFinite(entry.mtimeMs)) fail(`${at}.mtimeMs is not a number`);
    for (const key of ['mtimeNs', 'ctimeNs', 'ino'] as const) {
      if (typeof entry[key] !== 'string' || !DIGITS.test(entry[key])) fail(`${at}.${key} is not a decimal string`);
    }
    if (!isInt(entry.uid) || !isInt(entry.gid)) fail(`${at}.uid/gid are not ids`);
    if (entry.type === 'file' && (typeof entry.sha256 !== 'string' || !SHA256.test(entry.sha256))) fail(`${at}.sha256 is not a SHA-256`);
    if (entry.type === 'symlink' && (typeof entry.target !== 'string' || entry.target === '')) fail(`${at}.target is missing`);
    const key = `${entry.root as number}\0${entry.path as string}`;
    if (types.has(key)) fail(`${at} repeats ${JSON.stringify(entry.path)}`);
    const root = roots[entry.root as number] as SnapshotRoot;
    if (entry.path === '') {
      if (entry.type !== root.kind) fail(`${at} is the root of roots[${entry.root as number}] and must be a ${root.kind}`);
    } else {
      const parent = `${entry.root as number}\0${path.posix.dirname(entry.path as string) === '.' ? '' : path.posix.dirname(entry.path as string)}`;
      if (types.get(parent) !== 'dir') fail(`${at} ${JSON.stringify(entry.path)} does not come after a directory entry for its parent`);
    }
    types.set(key, entry.type as string);
  });
  roots.forEach((_, i) => {
    if (!types.has(`${i}\0`)) fail(`roots[${i}] has no entry for itself`);
  });

  if (!Array.isArray(raw.images)) return fail('images must be an array');
  (raw.images as unknown[]).forEach((image, i) => {
    const problem = imageProblem(image);
    if (problem) fail(`images[${i}] ${problem}`);
  });
  const totals = raw.totals;
  if (!isObject(totals) || !['files', 'bytes', 'newBytes', 'reusedBytes', 'readBytes'].every((k) => isInt(totals[k]))) {
    fail('totals must hold files, bytes, newBytes, reusedBytes and readBytes');
  }
  return raw as unknown as Manifest;
}

/** What is wrong with an image entry, or null. */
export function imageProblem(image: unknown): string | null {
  if (!isObject(image)) return 'is not an object';
  for (const key of ['instance', 'ref', 'digest'] as const) {
    if (typeof image[key] !== 'string' || image[key] === '') return `.${key} must be a non-empty string`;
  }
  if (!isInt(image.size)) return '.size must be a whole number of bytes';
  return null;
}
