// 15001: connections that iptables redirected from enrolled workloads. The original destination comes
// from the kernel (SO_ORIGINAL_DST), the source workload from the source address or owner uid.
import { type Server, type Socket, createServer } from 'node:net';
import { originalDestination } from '../../capture/native.js';
import { sourceWorkload } from '../../capture/source.js';
import type { Listen } from '../../config.js';
import type { Logger } from '../../log.js';
import type { Metrics, RefusalReason } from '../../metrics/metrics.js';
import type { StateStore } from '../../state/store.js';
import { ConnectionAccount, type Party } from '../account.js';
import { formatAuthority } from '../hbone.js';
import type { Outbound } from './outbound.js';

export interface CaptureListenerDeps {
  readonly outbound: Outbound;
  readonly store: StateStore;
  readonly nodeName: string;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** A connection from a source that is not enrolled: carried untouched, or refused. */
  readonly unenrolledSource: 'passthrough' | 'refuse';
  readonly connectTimeoutMs: number;
}

/** Listens where iptables REDIRECTs to: the given address, plus [::] (IPv6 only) when that is 0.0.0.0. */
export async function listenCapture(
  listen: Listen,
  onConnection: (s: Socket) => void,
): Promise<{ servers: Server[]; port: number }> {
  const servers: Server[] = [];
  const first = createServer({ allowHalfOpen: true, pauseOnConnect: true }, onConnection);
  await new Promise<void>((resolve, reject) => {
    first.once('error', reject);
    first.listen({ host: listen.host, port: listen.port, ipv6Only: listen.host === '::' }, () => resolve());
  });
  servers.push(first);
  const addr = first.address();
  const port = typeof addr === 'object' && addr ? addr.port : listen.port;
  if (listen.host === '0.0.0.0') {
    const v6 = createServer({ allowHalfOpen: true, pauseOnConnect: true }, onConnection);
    const bound = await new Promise<boolean>((resolve) => {
      v6.once('error', () => resolve(false));
      v6.listen({ host: '::', port, ipv6Only: true }, () => resolve(true));
    });
    if (bound) servers.push(v6);
  }
  return { servers, port };
}

export class CaptureListener {
  readonly #d: CaptureListenerDeps;
  #servers: Server[] = [];
  port = 0;

  constructor(deps: CaptureListenerDeps) {
    this.#d = deps;
  }

  async listen(listen: Listen): Promise<number> {
    const r = await listenCapture(listen, (s) => this.#accept(s));
    this.#servers = r.servers;
    this.port = r.port;
    return r.port;
  }

  close(): void {
    for (const s of this.#servers) s.close();
    this.#servers = [];
  }

  #accept(client: Socket): void {
    client.on('error', () => {});
    this.#route(client).catch((err: Error) => {
      this.#d.log.error({ err: err.message }, 'captured connection failed unexpectedly');
      if (!client.destroyed) client.resetAndDestroy();
    });
  }

  async #route(client: Socket): Promise<void> {
    const d = this.#d;
    const src: Party = { addr: `${client.remoteAddress}:${client.remotePort}` };
    const refuse = (reason: RefusalReason, why: string, dst?: string): void => {
      new ConnectionAccount(d, 'outbound', src, { addr: dst }, 'unknown').refused('NR', reason, why);
      client.resetAndDestroy();
    };
    const dst = originalDestination(client);
    if (!dst || (dst.port === this.port && dst.ip === client.localAddress)) {
      return refuse('not_redirected', 'connection was not redirected by the capture rules');
    }
    const from = await sourceWorkload(
      d.store,
      d.nodeName,
      client.remoteAddress ?? '',
      client.remotePort ?? 0,
    );
    if (from.workload) {
      d.log.debug(
        { src: src.addr, by: from.by, workload: from.workload.name, dst },
        'captured outbound connection',
      );
      d.outbound.handle(client, from.workload, { kind: 'address', ip: dst.ip, port: dst.port });
      return;
    }
    if (d.unenrolledSource === 'refuse') {
      return refuse('unknown_workload', from.reason, formatAuthority(dst.ip, dst.port));
    }
    // Not enrolled: carried to where it was going, untouched, outside the mesh.
    client.on('error', () => {});
    await d.outbound.passthrough(client, src, dst);
  }
}
