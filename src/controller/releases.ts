import { readFile } from 'node:fs/promises';
import { UnderstudyError } from '../core/index.js';
import { DurableFile } from '../jobs/index.js';

/** One deploy or rollback, as the history keeps it. */
export interface ReleaseRecord {
  kind: 'deploy' | 'rollback';
  from: string;
  to: string;
  startedAt: number;
  endedAt: number | null;
  /** `running` until it ends; a deploy ends `known-good`, `failed` or `rolled-back`. */
  outcome: 'running' | 'known-good' | 'failed' | 'rolled-back' | 'done';
  reason: string;
  /** The snapshot taken before it, if the service has backups. */
  snapshot: string | null;
}

export interface ServiceReleases {
  /** The version the service runs now. */
  current: string;
  /** `version.expect` in the config when `current` was last set from it: a change there is a deploy. */
  configVersion: string;
  /** Versions that survived a watch window (or were running when Understudy first saw them), newest last. */
  knownGood: string[];
  /** Newest last; the last 50 are kept. */
  history: ReleaseRecord[];
}

interface BookFile {
  format: 1;
  services: Record<string, ServiceReleases>;
}

const HISTORY_KEPT = 50;

export class ReleaseError extends UnderstudyError {
  override name = 'ReleaseError';
  constructor(
    code: 'RELEASES_UNREADABLE' | 'DEPLOY_REFUSED' | 'DEPLOY_RUNNING' | 'NO_KNOWN_GOOD' | 'NOT_FOUND',
    message: string,
    readonly status: number,
    options?: { cause?: unknown },
  ) {
    super(code, message, false, options);
  }
}

/**
 * The versions each service runs and has run: `stateDir/releases.json`, rewritten whole
 * (temp file, fsync, rename) at every change, so a restart runs what was last deployed
 * or rolled back to, not what the config said at first.
 */
export class ReleaseBook {
  private data: BookFile = { format: 1, services: {} };
  private writing: Promise<void> = Promise.resolve();

  private constructor(readonly file: string) {}

  static async open(file: string): Promise<ReleaseBook> {
    const book = new ReleaseBook(file);
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return book;
      throw new ReleaseError('RELEASES_UNREADABLE', `${file}: ${(error as Error).message}`, 500, { cause: error });
    }
    try {
      const parsed = JSON.parse(text) as BookFile;
      if (parsed.format !== 1 || typeof parsed.services !== 'object' || parsed.services === null) throw new Error('not a release book of format 1');
      book.data = parsed;
    } catch (error) {
      throw new ReleaseError(
        'RELEASES_UNREADABLE',
        `${file} is unreadable (${(error as Error).message}); it records which version each service runs. Move it away to start from the versions in the config.`,
        500,
        { cause: error },
      );
    }
    return book;
  }

  /**
   * The version to run at start: the config's when it changed since last time (or is
   * new), else the one last deployed or rolled back to. A version first seen is taken
   * as known-good: it is what ran before Understudy managed releases.
   */
  adopt(service: string, configVersion: string): { current: string; configChanged: boolean } {
    const known = this.data.services[service];
    if (!known) {
      this.data.services[service] = { current: configVersion, configVersion, knownGood: [configVersion], history: [] };
      return { current: configVersion, configChanged: false };
    }
    if (known.configVersion !== configVersion) return { current: known.current, configChanged: true };
    return { current: known.current, configChanged: false };
  }

  get(service: string): ServiceReleases | undefined {
    return this.data.services[service];
  }

  /** The newest known-good version other than `except`. */
  lastKnownGood(service: string, except?: string): string | undefined {
    const good = this.data.services[service]?.knownGood ?? [];
    return [...good].reverse().find((v) => v !== except);
  }

  begin(service: string, record: Omit<ReleaseRecord, 'endedAt' | 'outcome'>): ReleaseRecord {
    const entry: ReleaseRecord = { ...record, endedAt: null, outcome: 'running' };
    const releases = this.require(service);
    releases.history = [...releases.history, entry].slice(-HISTORY_KEPT);
    return entry;
  }

  end(entry: ReleaseRecord, outcome: ReleaseRecord['outcome'], reason: string, now: number): void {
    entry.outcome = outcome;
    entry.reason = reason;
    entry.endedAt = now;
  }

  setCurrent(service: string, version: string, configVersion?: string): void {
    const releases = this.require(service);
    releases.current = version;
    if (configVersion !== undefined) releases.configVersion = configVersion;
  }

  markKnownGood(service: string, version: string): void {
    const releases = this.require(service);
    releases.knownGood = [...releases.knownGood.filter((v) => v !== version), version].slice(-HISTORY_KEPT);
  }

  /** Writes the book; changes are made in memory first and reach the disk in order. */
  save(): Promise<void> {
    const text = `${JSON.stringify(this.data, null, 2)}\n`;
    this.writing = this.writing
      .catch(() => {})
      .then(async () => {
        const file = await DurableFile.create(this.file);
        await file.write(text);
        await file.commit();
      });
    return this.writing;
  }

  private require(service: string): ServiceReleases {
    const releases = this.data.services[service];
    if (!releases) throw new ReleaseError('NOT_FOUND', `service ${service} pins no version`, 404);
    return releases;
  }
}
