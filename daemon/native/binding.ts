// The binding ready for connections: initialised once with the dispatcher that turns its events into calls
// on the connection object (TLS or plain) that owns them, and with the slab its reads land in.
import { TunnelError } from '../../lib/errors.js';
import type { Addon } from './addon.js';
import { addon } from './load.js';

/** What the binding calls back into: a connection object with one method. */
export interface NativeOwner {
  onNative(event: number, a: unknown, b: unknown, c: unknown, d: unknown): void;
}

/**
 * The buffer decrypted bytes land in, shared by every connection; 'data' hands out views of it. A new one
 * is made when it fills (the old one lives as long as some view of it does).
 */
const SLAB = 256 * 1024;
export let slab: Buffer = Buffer.alloc(0);

let ready: Addon | undefined;

/** The binding, initialised; a TunnelError that says what is missing if there is none. */
export function binding(): Addon {
  if (ready) return ready;
  const a = addon();
  if (typeof a === 'string') throw new TunnelError(`the tunnel's TLS is unavailable: ${a}`);
  a.tlsInit(
    (owner, event, x, y, z, w) => (owner as NativeOwner).onNative(event, x, y, z, w),
    () => {
      slab = Buffer.allocUnsafeSlow(SLAB);
      return slab;
    },
  );
  ready = a;
  return a;
}
