// Every connection ambitd opens itself (tunnels to peer daemons, upstream connections to local workloads,
// pass-through) is opened here. When capture is on it carries the daemon's socket mark, set before
// connect(), so that the capture rules (`-m mark --mark <mark> -j RETURN`) never redirect the daemon's own
// traffic back to itself. One factory per daemon, built from its configuration and handed to whoever
// connects: the mark is the daemon's, not the process's.
import { closeSync } from 'node:fs';
import { Socket, type TcpNetConnectOpts, connect, isIP } from 'node:net';
import { loadNative } from '../capture/native.js';

export interface SocketFactoryOptions {
  /** The mark every socket carries; undefined when capture is off (plain connect). */
  readonly mark: number | undefined;
  /** How long an upstream connect may take before it fails. */
  readonly connectTimeoutMs: number;
}

export type TcpConnectOpts = TcpNetConnectOpts & { readonly host: string; readonly port: number };

export class SocketFactory {
  readonly mark: number | undefined;
  readonly connectTimeoutMs: number;

  constructor(opts: SocketFactoryOptions) {
    this.mark = opts.mark;
    this.connectTimeoutMs = opts.connectTimeoutMs;
  }

  /**
   * Fails at start rather than on the first connection when a mark cannot be set: no binding, or no
   * CAP_NET_ADMIN (EPERM). Nothing to check without a mark.
   */
  check(): void {
    if (this.mark !== undefined) closeSync(loadNative().markedSocket(4, this.mark));
  }

  /**
   * Whether sockets may be made transparent (IP_TRANSPARENT needs CAP_NET_ADMIN or CAP_NET_RAW): undefined
   * when they may, else why not. Never without a mark: the capture rules must see the mark on them.
   */
  transparentError(family: 4 | 6): string | undefined {
    if (this.mark === undefined) return 'capture is off (no socket mark)';
    try {
      closeSync(loadNative().markedSocket(family, this.mark, true));
      return undefined;
    } catch (err) {
      return (err as Error).message;
    }
  }

  /**
   * Opens a TCP connection like net.connect, marked when the daemon has a mark. The socket is created and
   * marked first, then connected, so that even its SYN carries the mark. With `transparent` (and a mark) it
   * may bind `localAddress` though this host does not have it: the client's address, handed on.
   */
  connect(opts: TcpConnectOpts, transparent = false): Socket {
    const mark = this.mark;
    if (mark === undefined) return connect(opts);
    const fd = loadNative().markedSocket(isIP(opts.host) === 6 ? 6 : 4, mark, transparent);
    const socket = new Socket({
      fd,
      readable: true,
      writable: true,
      allowHalfOpen: opts.allowHalfOpen ?? false,
    });
    return socket.connect(opts);
  }

  /**
   * Connects to a workload or a destination outside the mesh: half-close allowed, no Nagle, bounded by the
   * connect timeout. Resolves once the TCP connection is up. `from`: the source address the workload is to
   * see (the client's, of ip's family), bound through a transparent socket; only with a mark, else ignored,
   * and only where the replies to it are routed back to this host (lib/capture/transparent.ts).
   */
  upstream(ip: string, port: number, from?: string): Promise<Socket> {
    return new Promise((resolve, reject) => {
      const opts: TcpConnectOpts = { host: ip, port, allowHalfOpen: true, noDelay: true };
      const transparent = from !== undefined && this.mark !== undefined;
      const upstream = this.connect(transparent ? { ...opts, localAddress: from } : opts, transparent);
      const timer = setTimeout(() => upstream.destroy(new Error('connect timed out')), this.connectTimeoutMs);
      upstream.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      upstream.once('connect', () => {
        clearTimeout(timer);
        upstream.removeAllListeners('error');
        resolve(upstream);
      });
    });
  }
}
