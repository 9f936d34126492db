import { createHash } from 'node:crypto';
import { statSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { parseDuration, type JobsConfig } from '../config/index.js';
import { JobError } from './errors.js';
import type { ItemRequest, JobOptions, JoinMode } from './types.js';

const MAX_ITEMS = 1_000_000;
const METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE'] as const;

const headers = z.record(z.string().regex(/^[!#$%&'*+.^_`|~0-9a-z-]+$/i, 'not a valid header name'), z.string());

const requestFields = {
  method: z.enum(METHODS).optional(),
  /** The path the model server receives, with any query string. */
  path: z.string().startsWith('/', { message: 'must start with "/"' }).optional(),
  headers: headers.optional(),
};

const item = z
  .strictObject({
    ...requestFields,
    /** A JSON body (sent with content-type application/json). */
    json: z.unknown().optional(),
    /** A text body (text/plain; charset=utf-8). */
    text: z.string().optional(),
    /** Bytes, base64-encoded. */
    base64: z.string().regex(/^[A-Za-z0-9+/]*={0,2}$/, 'not base64').optional(),
    /** A file on the machine Understudy runs on, read when the item runs. */
    file: z.string().min(1).optional(),
  })
  .refine((value) => ['json', 'text', 'base64', 'file'].filter((key) => key in value).length <= 1, {
    message: 'give at most one of json, text, base64 and file',
  });

const durationField = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const ms = parseDuration(value);
  if (ms === undefined || ms <= 0) {
    ctx.addIssue({ code: 'custom', message: `expected a duration such as "90s" or "10m", got ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return ms;
});

export const submissionSchema = z.strictObject({
  service: z.string().min(1),
  name: z.string().max(200).optional(),
  /** Method, path and headers every item starts from. */
  defaults: z.strictObject(requestFields).optional(),
  items: z.array(item).min(1, 'a job needs at least one item').max(MAX_ITEMS),
  concurrency: z.number().int().min(1).max(1024).optional(),
  itemTimeout: durationField.optional(),
  retries: z.number().int().min(0).max(100).optional(),
  join: z.enum(['none', 'wav', 'concat']).optional(),
});

export type Submission = z.input<typeof submissionSchema>;

export interface CompiledSubmission {
  service: string;
  name: string | null;
  options: JobOptions;
  items: ItemRequest[];
  fingerprint: string;
}

const CONTENT_TYPES: Record<string, string> = {
  '.wav': 'audio/wav',
  '.mp3': 'audio/mpeg',
  '.flac': 'audio/flac',
  '.ogg': 'audio/ogg',
  '.webm': 'audio/webm',
  '.m4a': 'audio/mp4',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.json': 'application/json',
  '.txt': 'text/plain; charset=utf-8',
};

/**
 * Checks a job submission and turns it into items; every mistake is reported at
 * once as `items[3].path: ...`. Files are checked now (readable, a regular file)
 * and read when their item runs.
 */
export function compileSubmission(input: unknown, defaults: JobsConfig): CompiledSubmission {
  const parsed = submissionSchema.safeParse(input);
  if (!parsed.success) {
    const problems = parsed.error.issues.slice(0, 20).map((issue) => `${fieldPath(issue.path)}: ${issue.message}`);
    throw new JobError('BAD_JOB', `the job is not valid: ${problems.join('; ')}`, 400, { problems });
  }
  const spec = parsed.data;
  const problems: string[] = [];
  const items = spec.items.map((raw, index): ItemRequest | undefined => {
    const method = raw.method ?? spec.defaults?.method ?? 'POST';
    const itemPath = raw.path ?? spec.defaults?.path;
    if (itemPath === undefined) {
      problems.push(`items[${index}].path: required (set it on the item or in defaults)`);
      return undefined;
    }
    const itemHeaders: Record<string, string> = {};
    for (const [name, value] of Object.entries({ ...spec.defaults?.headers, ...raw.headers })) itemHeaders[name.toLowerCase()] = value;
    const type = (value: string) => {
      itemHeaders['content-type'] ??= value;
    };
    let body: ItemRequest['body'] = { kind: 'none' };
    if (raw.json !== undefined) {
      type('application/json');
      body = { kind: 'inline', data: Buffer.from(JSON.stringify(raw.json)) };
    } else if (raw.text !== undefined) {
      type('text/plain; charset=utf-8');
      body = { kind: 'inline', data: Buffer.from(raw.text) };
    } else if (raw.base64 !== undefined) {
      type('application/octet-stream');
      body = { kind: 'inline', data: Buffer.from(raw.base64, 'base64') };
    } else if (raw.file !== undefined) {
      const file = path.resolve(raw.file);
      try {
        const stat = statSync(file);
        if (!stat.isFile()) throw new Error('not a regular file');
        body = { kind: 'file', path: file, size: stat.size };
      } catch (error) {
        const reason = (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (error as Error).message;
        problems.push(`items[${index}].file: ${file}: ${reason}`);
        return undefined;
      }
      type(CONTENT_TYPES[path.extname(file).toLowerCase()] ?? 'application/octet-stream');
    }
    if (body.kind !== 'none' && (method === 'GET' || method === 'DELETE')) {
      problems.push(`items[${index}]: a ${method} request has no body`);
      return undefined;
    }
    return { method, path: itemPath, headers: itemHeaders, body };
  });
  if (problems.length > 0) {
    throw new JobError('BAD_JOB', `the job is not valid: ${problems.slice(0, 20).join('; ')}`, 400, { problems: problems.slice(0, 20) });
  }
  const options: JobOptions = {
    concurrency: spec.concurrency ?? defaults.concurrency,
    itemTimeout: spec.itemTimeout ?? defaults.itemTimeout,
    retries: spec.retries ?? defaults.retries,
    join: (spec.join ?? 'none') as JoinMode,
  };
  return {
    service: spec.service,
    name: spec.name ?? null,
    options,
    items: items as ItemRequest[],
    fingerprint: createHash('sha256').update(JSON.stringify(input)).digest('hex'),
  };
}

function fieldPath(parts: PropertyKey[]): string {
  let out = '';
  for (const part of parts) out += typeof part === 'number' ? `[${part}]` : `${out ? '.' : ''}${String(part)}`;
  return out || '(the body)';
}

/** A job id that sorts by submission time: job-20261121-143501-3f9a1c. */
export function newJobId(now: number): string {
  const stamp = new Date(now).toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
  return `job-${stamp}-${crypto.randomUUID().slice(0, 6)}`;
}
