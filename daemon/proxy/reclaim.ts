import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

// Every chunk the data path reads arrives in a buffer of its own, outside V8's heap. V8 frees those only at a
// scavenge, and until then counts them against the old generation's limit: at hundreds of MB/s that limit is
// crossed every few dozen MB and V8 runs a full mark-compact of the whole heap, about 40 per GB carried
// (seen with --trace-gc), a fifth of the daemon's CPU. A scavenge scheduled here every few MB frees the dead
// buffers while they are still young, which costs well under a millisecond, and the mark-compacts stop.
//
// How often depends on the old generation's headroom. V8's default on a small heap is about 10 MB, so
// every 8 MB; ambitd's launchers give it 64 MB (NODE_FLAGS: --initial-old-space-size=64), which also keeps
// buffers that wait a while (a slow reader's) from being promoted and collected by a mark-compact, and
// then every 24 MB is enough.

type Collect = (opts: { type: 'minor' }) => void;

let scavenge: Collect | undefined;
try {
  // Exposes gc() only to the new context below, not to the daemon's own global scope.
  setFlagsFromString('--expose-gc');
  scavenge = runInNewContext('gc') as Collect;
} catch {
  scavenge = undefined;
}

/** The node flags ambitd is meant to run with (systemd unit, Dockerfile, `npm start`, the bench). */
export const NODE_FLAGS = ['--initial-old-space-size=64'] as const;

/** The old generation's configured starting size in MB, if a flag set it. */
export function initialOldSpaceMb(execArgv: readonly string[] = process.execArgv): number | undefined {
  for (const a of execArgv) {
    const m = /^--initial[-_]old[-_]space[-_]size=(\d+)$/.exec(a);
    if (m) return Number(m[1]);
  }
  return undefined;
}

const MiB = 1024 * 1024;
const EVERY = Math.min(24 * MiB, Math.max(8 * MiB, Math.floor(((initialOldSpaceMb() ?? 0) * MiB) / 3)));
let carried = 0;

/** Counts bytes handed through the data path; every EVERY bytes, a scavenge frees the dead read buffers. */
export function noteCarried(n: number): void {
  carried += n;
  if (carried >= EVERY) {
    carried = 0;
    scavenge?.({ type: 'minor' });
  }
}
