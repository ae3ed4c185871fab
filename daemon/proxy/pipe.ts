import { constants, type Http2Stream } from 'node:http2';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';

const isHttp2Stream = (s: Duplex): s is Http2Stream => 'session' in s;

/**
 * Pipes a TCP socket and a tunnel stream both ways. Each direction ends on its own (half-close: a client
 * that stops writing still gets the reply); an error on either side resets the other rather than leaving
 * it hanging. `done` runs once, after both sides have closed.
 *
 * Hand-rolled rather than two stream.pipe() calls: pipe() costs nine closures and their listener entries
 * per direction, which is most of an idle tunneled connection's heap. These ten closures share one
 * context, and `on` is used rather than `once` (each `once` allocates a bound wrapper).
 */
export function pipeBoth(socket: Socket, stream: Duplex, done: (err: Error | undefined) => void): void {
  let failure: Error | undefined;
  let open = 2;
  const closed = (): void => {
    if (--open === 0) done(failure);
  };
  const fail = (err: Error): void => {
    failure ??= err;
    // After our FIN, libuv cannot send an RST (EINVAL, and the socket never closes): plain destroy then.
    if (!socket.destroyed) {
      if (socket.writableEnded) socket.destroy();
      else socket.resetAndDestroy();
    }
    // destroy(err) sends RST_STREAM alone; close(code) would first send END_STREAM, a clean end to the peer.
    if (!stream.destroyed) stream.destroy(err);
  };
  // Backpressure: a side that cannot take more pauses the other until it drains.
  socket.on('data', (chunk: Buffer) => {
    if (!stream.write(chunk)) socket.pause();
  });
  stream.on('drain', () => socket.resume());
  stream.on('data', (chunk: Buffer) => {
    if (!socket.write(chunk)) stream.pause();
  });
  socket.on('drain', () => stream.resume());
  socket.on('end', () => {
    if (!stream.writableEnded) stream.end();
  });
  stream.on('end', () => {
    if (!socket.writableEnded) socket.end();
  });
  socket.on('error', fail);
  stream.on('error', fail);
  // An HTTP/2 stream reset by the peer closes without an error event on some paths; treat an abort as one.
  stream.on('aborted', () => fail(new Error('tunnel stream aborted by peer')));
  socket.on('close', () => {
    // The client went away while the tunnel still had data for it: nothing more can be delivered.
    if (!stream.destroyed && !stream.writableEnded) stream.end();
    closed();
  });
  stream.on('close', () => {
    // A stream reset by the peer (any code but NO_ERROR) resets the client too: a clean FIN would make a
    // truncated reply look complete.
    const rst = isHttp2Stream(stream) ? stream.rstCode : 0;
    if (rst !== undefined && rst !== constants.NGHTTP2_NO_ERROR)
      fail(new Error(`tunnel stream reset (code ${rst})`));
    else if (!socket.destroyed && !stream.readableEnded) socket.resetAndDestroy();
    else if (!socket.destroyed && !socket.writableEnded) socket.end();
    closed();
  });
}
