// Random ids for trace context, from a pool filled 4 KiB at a time: a `randomBytes` call per id costs a
// call into OpenSSL (and a getpid, its fork check) for 8 or 16 bytes, on every connection and request.
// The bytes are the same CSPRNG's. Each process has its own pool: Node's workers (cluster, child_process)
// are new processes started afresh, never a copy of this one's memory.
import { randomFillSync } from 'node:crypto';

const POOL = Buffer.allocUnsafe(4096);
let at = POOL.length;

/** `n` random bytes as lower-case hex. */
export function randomHex(n: number): string {
  if (n > POOL.length) throw new RangeError(`randomHex: ${n} bytes is more than the pool holds`);
  if (at + n > POOL.length) {
    randomFillSync(POOL);
    at = 0;
  }
  const s = POOL.toString('hex', at, at + n);
  at += n;
  return s;
}
