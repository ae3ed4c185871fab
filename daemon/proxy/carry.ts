// Carrying one admitted connection: the native binding splices a TCP socket to a tunnel stream when it can,
// JavaScript pipes the rest (a passthrough, a stream that cannot be spliced yet). The account only hears
// when the connection opens and closes.
import type { Socket } from 'node:net';
import { ConnectionRefusal } from '../../lib/errors.js';
import { PlainConnection } from '../io/plain.js';
import type { ConnectionAccount } from './account.js';
import { H2Stream } from './h2/stream.js';
import { type PipeEnd, pipeBoth, spliceBoth } from './pipe.js';

/**
 * Carries `socket` and `other` both ways and reports to `account` until both close. From here the native
 * binding carries the TCP side (`PlainConnection`); `clientSide` says whether `socket` faces the client (so
 * what it read came from the client) or the workload (what it wrote came from the client). Returns the TCP
 * side (abortPair resets the pair through it), or undefined when there was nothing left to carry.
 */
export function carry(
  account: ConnectionAccount,
  socket: Socket,
  other: H2Stream | Socket,
  clientSide: boolean,
  onClose?: () => void,
): PlainConnection | undefined {
  let tcp: PlainConnection;
  let far: PipeEnd;
  try {
    tcp = new PlainConnection(socket);
    far = other instanceof H2Stream ? other : new PlainConnection(other);
  } catch (err) {
    // The socket went away between the answer and here (no descriptor left): nothing to carry.
    socket.destroy();
    if (other instanceof H2Stream) other.destroy(err as Error);
    else other.destroy();
    onClose?.();
    const why = `the connection closed before it was carried: ${(err as Error).message}`;
    account.refused(new ConnectionRefusal('connect_failed', why));
    return undefined;
  }
  account.opened(() => {
    const b = tcp.liveBytes();
    return clientSide
      ? { fromClient: b.read, toClient: b.written }
      : { fromClient: b.written, toClient: b.read };
  });
  const done = (err: Error | undefined): void => {
    onClose?.();
    const fromClient = clientSide ? tcp.bytesRead : tcp.bytesWritten;
    const toClient = clientSide ? tcp.bytesWritten : tcp.bytesRead;
    account.closed(fromClient, toClient, err);
  };
  // A tunnel stream is spliced (the binding carries it); otherwise, or when it cannot be yet, JavaScript pipes.
  if (far instanceof H2Stream && spliceBoth(tcp, far, done)) return tcp;
  pipeBoth(tcp, far, done);
  tcp.resume();
  return tcp;
}
