// Finds the L7 contenders that exist: bench/l7/contenders/<name>.js, each exporting `contender`.

import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { type L7Contender, type L7Name, L7_NAMES } from './contender.js';

const here = dirname(fileURLToPath(import.meta.url)); // dist/bench/l7

export interface Found {
  readonly available: Map<L7Name, L7Contender>;
  /** Slots whose module does not exist yet. */
  readonly notBuilt: L7Name[];
}

function isContender(v: unknown, name: L7Name): v is L7Contender {
  const c = v as Partial<L7Contender> | undefined;
  return (
    typeof c === 'object' &&
    c !== null &&
    c.name === name &&
    typeof c.start === 'function' &&
    typeof c.missing === 'function' &&
    typeof c.version === 'function'
  );
}

/** Loads each named contender's module; a module that exists but is malformed is an error, not a gap. */
export async function findContenders(names: readonly L7Name[] = L7_NAMES): Promise<Found> {
  const available = new Map<L7Name, L7Contender>();
  const notBuilt: L7Name[] = [];
  for (const name of names) {
    const file = join(here, 'contenders', `${name}.js`);
    if (!existsSync(file)) {
      notBuilt.push(name);
      continue;
    }
    const mod = (await import(pathToFileURL(file).href)) as { contender?: unknown };
    if (!isContender(mod.contender, name)) {
      throw new Error(`${file}: must export \`contender\`, an L7Contender named "${name}"`);
    }
    available.set(name, mod.contender);
  }
  return { available, notBuilt };
}
