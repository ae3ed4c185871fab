import type { PlainConnection } from '../io/plain.js';
import { ErrorCode } from './h2/codes.js';
import { H2Stream } from './h2/stream.js';
import { noteCarried } from './reclaim.js';

/** A shared no-op error listener: an emitter with none would crash the daemon on a peer's bytes. */
export function ignoreError(): void {}

/** The far side of a pipe: another TCP connection (passthrough) or a tunnel stream. */
export type PipeEnd = PlainConnection | H2Stream;

/** What one piped pair shares; both ends point at it. */
interface Link {
  readonly socket: PlainConnection;
  readonly stream: PipeEnd;
  readonly done: (err: Error | undefined) => void;
  failure: Error | undefined;
  /** The ends that have closed (SOCKET, STREAM): each counts once, whatever its emitter repeats. */
  closed: number;
}

const SOCKET = 1;
const STREAM = 2;

const kLink = Symbol('ambit.link');
type Linked<T> = T & { [kLink]: Link };

/** Both ends point at what they share; the listeners find it through `this`. */
function linkPair(socket: PlainConnection, stream: PipeEnd, done: (err: Error | undefined) => void): void {
  const l: Link = { socket, stream, done, failure: undefined, closed: 0 };
  (socket as Linked<PlainConnection>)[kLink] = l;
  (stream as Linked<PipeEnd>)[kLink] = l;
}

/**
 * Pipes a TCP socket and a tunnel stream both ways. Each direction ends on its own (half-close: a client
 * that stops writing still gets the reply); an error on either side resets the other rather than leaving
 * it hanging. `done` runs once, after both sides have closed.
 *
 * Hand-rolled rather than two stream.pipe() calls, and with module-level listeners that find their pair
 * through `this` (emitters call listeners with `this` set to themselves): pipe() costs nine closures and
 * their listener entries per direction, most of an idle tunneled connection's heap; this costs one object.
 */
export function pipeBoth(
  socket: PlainConnection,
  stream: PipeEnd,
  done: (err: Error | undefined) => void,
): void {
  linkPair(socket, stream, done);
  socket.on('data', onSocketData);
  socket.on('drain', onSocketDrain);
  socket.on('end', onSocketEnd);
  socket.on('error', onError);
  socket.on('close', onSocketClose);
  stream.on('data', onStreamData);
  stream.on('drain', onStreamDrain);
  stream.on('end', onStreamEnd);
  stream.on('error', onError);
  // An HTTP/2 stream reset by the peer closes without an error event on some paths; treat an abort as one.
  stream.on('aborted', onAborted);
  stream.on('close', onStreamClose);
  // A tunnel stream holds what arrived before anyone listened; this lets it flow.
  stream.resume();
}

// Backpressure: a side that cannot take more (write() says so) pauses the other until it drains. Writes of
// one turn of the event loop leave together (the connections batch them), so nothing is corked here.
function onSocketData(this: Linked<PlainConnection>, chunk: Buffer): void {
  noteCarried(chunk.length);
  if (!this[kLink].stream.write(chunk)) this.pause();
}
function onStreamData(this: Linked<PipeEnd>, chunk: Buffer): void {
  noteCarried(chunk.length);
  if (!this[kLink].socket.write(chunk)) this.pause();
}
function onSocketDrain(this: Linked<PlainConnection>): void {
  this[kLink].stream.resume();
}
function onStreamDrain(this: Linked<PipeEnd>): void {
  this[kLink].socket.resume();
}
function onSocketEnd(this: Linked<PlainConnection>): void {
  const { stream } = this[kLink];
  if (!stream.writableEnded) stream.end();
}
function onStreamEnd(this: Linked<PipeEnd>): void {
  const { socket } = this[kLink];
  if (!socket.writableEnded) socket.end();
}
function onError(this: Linked<PipeEnd>, err: Error): void {
  fail(this[kLink], err);
}
function onAborted(this: Linked<PipeEnd>): void {
  fail(this[kLink], new Error('tunnel stream aborted by peer'));
}

/**
 * Joins a TCP socket and a tunnel stream in the native binding, which carries their bytes both ways from now
 * on (half-close included: the workload's FIN becomes END_STREAM, the peer's END_STREAM its FIN); what is
 * left here is how they end. False when the stream cannot be spliced now: pipeBoth then carries on from
 * wherever the two ends are.
 */
export function spliceBoth(
  socket: PlainConnection,
  stream: H2Stream,
  done: (err: Error | undefined) => void,
): boolean {
  if (!stream.splice(socket)) return false;
  linkPair(socket, stream, done);
  socket.on('error', onError);
  socket.on('close', onSplicedSocketClose);
  stream.on('error', onError);
  stream.on('aborted', onAborted);
  stream.on('close', onStreamClose);
  return true;
}

/** A spliced workload connection closed: after both ends on a clean finish, else the stream is reset. */
function onSplicedSocketClose(this: Linked<PlainConnection>): void {
  const link = this[kLink];
  if (!link.stream.destroyed) link.stream.destroy(link.failure ?? new Error('the connection closed'));
  closed(link, SOCKET);
}

/** Resets a carried pair from outside (a policy that no longer allows it), by either of its ends. */
export function abortPair(end: PipeEnd, err: Error): void {
  const link = (end as PipeEnd & { [kLink]?: Link })[kLink];
  if (link) fail(link, err);
}

function fail(link: Link, err: Error): void {
  link.failure ??= err;
  const { socket, stream } = link;
  if (!socket.destroyed) socket.resetAndDestroy();
  // destroy(err) sends RST_STREAM (CANCEL): the peer sees an abort, never a clean end of a truncated stream.
  if (!stream.destroyed) stream.destroy(err);
}

/**
 * One end closed; `done` runs once both have. The socket's close comes last on a spliced pair that ends in
 * a reset (after the binding has told what the splice carried), so the counts `done` reads are whole.
 */
function closed(link: Link, end: number): void {
  if (link.closed & end) return;
  link.closed |= end;
  if (link.closed === (SOCKET | STREAM)) link.done(link.failure);
}

function onSocketClose(this: Linked<PlainConnection>): void {
  const link = this[kLink];
  // The client went away while the tunnel still had data for it: nothing more can be delivered.
  if (!link.stream.destroyed && !link.stream.writableEnded) link.stream.end();
  closed(link, SOCKET);
}

function onStreamClose(this: Linked<PipeEnd>): void {
  const link = this[kLink];
  const { socket } = link;
  // A stream reset by the peer (any code but NO_ERROR) resets the client too: a clean FIN would make a
  // truncated reply look complete.
  const rst = this instanceof H2Stream ? this.rstCode : 0;
  if (rst !== undefined && rst !== ErrorCode.NO_ERROR)
    fail(link, new Error(`tunnel stream reset (code ${rst})`));
  else if (!socket.destroyed && !this.readableEnded) socket.resetAndDestroy();
  else if (!socket.destroyed && !socket.writableEnded) socket.end();
  closed(link, STREAM);
}
