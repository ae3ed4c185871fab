// Every connection ambitd opens itself (tunnels to peer daemons, upstream connections to local workloads,
// pass-through) carries a socket mark when capture is on, set before connect(), so that the capture rules
// (`-m mark --mark <mark> -j RETURN`) never redirect the daemon's own traffic back to itself.
import { closeSync } from 'node:fs';
import { type NetConnectOpts, Socket, connect, isIP } from 'node:net';
import { loadNative } from './native.js';

let daemonMark: number | undefined;

/** Turns marking on (a number) or off (undefined) for the whole process. */
export function setDaemonMark(mark: number | undefined): void {
  if (mark !== undefined) {
    // Fails here, at start, rather than on the first connection: no binding, or no CAP_NET_ADMIN (EPERM).
    const fd = loadNative().markedSocket(4, mark);
    closeSync(fd);
  }
  daemonMark = mark;
}

export const currentDaemonMark = (): number | undefined => daemonMark;

/**
 * Opens a TCP connection like net.connect, marked with the daemon's mark when one is set. The socket is
 * created and marked first, then connected, so that even its SYN carries the mark.
 */
export function connectTcp(opts: NetConnectOpts & { host: string; port: number }): Socket {
  const mark = daemonMark;
  if (mark === undefined) return connect(opts);
  const family: 4 | 6 = isIP(opts.host) === 6 ? 6 : 4;
  const fd = loadNative().markedSocket(family, mark);
  const { host, port, ...rest } = opts as NetConnectOpts & { host: string; port: number };
  const socket = new Socket({
    fd,
    readable: true,
    writable: true,
    allowHalfOpen: rest.allowHalfOpen ?? false,
  });
  return socket.connect({ ...rest, host, port } as NetConnectOpts);
}
