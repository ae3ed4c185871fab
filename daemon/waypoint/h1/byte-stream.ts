// What the HTTP/1.1 engine needs of a connection, either side: the part of H2Stream (a tunnel stream) it
// uses. The engine is written against this, not against H2Stream, so that the same code can be measured
// over plain sockets beside nginx and HAProxy (bench/l7/plain-hop.ts), with no tunnel in the figure.

export interface ByteStream {
  /** False: wait for 'drain' before writing more. */
  write(chunk: Buffer): boolean;
  /** Half-close after what was written. */
  end(): void;
  pause(): unknown;
  resume(): unknown;
  /** Ends the stream now, as an abort the peer sees. */
  destroy(): void;
  readonly destroyed: boolean;
  /** 0 when the stream ended cleanly both ways; anything else is a reset (undefined: still open). */
  readonly rstCode: number | undefined;
  on(event: 'data', listener: (chunk: Buffer) => void): unknown;
  on(event: 'end' | 'close' | 'drain', listener: () => void): unknown;
  on(event: 'error', listener: (err: Error) => void): unknown;
}
