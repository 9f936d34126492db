import { StringDecoder } from 'node:string_decoder';

/** One server-sent event (WHATWG HTML §9.2), with the text it arrived as. */
export interface SseEvent {
  /** The event as received, its blank line included: passed on unchanged when nothing in it changes. */
  raw: string;
  /** The `event:` field, when one was given. */
  event: string | undefined;
  /** The `data:` lines joined with "\n"; '' for a comment or an event without data. */
  data: string;
}

const BOUNDARY = /\r\n\r\n|\n\n|\r\r/g;

/**
 * Splits a byte stream into whole events. Bytes after the last blank line are kept
 * until more arrive, so an event cut by a broken connection is never handed out.
 */
export class SseDecoder {
  private readonly text = new StringDecoder('utf8');
  private buffer = '';

  push(chunk: Buffer): SseEvent[] {
    this.buffer += this.text.write(chunk);
    const events: SseEvent[] = [];
    let start = 0;
    BOUNDARY.lastIndex = 0;
    for (let match = BOUNDARY.exec(this.buffer); match; match = BOUNDARY.exec(this.buffer)) {
      const end = match.index + match[0].length;
      events.push(parseEvent(this.buffer.slice(start, end), this.buffer.slice(start, match.index)));
      start = end;
    }
    if (start > 0) this.buffer = this.buffer.slice(start);
    return events;
  }

  /** Bytes of an event not yet complete. */
  get pending(): number {
    return this.buffer.length;
  }
}

function parseEvent(raw: string, body: string): SseEvent {
  let event: string | undefined;
  let data: string | undefined;
  for (const line of body.split(/\r\n|\n|\r/)) {
    if (line === '' || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') data = data === undefined ? value : `${data}\n${value}`;
    else if (field === 'event') event = value;
  }
  return { raw, event, data: data ?? '' };
}

/** One event in the wire format. */
export function sseData(data: string): string {
  return `data: ${data}\n\n`;
}
