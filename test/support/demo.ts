import { readFileSync } from 'node:fs';
import path from 'node:path';
import { pino } from 'pino';
import { parseConfig } from '../../src/config/index.js';
import { Understudy } from '../../src/controller/index.js';
import { freePorts } from './ports.js';

export const DEMO = path.resolve('examples/demo/understudy.yaml');

/**
 * The bundled demo as `npm start` runs it (real espeak-ng TTS and pocketsphinx ASR
 * servers), moved onto free ports and a fresh state directory.
 */
export async function demo(stateDir: string, extra = ''): Promise<Understudy> {
  let text = readFileSync(DEMO, 'utf8').replace(/^stateDir: .*$/m, `stateDir: ${stateDir}`);
  const fixed = ['9901', '8080', '8081', '7101', '7102', '7103', '7201', '7202'];
  const ports = await freePorts(fixed.length);
  fixed.forEach((port, i) => (text = text.replaceAll(port, String(ports[i]))));
  // Parsed as if it were the demo's own file, so its relative paths (../tts-server) hold.
  const config = parseConfig(`${text}\n${extra}`, DEMO);
  return new Understudy(config, { log: pino({ level: process.env.TEST_LOG ?? 'silent' }) });
}

/** Until the demo's TTS serves on its primary with the hot standby ready. */
export async function demoReady(app: Understudy): Promise<void> {
  const tts = app.service('tts')!;
  await tts.waitFor((s) => s.active === 'primary' && s.instances.hot!.state === 'ready' && s.instances.primary!.admitted, 60_000, undefined, 'the demo up');
  const asr = app.service('asr')!;
  await asr.waitFor((s) => s.active === 'primary' && s.instances.hot!.state === 'ready', 60_000, undefined, 'the demo up');
}
