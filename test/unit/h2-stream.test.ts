import test from 'ava';
import { ErrorCode } from '../../daemon/proxy/h2/codes.js';
import { H2Stream, type StreamHost } from '../../daemon/proxy/h2/stream.js';

/** A session that records what the stream asks of it. */
function host(): StreamHost & { resets: number[]; closed: number } {
  const h = {
    resets: [] as number[],
    closed: 0,
    ackThreshold: 1024,
    sendData: () => 0,
    sendHeaders: () => {},
    sendReset: (_s: H2Stream, code: number) => void h.resets.push(code),
    release: () => {},
    streamClosed: () => void h.closed++,
    splice: () => false,
  };
  return h;
}

test("a stream reset by the peer and destroyed by its 'aborted' listener closes once", async (t) => {
  const h = host();
  const s = new H2Stream(1, h);
  let closes = 0;
  s.on('close', () => closes++);
  // What pipe.ts does: an abort resets the other side and destroys the stream.
  s.on('aborted', () => s.destroy(new Error('aborted')));
  s.on('error', () => {});
  s.onReset(ErrorCode.CANCEL);
  await new Promise((r) => setImmediate(r));
  t.is(closes, 1);
  t.is(h.closed, 1);
  t.true(s.destroyed);
  t.not(s.rstCode, ErrorCode.NO_ERROR);
});
