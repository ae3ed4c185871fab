import type { Logger } from '../../lib/log.js';
import type { Ambitd } from '../daemon.js';

const POLL_MS = 200;

/**
 * A worker's last act, on a reload or a stop: it stops accepting (its copies of the shared listeners
 * close; the supervisor's stay open for the other workers), sends GOAWAY on its inbound and pooled
 * sessions so that peers open their new streams elsewhere, and carries every open connection to its end.
 * `deadline()` is read on every turn: a stop arriving during a reload's long drain shortens it.
 * Returns how many connections were still open, and closed, when the deadline came.
 */
export async function drainWorker(d: Ambitd, deadline: () => number, log: Logger): Promise<number> {
  const started = Date.now();
  d.listeners.close();
  d.capture?.outbound.close();
  d.capture?.plaintext.close();
  void d.tunnel.close(true);
  d.pool.drainAll();
  d.waypoint?.drain();
  const open = (): number => Math.max(d.openConnections, d.metrics.connections.size);
  while (open() > 0 && Date.now() < deadline()) {
    await new Promise((r) => setTimeout(r, Math.max(1, Math.min(POLL_MS, deadline() - Date.now()))));
  }
  const remaining = open();
  if (remaining > 0) {
    log.warn(
      { remaining, drainedMs: Date.now() - started },
      'drain time is up: closing the connections still open',
    );
  } else {
    log.info({ drainedMs: Date.now() - started }, 'drained: every connection ended');
  }
  await d.close(0);
  return remaining;
}
