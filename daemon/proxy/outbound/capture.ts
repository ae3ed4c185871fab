// 15001: connections that iptables redirected from enrolled workloads. The original destination comes
// from the kernel (SO_ORIGINAL_DST), the source workload from the source address or owner uid.
import type { Socket } from 'node:net';
import { ConnectionRefusal, type RefusalKind } from '../../../lib/errors.js';
import type { Logger } from '../../../lib/log.js';
import { joinHostPort, socketAddress } from '../../../lib/net/hostport.js';
import { originalDestination } from '../../capture/native.js';
import { sourceWorkload } from '../../capture/source.js';
import type { Refusals } from '../../limits/refusal.js';
import type { Metrics } from '../../metrics/metrics.js';
import type { StateStore } from '../../state/store.js';
import { ConnectionAccount, type Party } from '../account.js';
import { ignoreError } from '../pipe.js';
import { RedirectListener } from '../redirect-listener.js';
import type { Outbound } from './outbound.js';

export interface CaptureListenerDeps {
  readonly outbound: Outbound;
  readonly store: StateStore;
  readonly nodeName: string;
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly refusals: Refusals;
  /** A connection from a source that is not enrolled: carried untouched, or refused. */
  readonly unenrolledSource: 'passthrough' | 'refuse';
}

export class CaptureListener extends RedirectListener {
  readonly #d: CaptureListenerDeps;

  constructor(deps: CaptureListenerDeps) {
    super();
    this.#d = deps;
  }

  protected override accept(client: Socket): void {
    client.on('error', ignoreError);
    this.#route(client).catch((err: Error) => {
      this.#d.log.error({ err: err.message }, 'captured connection failed unexpectedly');
      if (!client.destroyed) client.resetAndDestroy();
    });
  }

  async #route(client: Socket): Promise<void> {
    const d = this.#d;
    const src: Party = { addr: socketAddress(client.remoteAddress, client.remotePort) };
    const dst = originalDestination(client);
    if (!dst || (dst.port === this.port && dst.ip === client.localAddress)) {
      return this.#refuse(
        client,
        src,
        'not_redirected',
        'connection was not redirected by the capture rules',
      );
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
      return this.#refuse(client, src, 'unknown_workload', from.reason, joinHostPort(dst.ip, dst.port));
    }
    // Not enrolled: carried to where it was going, untouched, outside the mesh.
    client.on('error', ignoreError);
    await d.outbound.passthrough(client, src, dst);
  }

  #refuse(client: Socket, src: Party, kind: RefusalKind, why: string, dst?: string): void {
    new ConnectionAccount(this.#d, 'outbound', src, { addr: dst }, 'unknown').refused(
      new ConnectionRefusal(kind, why),
    );
    client.resetAndDestroy();
  }
}
