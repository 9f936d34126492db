// The least a Node.js proxy can do: read the body, forward it with an undici pool,
// pipe the answer back. No routing, retries, health, metrics or logs. It is in the
// overhead table only, to show what Node's HTTP stack itself costs on this machine.
import { createServer } from 'node:http';
import { Pool } from 'undici';

const [upstream, port] = process.argv.slice(2);
const pool = new Pool(upstream, { connections: 256 });
createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const headers = { ...req.headers };
    delete headers.connection;
    delete headers.host;
    pool
      .request({ path: req.url, method: req.method, headers, body: chunks.length ? Buffer.concat(chunks) : null })
      .then((answer) => {
        res.writeHead(answer.statusCode, answer.headers);
        answer.body.pipe(res);
      })
      .catch(() => res.writeHead(502).end());
  });
}).listen(Number(port), '127.0.0.1', () => process.stdout.write('listening\n'));
