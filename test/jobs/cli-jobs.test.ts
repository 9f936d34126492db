import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseWav } from '../../src/jobs/index.js';
import { freePorts } from '../support/ports.js';
import { CLI, startUp, stopUp, type UpProcess } from './up-process.js';

/* `understudy jobs` as a user runs it, on the real espeak-ng text-to-speech server. */

const TTS = fileURLToPath(new URL('../../examples/tts-server/server.mjs', import.meta.url));
const run = promisify(execFile);
let dir: string;
let configFile: string;
let up: UpProcess | undefined;

async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args, '-c', configFile], { cwd: dir });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'understudy-jobs-cli-'));
  const [primary, hot] = await freePorts(2);
  const instance = (name: string, tier: string, port: number) => `
      ${name}:
        tier: ${tier}
        url: http://127.0.0.1:${port}
        runtime: { type: process, command: [${process.execPath}, ${TTS}, --port, "${port}", --name, ${name}] }
        probes: { startup: { http: { path: /health }, interval: 100ms, budget: 30s } }`;
  configFile = path.join(dir, 'understudy.yaml');
  writeFileSync(
    configFile,
    `stateDir: ${path.join(dir, 'state')}\ngateway: { listen: "127.0.0.1:0" }\nadmin: { listen: "127.0.0.1:0" }\nlog: { level: warn }\nservices:\n  tts:\n    route: { pathPrefix: / }\n    instances:${instance('primary', 'primary', primary!)}${instance('hot', 'hot', hot!)}\n`,
  );
  up = await startUp(configFile, path.join(dir, 'state'));
  // The CLI reads the admin port from the config: pin it to the one Understudy took.
  writeFileSync(configFile, readFileSync(configFile, 'utf8').replace('admin: { listen: "127.0.0.1:0" }', `admin: { listen: "${up.admin.slice(7)}" }`));
});

afterAll(async () => {
  await stopUp(up);
  rmSync(dir, { recursive: true, force: true });
});

describe('understudy jobs', () => {
  it('speaks a script sentence by sentence, follows it, and joins the audio in order', async () => {
    const script = path.join(dir, 'script.txt');
    writeFileSync(script, 'The lighthouse stood on the rock. Its keeper climbed the stairs at dusk.\n\nHe lit the lamp. Ships passed safely all night. Morning came.\n');
    const submitted = await cli('jobs', 'submit', '--service', 'tts', '--path', '/v1/audio/speech', '--sentences', script, '--field', 'input', '--join', 'wav', '--watch');
    expect(submitted.code).toBe(0);
    const id = /^(job-\S+): submitted, 5 items \(tts\)$/m.exec(submitted.stdout)?.[1];
    expect(id).toBeDefined();
    expect(submitted.stdout).toContain(`${id}: succeeded: 5 succeeded, 0 failed of 5`);
    // Not a terminal: progress comes as plain lines, the last one complete.
    expect(submitted.stderr).toMatch(/\[█{24}\] 5\/5 100% · succeeded/);

    const out = path.join(dir, 'script.wav');
    const output = await cli('jobs', 'output', id!, '-o', out);
    expect(output.code).toBe(0);
    const joined = parseWav(readFileSync(out));
    expect(joined).toBeDefined();

    const results = await cli('jobs', 'results', id!);
    const lines = results.stdout.trim().split('\n').map((line) => JSON.parse(line) as { index: number; status: number; contentType: string; size: number });
    expect(lines.map((line) => [line.index, line.status, line.contentType])).toEqual([0, 1, 2, 3, 4].map((i) => [i, 200, 'audio/wav']));
    // The joined audio is every item's audio, in item order, nothing more.
    let audio = 0;
    for (const line of lines) {
      const body = await up!.text(`/v1/jobs/${id}/items/${line.index}/body`);
      expect(body.length).toBeGreaterThan(0);
      audio += line.size - 44;
    }
    expect(joined!.data.length).toBe(audio);

    const list = await cli('jobs', 'list');
    expect(list.stdout).toMatch(new RegExp(`${id} +tts +succeeded +5/5`));
    const show = await cli('jobs', 'show', id!);
    expect(show.stdout).toContain(`${id}: succeeded`);
    expect(show.stdout).toMatch(/items +5: 5 succeeded, 0 failed/);
  });

  it('explains what is wrong with a submission and exits 1', async () => {
    const noService = await cli('jobs', 'submit', '--service', 'nope', '--path', '/v1/audio/speech', '--lines', configFile);
    expect(noService).toMatchObject({ code: 1, stderr: 'understudy: no service named nope\n' });
    const noPath = await cli('jobs', 'submit', '--service', 'tts', '--lines', configFile);
    expect(noPath.code).toBe(1);
    expect(noPath.stderr).toContain('--path is required');
    const missing = await cli('jobs', 'submit', '--service', 'tts', '--path', '/x', '--files', path.join(dir, 'nope.wav'));
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain(`items[0].file: ${path.join(dir, 'nope.wav')}: no such file`);
    const bad = path.join(dir, 'bad.json');
    writeFileSync(bad, '{"service": "tts", "items": [{"path": "/v1/audio/speech", "json": {}, "text": "x"}]}');
    const invalid = await cli('jobs', 'submit', bad);
    expect(invalid.stderr).toBe('understudy: the job is not valid: items[0]: give at most one of json, text, base64 and file\n');
    const unknown = await cli('jobs', 'show', 'job-nope');
    expect(unknown).toMatchObject({ code: 1, stderr: 'understudy: no job job-nope\n' });
  });
});
