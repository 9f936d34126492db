import { mkdir, open, rename, rm, type FileHandle } from 'node:fs/promises';
import path from 'node:path';

/** Where a job's files live: result bodies larger than jobs.inlineLimit, results.jsonl, the joined output. */
export class JobFiles {
  constructor(readonly root: string) {}

  dir(jobId: string): string {
    return path.join(this.root, jobId);
  }

  /** A fresh name for one try's result body: a finished item's file is never written again. */
  resultPath(jobId: string, index: number): string {
    return path.join(this.dir(jobId), 'items', `${String(index).padStart(6, '0')}-${crypto.randomUUID().slice(0, 8)}.bin`);
  }

  resultsPath(jobId: string): string {
    return path.join(this.dir(jobId), 'results.jsonl');
  }

  outputPath(jobId: string, join: 'wav' | 'concat'): string {
    return path.join(this.dir(jobId), join === 'wav' ? 'output.wav' : 'output.bin');
  }
}

/**
 * Writes a file so that it is either absent or whole, even across a power cut: to a
 * temporary name, fsync, rename, fsync the directory.
 */
export class DurableFile {
  private constructor(
    private readonly target: string,
    private readonly temp: string,
    private readonly handle: FileHandle,
  ) {}

  static async create(target: string): Promise<DurableFile> {
    await mkdir(path.dirname(target), { recursive: true });
    const temp = `${target}.${process.pid}.${crypto.randomUUID().slice(0, 8)}.tmp`;
    return new DurableFile(target, temp, await open(temp, 'w'));
  }

  async write(data: Buffer | string): Promise<void> {
    if (typeof data === 'string') await this.handle.write(data);
    else await this.handle.write(data);
  }

  /** Overwrites bytes already written (a header whose sizes are known only at the end). */
  async writeAt(data: Buffer, position: number): Promise<void> {
    await this.handle.write(data, 0, data.length, position);
  }

  async commit(): Promise<void> {
    try {
      await this.handle.sync();
    } finally {
      await this.handle.close();
    }
    await rename(this.temp, this.target);
    await syncDir(path.dirname(this.target));
  }

  async discard(): Promise<void> {
    await this.handle.close().catch(() => {});
    await rm(this.temp, { force: true });
  }
}

async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
