export { AdminClient } from './client.js';
export { AdminServer } from './server.js';
export { ensureToken, readToken, tokenFile } from './token.js';
export type { JobView } from '../jobs/index.js';
