// Whether the code on disk is still the code this supervisor runs: an upgrade (a new package, a new build)
// rewrites the files, so the latest modification time and the count of the daemon's modules tell, at
// the cost of a stat per file (a few hundred, on a SIGHUP only).
import { readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** dist/: the folder holding daemon/ and lib/, two levels above this module (dist/daemon/supervisor). */
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

export function codeStamp(root = ROOT): string {
  let latest = 0;
  let files = 0;
  const walk = (dir: string): void => {
    let entries: import('node:fs').Dirent[];
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const path = join(dir, e.name);
      if (e.isDirectory()) walk(path);
      else if (e.name.endsWith('.js')) {
        files++;
        latest = Math.max(latest, statSync(path, { throwIfNoEntry: false })?.mtimeMs ?? 0);
      }
    }
  };
  walk(join(root, 'daemon'));
  walk(join(root, 'lib'));
  return `${files}:${latest}`;
}
