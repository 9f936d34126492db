import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, open, rm, statfs, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { SnapshotStore, type Manifest, type RestoreProgress } from '../../src/backup/index.js';
import { freshDir, progress } from '../workload.js';

const MiB = 1024 * 1024;
/** A 2 GiB model: 8 weight shards of 256 MiB, a 16 MiB tokenizer and a small config, as a Hugging Face directory holds. */
export const SHARDS = 8;
export const SHARD_BYTES = 256 * MiB;
export const TOKENIZER_BYTES = 16 * MiB;
/** Kept across runs in the system temp dir (outside the repository), rebuilt when its marker is missing. */
const MODEL_DIR = path.join(os.tmpdir(), 'understudy-bench-model-v1');
const MARKER = `${MODEL_DIR}.complete`;

const shardName = (i: number) => `model-${String(i + 1).padStart(5, '0')}-of-${String(SHARDS).padStart(5, '0')}.safetensors`;

export interface SnapshotRound {
  label: string;
  /** Bytes of the model that changed since the previous snapshot (all of it for the first). */
  changedBytes: number;
  ms: number;
  /** Bytes read from the model directory, and written to the store. */
  readBytes: number;
  newBytes: number;
  totalBytes: number;
}

export interface SnapshotResult {
  modelBytes: number;
  files: number;
  /** Time to write the model directory, or null when an earlier run's was reused. */
  generateMs: number | null;
  rounds: SnapshotRound[];
  verify: { ms: number; bytes: number };
  restore: {
    ms: number;
    bytes: number;
    /** When each phase was first reported, ms from the start (progress comes every ~100 ms). */
    phases: Partial<Record<RestoreProgress['phase'], number>>;
  };
}

/** Writes `size` bytes: a random 1 MiB block with a per-MiB counter stamped in, so no two MiB are alike and nothing compresses. */
async function writePseudoRandom(file: string, size: number, seed: string): Promise<void> {
  const block = randomBytes(MiB);
  const handle = await open(file, 'w');
  try {
    for (let offset = 0; offset < size; offset += MiB) {
      const chunk = Buffer.from(block.subarray(0, Math.min(MiB, size - offset)));
      const stamp = Buffer.from(`${seed}:${offset}:`.padEnd(64, '.'));
      for (let at = 0; at + 64 <= chunk.length; at += 4096) stamp.copy(chunk, at);
      await handle.write(chunk, 0, chunk.length, offset);
    }
  } finally {
    await handle.close();
  }
}

async function ensureModel(): Promise<number | null> {
  if (existsSync(MARKER)) return null;
  const free = await statfs(os.tmpdir());
  const need = SHARDS * SHARD_BYTES * 2.2; // the model, the store's copy, and a restore's staging copy
  if (free.bavail * free.bsize < need) throw new Error(`snapshot bench: needs ${(need / 2 ** 30).toFixed(1)} GiB free under ${os.tmpdir()}`);
  progress(`snapshot: writing a ${(SHARDS * SHARD_BYTES) / 2 ** 30} GiB model to ${MODEL_DIR} (kept for later runs)`);
  const started = performance.now();
  await rm(MODEL_DIR, { recursive: true, force: true });
  await rm(`${MODEL_DIR}.understudy-old`, { recursive: true, force: true });
  await mkdir(MODEL_DIR, { recursive: true });
  for (let i = 0; i < SHARDS; i++) await writePseudoRandom(path.join(MODEL_DIR, shardName(i)), SHARD_BYTES, `shard-${i}`);
  await writePseudoRandom(path.join(MODEL_DIR, 'tokenizer.json'), TOKENIZER_BYTES, 'tokenizer');
  await writeFile(path.join(MODEL_DIR, 'config.json'), JSON.stringify({ architectures: ['BenchModel'], hidden_size: 4096 }));
  await writeFile(MARKER, 'complete\n');
  return performance.now() - started;
}

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const started = performance.now();
  const value = await fn();
  return [value, performance.now() - started];
}

const gib = (n: number) => `${(n / 2 ** 30).toFixed(2)} GiB`;
const mib = (n: number) => `${(n / MiB).toFixed(1)} MiB`;

/**
 * Snapshots of a 2 GiB model directory: the first (everything new), one with nothing changed, one
 * after a 16 MiB file is rewritten, one after a 256 MiB shard is rewritten; then a verify of all
 * and a restore of the first snapshot over the changed directory (staging, check, swap).
 */
export async function runSnapshot(root: string): Promise<SnapshotResult> {
  const generateMs = await ensureModel();
  const storeDir = await freshDir(root, 'snapshot-store');
  const store = new SnapshotStore(storeDir);
  await store.open();
  const rounds: SnapshotRound[] = [];
  const take = async (label: string, changed: number | 'all'): Promise<Manifest> => {
    const [manifest, ms] = await timed(() => store.create({ service: 'llm', paths: [MODEL_DIR], trigger: 'manual' }));
    const { readBytes, newBytes, bytes } = manifest.totals;
    rounds.push({ label, changedBytes: changed === 'all' ? bytes : changed, ms, readBytes, newBytes, totalBytes: bytes });
    progress(`snapshot: ${label}: ${Math.round(ms)} ms, read ${mib(readBytes)}, wrote ${mib(newBytes)} of ${gib(bytes)}`);
    return manifest;
  };
  try {
    const first = await take('first snapshot (all new)', 'all');
    await take('nothing changed', 0);
    // From here the model directory differs from what the marker vouches for, until the restore puts it back.
    await rm(MARKER);
    await writePseudoRandom(path.join(MODEL_DIR, 'tokenizer.json'), TOKENIZER_BYTES, `tokenizer-${Date.now()}`);
    await take('a 16 MiB file rewritten', TOKENIZER_BYTES);
    await writePseudoRandom(path.join(MODEL_DIR, shardName(3)), SHARD_BYTES, `shard-3-${Date.now()}`);
    await take('a 256 MiB shard rewritten', SHARD_BYTES);

    const [report, verifyMs] = await timed(() => store.verify());
    if (!report.ok) throw new Error(`snapshot bench: verify found problems: ${report.problems.length}`);
    progress(`snapshot: verify of ${report.snapshots.length} snapshots: ${Math.round(verifyMs)} ms for ${gib(report.bytes)} of blobs`);

    const phases: SnapshotResult['restore']['phases'] = {};
    const started = performance.now();
    const restored = await store.restore(first.id, {
      onProgress: (p) => {
        phases[p.phase] ??= performance.now() - started;
      },
    });
    const restoreMs = performance.now() - started;
    await writeFile(MARKER, 'complete\n');
    progress(`snapshot: restore of the first snapshot (${gib(restored.bytes)}) over the changed directory: ${Math.round(restoreMs)} ms`);
    return {
      modelBytes: first.totals.bytes,
      files: first.totals.files,
      generateMs,
      rounds,
      verify: { ms: verifyMs, bytes: report.bytes },
      restore: { ms: restoreMs, bytes: restored.bytes, phases },
    };
  } finally {
    await rm(storeDir, { recursive: true, force: true });
  }
}
