import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

// The version is package.json's, read where the compiled tree sits beside it (dist/lib/version.js, two levels
// down, in the repository and in the Debian package alike), so that one number names the release everywhere.
let cached: string | undefined;

/** This release's version (package.json), or "unknown" when package.json is not beside the compiled tree. */
export function ambitVersion(): string {
  if (cached === undefined) {
    try {
      const file = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'package.json');
      const v = (JSON.parse(readFileSync(file, 'utf8')) as { version?: unknown }).version;
      cached = typeof v === 'string' ? v : 'unknown';
    } catch {
      cached = 'unknown';
    }
  }
  return cached;
}
