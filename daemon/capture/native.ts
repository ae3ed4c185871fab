// Capture's part of the native binding: SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST and SO_MARK, which Node has
// no API for.
import { type Socket, isIPv6 } from 'node:net';
import { CaptureUnavailableError } from '../../lib/errors.js';
import { unmapIp } from '../../lib/net/addresses.js';
import { type Addon, addon, fdOf } from '../native/index.js';

export type NativeBinding = Pick<Addon, 'originalDst' | 'setMark' | 'markedSocket'>;

/** An error from the binding: `code` is the errno name (ENOENT when a connection was not redirected). */
export interface NativeError extends Error {
  code: string;
}

/** The binding, or a CaptureUnavailableError that says why not (not Linux, not built). */
export function loadNative(): NativeBinding {
  const a = addon();
  if (typeof a === 'string') throw new CaptureUnavailableError(`transparent capture is unavailable: ${a}`);
  return a;
}

/**
 * Where the client meant to go before iptables redirected it. Undefined when the connection was not
 * redirected (ENOENT: someone connected to the capture port directly).
 */
export function originalDestination(socket: Socket): { ip: string; port: number } | undefined {
  const family: 4 | 6 = socket.localAddress && isIPv6(unmapIp(socket.localAddress)) ? 6 : 4;
  try {
    const r = loadNative().originalDst(fdOf(socket), family);
    return { ip: unmapIp(r.address), port: r.port };
  } catch (err) {
    if ((err as NativeError).code === 'ENOENT') return undefined;
    throw err;
  }
}
