import { readFile } from 'node:fs/promises';
import { DurableFile } from './files.js';
import type { JobStore } from './store.js';
import type { ItemRecord, ResultBody } from './types.js';

const PAGE = 500;

/** Every item of a job in item order, read from the store a page at a time. */
export async function* itemsInOrder(store: JobStore, jobId: string): AsyncGenerator<ItemRecord> {
  for (let from = 0; ; from += PAGE) {
    const page = await store.items(jobId, from, PAGE);
    yield* page;
    if (page.length < PAGE) return;
  }
}

/** One line of results.jsonl: how the item ended, and its body as JSON, text or a file. */
export function resultLine(item: ItemRecord): Record<string, unknown> {
  const result = item.result;
  const line: Record<string, unknown> = { index: item.index, state: item.state };
  if (!result) return { ...line, failedTries: item.failedTries };
  const contentType = result.headers['content-type'] ?? null;
  Object.assign(line, {
    status: result.status,
    instance: result.instance,
    attempts: result.attempts,
    ms: Math.round(result.ms * 10) / 10,
    contentType,
    size: bodySize(result.body),
  });
  if (result.error !== null) line.error = result.error;
  const body = result.body;
  if (body.kind === 'file') line.bodyFile = body.path;
  else if (body.kind === 'inline') Object.assign(line, inlineBody(body.data, contentType));
  return line;
}

function inlineBody(data: Buffer, contentType: string | null): Record<string, unknown> {
  const type = (contentType ?? '').toLowerCase();
  if (type.includes('json')) {
    try {
      return { json: JSON.parse(data.toString('utf8')) as unknown };
    } catch {
      // not JSON after all: fall through
    }
  }
  if (type.startsWith('text/') || type.includes('json') || type.includes('xml')) return { text: data.toString('utf8') };
  return { base64: data.toString('base64') };
}

function bodySize(body: ResultBody): number {
  return body.kind === 'inline' ? body.data.length : body.kind === 'file' ? body.size : 0;
}

export async function resultBytes(body: ResultBody): Promise<Buffer> {
  if (body.kind === 'inline') return body.data;
  if (body.kind === 'file') return readFile(body.path);
  return Buffer.alloc(0);
}

/** Writes results.jsonl durably; returns the number of lines. */
export async function writeResults(store: JobStore, jobId: string, target: string): Promise<number> {
  const file = await DurableFile.create(target);
  let lines = 0;
  try {
    let chunk = '';
    for await (const item of itemsInOrder(store, jobId)) {
      chunk += `${JSON.stringify(resultLine(item))}\n`;
      lines += 1;
      if (chunk.length > 1 << 20) {
        await file.write(chunk);
        chunk = '';
      }
    }
    await file.write(chunk);
    await file.commit();
    return lines;
  } catch (error) {
    await file.discard();
    throw error;
  }
}

export interface JoinReport {
  file: string;
  bytes: number;
  joined: number;
  /** Items left out: not succeeded, or not in the same audio format as the first. */
  skipped: { index: number; reason: string }[];
}

/**
 * Joins the bodies of succeeded items in item order. `wav`: one WAV file whose
 * audio is every item's audio in turn (all must share the first item's format);
 * `concat`: the bytes one after another.
 */
export async function writeJoined(store: JobStore, jobId: string, mode: 'wav' | 'concat', target: string): Promise<JoinReport> {
  const file = await DurableFile.create(target);
  const report: JoinReport = { file: target, bytes: 0, joined: 0, skipped: [] };
  let format: Buffer | undefined;
  try {
    const parts: Buffer[] = [];
    let pending = 0;
    const flush = async () => {
      if (parts.length === 0) return;
      await file.write(Buffer.concat(parts));
      parts.length = 0;
      pending = 0;
    };
    for await (const item of itemsInOrder(store, jobId)) {
      if (item.state !== 'succeeded' || !item.result) {
        report.skipped.push({ index: item.index, reason: item.state === 'pending' ? 'not run' : 'failed' });
        continue;
      }
      const bytes = await resultBytes(item.result.body);
      let audio = bytes;
      if (mode === 'wav') {
        const wav = parseWav(bytes);
        if (!wav) {
          report.skipped.push({ index: item.index, reason: 'not a WAV file' });
          continue;
        }
        if (!format) {
          // Room for the header, written once the audio's length is known.
          format = wav.format;
          await file.write(wavHeader(format, 0));
        }
        if (!wav.format.equals(format)) {
          report.skipped.push({ index: item.index, reason: 'a different audio format from the first item' });
          continue;
        }
        audio = wav.data;
      }
      parts.push(audio);
      pending += audio.length;
      report.bytes += audio.length;
      report.joined += 1;
      if (pending > 4 << 20) await flush();
    }
    await flush();
    if (mode === 'wav') {
      if (format) await file.writeAt(wavHeader(format, report.bytes), 0);
      else await file.write(wavHeader(defaultFormat(), 0));
    }
    await file.commit();
    return report;
  } catch (error) {
    await file.discard();
    throw error;
  }
}

/** The `fmt ` chunk and the audio of a WAV file, or undefined when it is not one. */
export function parseWav(bytes: Buffer): { format: Buffer; data: Buffer } | undefined {
  if (bytes.length < 12 || bytes.toString('ascii', 0, 4) !== 'RIFF' || bytes.toString('ascii', 8, 12) !== 'WAVE') return undefined;
  let format: Buffer | undefined;
  for (let at = 12; at + 8 <= bytes.length; ) {
    const id = bytes.toString('ascii', at, at + 4);
    const size = bytes.readUInt32LE(at + 4);
    const start = at + 8;
    // A streamed WAV says 0xFFFFFFFF (or too much) as its data size: the audio runs to the end.
    const end = Math.min(start + size, bytes.length);
    if (id === 'fmt ') format = bytes.subarray(start, end);
    if (id === 'data') return format ? { format, data: bytes.subarray(start, end) } : undefined;
    at = start + size + (size % 2);
  }
  return undefined;
}

function wavHeader(fmt: Buffer, dataBytes: number): Buffer {
  const header = Buffer.alloc(12 + 8 + fmt.length + 8);
  header.write('RIFF', 0, 'ascii');
  header.writeUInt32LE(Math.min(0xffffffff, header.length - 8 + dataBytes), 4);
  header.write('WAVE', 8, 'ascii');
  header.write('fmt ', 12, 'ascii');
  header.writeUInt32LE(fmt.length, 16);
  fmt.copy(header, 20);
  header.write('data', 20 + fmt.length, 'ascii');
  header.writeUInt32LE(Math.min(0xffffffff, dataBytes), 24 + fmt.length);
  return header;
}

/** 16-bit mono PCM at 22050 Hz: the format of an empty join. */
function defaultFormat(): Buffer {
  const fmt = Buffer.alloc(16);
  fmt.writeUInt16LE(1, 0);
  fmt.writeUInt16LE(1, 2);
  fmt.writeUInt32LE(22050, 4);
  fmt.writeUInt32LE(44100, 8);
  fmt.writeUInt16LE(2, 12);
  fmt.writeUInt16LE(16, 14);
  return fmt;
}
