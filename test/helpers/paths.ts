// Where the repository and the compiled tree are, whichever folder (unit, integration, system) a test is in:
// this file is always dist/test/helpers/paths.js once built.
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The compiled tree, `dist/`. */
export const DIST = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
/** The repository's root, where package.json is. */
export const ROOT = resolve(DIST, '..');
/** ambitd and the CLI, as npm's bin entries run them. */
export const AMBITD = join(DIST, 'daemon', 'main.js');
export const CLI = join(DIST, 'agent-cli', 'main.js');
