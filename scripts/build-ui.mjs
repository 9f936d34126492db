// Builds the dashboard (ui/) into dist/ui/: one minified ES module bundle (Preact,
// uPlot, eventsource-parser and the page's own code) and one stylesheet. Runs at
// `npm run build` from what npm installed; nothing is fetched.
import { build } from 'esbuild';
import { copyFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const out = path.join(root, 'dist', 'ui');
await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
await build({
  entryPoints: [path.join(root, 'ui', 'main.tsx')],
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['chrome110', 'firefox115', 'safari16'],
  jsx: 'automatic',
  jsxImportSource: 'preact',
  outfile: path.join(out, 'app.js'),
  legalComments: 'eof',
  logLevel: 'warning',
});
const css = [await readFile(path.join(root, 'node_modules', 'uplot', 'dist', 'uPlot.min.css'), 'utf8'), await readFile(path.join(root, 'ui', 'style.css'), 'utf8')];
await writeFile(path.join(out, 'app.css'), css.join('\n'));
await copyFile(path.join(root, 'ui', 'index.html'), path.join(out, 'index.html'));
