import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

// Every chunk the data path reads arrives in a buffer of its own, outside V8's heap. V8 frees those only at a
// scavenge, and until then counts them against the old generation's limit: at hundreds of MB/s that limit is
// crossed every few dozen MB and V8 runs a full mark-compact of the whole heap, about 40 per GB carried
// (seen with --trace-gc), a fifth of the daemon's CPU. A scavenge scheduled here every few MB frees the dead
// buffers while they are still young, which costs well under a millisecond, and the mark-compacts stop.

type Collect = (opts: { type: 'minor' }) => void;

let scavenge: Collect | undefined;
try {
  // Exposes gc() only to the new context below, not to the daemon's own global scope.
  setFlagsFromString('--expose-gc');
  scavenge = runInNewContext('gc') as Collect;
} catch {
  scavenge = undefined;
}

/** Below the old generation's slack on a small heap (about 10 MB), so no limit is ever crossed. */
const EVERY = 8 * 1024 * 1024;
let carried = 0;

/** Counts bytes handed through the data path; every EVERY bytes, a scavenge frees the dead read buffers. */
export function noteCarried(n: number): void {
  carried += n;
  if (carried >= EVERY) {
    carried = 0;
    scavenge?.({ type: 'minor' });
  }
}
