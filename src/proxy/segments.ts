/**
 * Segmented streams: how a model server that produces its answer in pieces (a TTS
 * server, sentence by sentence) tells the gateway where it is, so a cut answer can be
 * continued on another instance from the first piece the client does not have. The
 * protocol is in docs/streams.md; in short, asked with `X-Understudy-Segments: 1`, the
 * server frames its body:
 *
 *   H <length>\n<bytes>            the preamble (e.g. a WAV header), at most once, first
 *   S <index> <length>\n<bytes>    segment `index` (0, 1, 2, ...)
 *   E <count>\n                    the end: `count` segments in the whole answer
 *
 * and a continuation is the same request with `X-Understudy-Resume-From: <k>`, answered
 * with that header echoed, the same preamble, then segments k, k+1, ...
 */

export const SEGMENTS_HEADER = 'x-understudy-segments';
export const RESUME_HEADER = 'x-understudy-resume-from';

export type Frame = { kind: 'H'; payload: Buffer } | { kind: 'S'; index: number; payload: Buffer } | { kind: 'E'; count: number };

/** Frame lines are short; a longer one means the body is not framed at all. */
const MAX_LINE = 64;
const LINE = /^(?:H (\d{1,12})|S (\d{1,12}) (\d{1,12})|E (\d{1,12}))$/;

export class FrameError extends Error {
  override name = 'FrameError';
}

/** Splits a framed body into whole frames; a frame's payload is handed out only once all of it arrived. */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private size = 0;
  /** The frame whose payload is being read. */
  private head: { kind: 'H' } | { kind: 'S'; index: number } | undefined;
  private need = 0;

  push(chunk: Buffer): Frame[] {
    this.chunks.push(chunk);
    this.size += chunk.length;
    const frames: Frame[] = [];
    for (;;) {
      if (this.head) {
        if (this.size < this.need) return frames;
        const payload = this.take(this.need);
        frames.push(this.head.kind === 'H' ? { kind: 'H', payload } : { kind: 'S', index: this.head.index, payload });
        this.head = undefined;
        continue;
      }
      const line = this.line();
      if (line === undefined) return frames;
      const match = LINE.exec(line);
      if (!match) throw new FrameError(`not a segment frame: ${JSON.stringify(line.slice(0, MAX_LINE))}`);
      if (match[4] !== undefined) {
        frames.push({ kind: 'E', count: Number(match[4]) });
        continue;
      }
      this.head = match[1] !== undefined ? { kind: 'H' } : { kind: 'S', index: Number(match[2]) };
      this.need = Number(match[1] ?? match[3]);
    }
  }

  /** The next frame line without its "\n", or undefined until one is complete. */
  private line(): string | undefined {
    let seen = 0;
    for (const chunk of this.chunks) {
      const at = chunk.indexOf(0x0a);
      if (at >= 0) {
        const line = this.take(seen + at + 1).toString('latin1', 0, seen + at);
        return line;
      }
      seen += chunk.length;
      if (seen > MAX_LINE) break;
    }
    if (this.size > MAX_LINE) throw new FrameError('a segment frame line longer than 64 bytes');
    return undefined;
  }

  /** Removes and returns the next `n` bytes (n <= size). */
  private take(n: number): Buffer {
    const first = this.chunks[0];
    if (first && first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      this.size -= n;
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let offset = 0;
    while (offset < n) {
      const chunk = this.chunks[0]!;
      const want = n - offset;
      if (chunk.length <= want) {
        chunk.copy(out, offset);
        offset += chunk.length;
        this.chunks.shift();
      } else {
        chunk.copy(out, offset, 0, want);
        this.chunks[0] = chunk.subarray(want);
        offset += want;
      }
    }
    this.size -= n;
    return out;
  }
}

/** One move of a segmented stream to another instance. */
export interface SegmentMove {
  from: string;
  to: string;
  /** The first segment the client did not have: where the continuation began. */
  atSegment: number;
  reason: string;
}

export type FrameVerdict =
  /** Pass these bytes on (null: nothing). */
  | { kind: 'write'; bytes: Buffer | null }
  /** The answer is whole. */
  | { kind: 'end' }
  /** The stream broke here; `cannotTake`: this instance's continuation does not fit (nothing of it was passed on). */
  | { kind: 'break'; reason: string; cannotTake: boolean };

/**
 * The client's view of a segmented answer across the instances that produced it: the
 * preamble once, then each segment once, in order. A continuation must send the same
 * preamble and start at the first missing segment, else it is refused before any of
 * it reaches the client.
 */
export class SegmentSplice {
  /** The first segment the client does not have yet. */
  next = 0;
  readonly moves: SegmentMove[] = [];
  private preamble: Buffer | undefined;
  private part = 0;
  private sawPreamble = false;

  constructor(private instance: string) {}

  startPart(to: string, reason: string): void {
    this.moves.push({ from: this.instance, to, atSegment: this.next, reason });
    this.instance = to;
    this.part += 1;
    this.sawPreamble = false;
  }

  accept(frame: Frame): FrameVerdict {
    const continuation = this.part > 0;
    switch (frame.kind) {
      case 'H':
        if (!continuation) {
          if (this.sawPreamble) return { kind: 'break', reason: 'a second preamble frame', cannotTake: false };
          this.preamble = Buffer.from(frame.payload);
          this.sawPreamble = true;
          return { kind: 'write', bytes: frame.payload };
        }
        if (!this.preamble || !this.preamble.equals(frame.payload)) {
          return { kind: 'break', reason: "its preamble differs from the first instance's (another format or sample rate)", cannotTake: true };
        }
        this.sawPreamble = true;
        return { kind: 'write', bytes: null };
      case 'S':
        if (continuation && this.preamble && !this.sawPreamble) {
          return { kind: 'break', reason: 'it sent no preamble to compare', cannotTake: true };
        }
        if (frame.index !== this.next) {
          return { kind: 'break', reason: `segment ${frame.index} came where ${this.next} was due`, cannotTake: continuation && this.next === this.resumedAt() };
        }
        this.next += 1;
        return { kind: 'write', bytes: frame.payload };
      case 'E':
        if (frame.count === this.next) return { kind: 'end' };
        return { kind: 'break', reason: `it ended at segment ${this.next} of ${frame.count}`, cannotTake: false };
    }
  }

  /** The segment the current continuation began at. */
  private resumedAt(): number {
    return this.moves[this.moves.length - 1]?.atSegment ?? 0;
  }
}
