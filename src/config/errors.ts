/** Base of every configuration error: a stable `code`, and where the mistake is. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  readonly code: string = 'CONFIG_INVALID';
  constructor(
    message: string,
    readonly issues: readonly ConfigIssue[] = [],
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** One mistake in a configuration file, located by file, line and field path. */
export interface ConfigIssue {
  file: string;
  line: number | undefined;
  column: number | undefined;
  /** Dotted field path, e.g. `services.tts.instances.primary.tier`. */
  field: string;
  message: string;
}

export function formatIssue(issue: ConfigIssue): string {
  const where = issue.line === undefined ? issue.file : `${issue.file}:${issue.line}:${issue.column ?? 1}`;
  return issue.field ? `${where}: ${issue.field}: ${issue.message}` : `${where}: ${issue.message}`;
}
