// `npm run docs:config`: regenerates the tables of docs/configuration.md from the schema, keeping its head.
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { configurationDoc } from './docs.js';

/** From dist/lib/config/ (where this runs) to the checkout's docs/. */
const file = fileURLToPath(new URL('../../../docs/configuration.md', import.meta.url));
writeFileSync(file, configurationDoc(readFileSync(file, 'utf8')));
process.stdout.write(`wrote ${file}\n`);
