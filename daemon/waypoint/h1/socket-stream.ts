// A TCP socket as the HTTP/1.1 engine's ByteStream, for running the engine over plain sockets: the L7
// bench's `hop` (bench/l7/plain-hop.ts) and the engine's own tests. The waypoint itself only ever runs it
// over tunnel streams.
import type { Socket } from 'node:net';
import type { ByteStream } from './byte-stream.js';

/** A socket as the engine's ByteStream: a reset is an abortive close (RST), a clean close is code 0. */
export class SocketStream implements ByteStream {
  readonly #s: Socket;
  #rst: number | undefined;
  constructor(s: Socket) {
    this.#s = s;
    s.setNoDelay(true);
    s.once('close', (hadError: boolean) => {
      this.#rst = hadError ? 1 : 0;
    });
  }
  write(chunk: Buffer): boolean {
    return this.#s.write(chunk);
  }
  end(): void {
    this.#s.end();
  }
  pause(): void {
    this.#s.pause();
  }
  resume(): void {
    this.#s.resume();
  }
  destroy(): void {
    this.#s.resetAndDestroy();
  }
  get destroyed(): boolean {
    return this.#s.destroyed;
  }
  get rstCode(): number | undefined {
    return this.#rst;
  }
  on(event: 'data', listener: (chunk: Buffer) => void): this;
  on(event: 'end' | 'close' | 'drain', listener: () => void): this;
  on(event: 'error', listener: (err: Error) => void): this;
  on(event: string, listener: (arg: never) => void): this {
    this.#s.on(event, listener as (arg: unknown) => void);
    return this;
  }
}
