// A workload's TCP connection (the client's, or ours to the workload) once the tunnel carries it: the native
// binding reads and writes its socket (see connection.ts). Half-close is the socket's: the peer's FIN is
// 'end' and our side stays open until end() (a client that stops writing still gets the whole reply).
import type { Socket } from 'node:net';
import { binding, fdOf } from '../native/index.js';
import { NativeConnection } from './connection.js';

export class PlainConnection extends NativeConnection {
  /**
   * Takes over a connected net.Socket: bytes Node already read from it (a server's banner that came
   * before the tunnel was up) come first, then the binding reads a duplicate of its descriptor; the
   * socket itself is closed here. Paused until resume().
   */
  constructor(socket: Socket) {
    // What a slow workload may have waiting here before the tunnel stream feeding it is paused.
    super(socket.remoteAddress, socket.remotePort, 256 * 1024);
    const early: Buffer[] = [];
    for (let chunk = socket.read() as Buffer | null; chunk !== null; chunk = socket.read() as Buffer | null)
      early.push(chunk);
    try {
      this.h = binding().plainConnect(fdOf(socket), this);
    } finally {
      socket.destroy();
    }
    this.startPaused();
    if (early.length > 0) this.#early = early;
  }

  #early: Buffer[] | undefined;

  /** How many bytes Node had read before the takeover (not yet handed on). */
  get earlyLength(): number {
    let n = 0;
    for (const chunk of this.#early ?? []) n += chunk.length;
    return n;
  }

  /** Bytes Node had read before the takeover, for a caller that sends them itself (they are then counted). */
  takeEarly(): Buffer[] {
    const early = this.#early ?? [];
    this.#early = undefined;
    for (const chunk of early) this.bytesRead += chunk.length;
    return early;
  }

  override resume(): void {
    super.resume();
    // Before anything the binding reads: that only arrives on a later turn of the event loop.
    for (const chunk of this.takeEarly()) this.emit('data', chunk);
  }

  protected onPeerEnd(): void {}
}
