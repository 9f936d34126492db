import { spawnSync } from 'node:child_process';

function versionOutput(command: string): string | null {
  const result = spawnSync(command, ['-v'], { encoding: 'utf8' });
  // nginx prints its version on stderr.
  return result.status === 0 ? `${result.stdout}${result.stderr}` : null;
}

export function missingBinary(command: string): string | null {
  return versionOutput(command) === null ? `${command} is not installed (run bench/setup.sh)` : null;
}

/** `name version`, the version being pattern's first group in what `command -v` prints. */
export function binaryVersion(command: string, name: string, pattern: RegExp): string {
  const match = pattern.exec(versionOutput(command) ?? '');
  return `${name} ${match?.[1] ?? 'unknown version'}`;
}
