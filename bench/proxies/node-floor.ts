import { fileURLToPath } from 'node:url';
import { freePort } from '../../test/support/ports.js';
import { answersOk } from '../http.js';
import { spawnService } from '../services.js';
import type { ProxyLauncher } from './types.js';

const SCRIPT = fileURLToPath(new URL('node-floor.mjs', import.meta.url));

/** A bare Node.js proxy (overhead only): the floor under any proxy written on Node's HTTP stack. */
export const nodeFloor: ProxyLauncher = {
  name: 'node-floor',
  overheadOnly: true,
  unavailable: () => null,
  version: () => `bare Node.js proxy ${process.version}`,
  async start(backends, _dir) {
    const port = await freePort();
    const service = spawnService('node-floor', process.execPath, [SCRIPT, `http://127.0.0.1:${backends.primaryPort}`, String(port)]);
    const url = `http://127.0.0.1:${port}`;
    await service.waitUntilReady(() => answersOk(`${url}/health`));
    return { url, stop: service.stop };
  },
};
