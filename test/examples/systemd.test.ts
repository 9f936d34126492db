import { execFile, execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

/* examples/systemd/understudy.service: checked by systemd's own verifier, and against what the CLI offers. */

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const UNIT = path.join(ROOT, 'examples/systemd/understudy.service');
const run = promisify(execFile);

function hasVerifier(): boolean {
  try {
    execFileSync('systemd-analyze', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** `Key=value` lines of a section, in order (a key may repeat: ExecReload). */
function section(text: string, name: string): [string, string][] {
  const body = text.split(/^\[/m).find((part) => part.startsWith(`${name}]`)) ?? '';
  return body
    .split('\n')
    .slice(1)
    .filter((line) => /^[A-Za-z]+=/.test(line))
    .map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]);
}

describe('the systemd unit', () => {
  const text = readFileSync(UNIT, 'utf8');
  const service = section(text, 'Service');
  const values = (key: string) => service.filter(([k]) => k === key).map(([, v]) => v);

  it.skipIf(!hasVerifier())('passes systemd-analyze verify with no warning about it', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'understudy-unit-'));
    try {
      const copy = path.join(dir, 'understudy.service');
      copyFileSync(UNIT, copy);
      const { stderr } = await run('systemd-analyze', ['verify', copy]);
      // Warnings about the machine's own units are not this file's: only lines naming it count.
      expect(stderr.split('\n').filter((line) => line.includes(copy) || line.includes('understudy.service'))).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('restarts always, runs as its own user with its state directory, stops Understudy first, validates before start and reload', () => {
    expect(values('Restart')).toEqual(['always']);
    expect(values('User')).toEqual(['understudy']);
    expect(values('StateDirectory')).toEqual(['understudy']);
    expect(values('WorkingDirectory')).toEqual(['/var/lib/understudy']);
    // SIGTERM to Understudy alone: it drains and stops the instances it started itself.
    expect(values('KillMode')).toEqual(['mixed']);
    expect(values('Environment')).toContain('UNDERSTUDY_LOG_FORMAT=json');
    const cli = '/usr/bin/node /opt/understudy/dist/cli/main.js';
    expect(values('ExecStartPre')).toEqual([`${cli} validate -c \${UNDERSTUDY_CONFIG}`]);
    expect(values('ExecStart')).toEqual([`${cli} up -c \${UNDERSTUDY_CONFIG}`]);
    expect(values('ExecReload')).toEqual([`${cli} validate -c \${UNDERSTUDY_CONFIG}`, '/bin/kill -HUP $MAINPID']);
    // The program the unit runs is this repository's built CLI (npm run build made it).
    expect(existsSync(path.join(ROOT, 'dist/cli/main.js'))).toBe(true);
    expect(section(text, 'Install')).toEqual([['WantedBy', 'multi-user.target']]);
  });
});
