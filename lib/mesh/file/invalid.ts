// The refusal raised inside validation, before the line is known: a field path, the reason, and how the
// path is shown when the plain dotted form would hide what it is (a config entry's `Kind/Name`).
import type { PathSeg } from './schema.js';

export class Invalid extends Error {
  constructor(
    readonly path: readonly PathSeg[],
    readonly reason: string,
    /** Shown instead of the dotted path, e.g. `configEntries[0] service-router/api: Routes[1]`. */
    readonly display?: string,
    /** The error is about the key itself (an unknown key): its line is the key's, not the value's. */
    readonly atKey = false,
  ) {
    super(reason);
  }
}
