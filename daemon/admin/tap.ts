// `GET /tap` on the admin port, upgraded to a WebSocket (the `ws` package): the live stream of the table's
// connection events, one JSON text message each, filtered by the query (workload, service, to, identity,
// direction, status). Behind the admin token like the other reads of traffic. A tap that reads slower than
// events come is dropped (closed with 1008, counted in ambit_tap_dropped_total) rather than let its
// backlog grow; at most MAX_TAPS at once.
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer } from 'ws';
import type { Logger } from '../../lib/log.js';
import type { Metrics } from '../metrics/metrics.js';
import { TAP_FILTER_KEYS, type TapFilter, type TapStatus } from '../observe/connections.js';
import { refuseUpgrade } from './http.js';

/** Events a tap may have queued (bytes not yet taken by the kernel) before it is dropped. */
export const TAP_MAX_BUFFERED = 256 * 1024;
export const MAX_TAPS = 16;

const STATUSES: readonly TapStatus[] = ['open', 'closed', 'reset', 'refused'];

/** The filter a tap's query asks for, or why it is not one. */
export function tapFilter(query: URLSearchParams): TapFilter | string {
  const out: Record<string, string> = {};
  for (const [k, v] of query) {
    if (!(TAP_FILTER_KEYS as readonly string[]).includes(k))
      return `unknown filter "${k}" (one of ${TAP_FILTER_KEYS.join(', ')})`;
    out[k] = v;
  }
  if (out.direction !== undefined && out.direction !== 'inbound' && out.direction !== 'outbound')
    return `direction must be inbound or outbound, got "${out.direction}"`;
  if (out.status !== undefined && !(STATUSES as readonly string[]).includes(out.status))
    return `status must be one of ${STATUSES.join(', ')}, got "${out.status}"`;
  return out as TapFilter;
}

export class TapServer {
  readonly #wss = new WebSocketServer({ noServer: true, maxPayload: 1024 });
  readonly #metrics: Metrics;
  readonly #log: Logger;

  constructor(metrics: Metrics, log: Logger) {
    this.#metrics = metrics;
    this.#log = log;
  }

  /** An authenticated `GET /tap` asking to upgrade. */
  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer, url: URL): void {
    const filter = tapFilter(url.searchParams);
    if (typeof filter === 'string') {
      refuseUpgrade(socket, 400, 'Bad Request', filter);
      return;
    }
    const table = this.#metrics.connections;
    if (table.taps >= MAX_TAPS) {
      this.#log.warn({ taps: table.taps }, 'tap refused: too many taps at once');
      refuseUpgrade(socket, 503, 'Service Unavailable', `at most ${MAX_TAPS} taps at once`);
      return;
    }
    this.#wss.handleUpgrade(req, socket, head, (ws) => {
      ws.on('error', () => {});
      const stop = table.tap(
        filter,
        (e) => {
          if (ws.bufferedAmount > TAP_MAX_BUFFERED) return false;
          ws.send(JSON.stringify(e));
          return true;
        },
        () => {
          this.#metrics.tapsDropped.inc();
          this.#log.warn({ filter }, 'tap dropped: it read events slower than they came');
          ws.close(1008, 'too slow: events came faster than this tap read them');
          // A client that stopped reading may never answer the close.
          setTimeout(() => ws.terminate(), 1000).unref();
        },
      );
      ws.on('close', stop);
      // Anything the client sends is ignored (maxPayload bounds it): the tap only speaks.
      ws.on('message', () => {});
    });
  }

  close(): void {
    for (const ws of this.#wss.clients) ws.terminate();
    this.#wss.close();
  }
}
