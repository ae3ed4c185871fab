// Which source address the destination daemon connects to a workload from: the client workload's own (as
// ztunnel does, so that the workload's logs and its own access rules see the real client), or, whenever that
// cannot be trusted or cannot work, the daemon's own (the kernel's choice) as before.
import { isIP } from 'node:net';
import type { Workload } from '../../../lib/mesh/model.js';
import { canonicalIp, isLoopback, isUnspecified } from '../../../lib/net/addresses.js';

export type Family = 4 | 6;

/** How the source workload is proven: the workloads at an address, and each one's SPIFFE identity. */
export interface Catalog {
  readonly workloadsByIp: (ip: string) => readonly Workload[];
  readonly identityOf: (w: Workload) => string;
}

/**
 * The source workload: one at the address `forwarded: for=` claims whose identity is the one the peer proved
 * in its certificate; undefined when there is none. The header alone is never trusted.
 */
export function provenSource(
  catalog: Catalog,
  principal: string,
  claimed: string | undefined,
): Workload | undefined {
  if (claimed) {
    for (const w of catalog.workloadsByIp(claimed)) if (catalog.identityOf(w) === principal) return w;
  }
  return undefined;
}

export interface SourceChoiceInput {
  /** The address in the CONNECT's `forwarded: for=` (what the client claims). */
  readonly claimed: string | undefined;
  /** The peer's proven SPIFFE identity (its certificate's URI SAN). */
  readonly principal: string;
  readonly catalog: Catalog;
  /** The address the connection goes to, and the workload there. */
  readonly target: string;
  readonly destination: Workload;
  /** The daemon's socket mark: undefined when capture is off. */
  readonly mark: number | undefined;
  /** The captureOriginalSource setting. */
  readonly enabled: boolean;
  /** The families whose reply routing was found installed (and transparent sockets allowed). */
  readonly routed: ReadonlySet<Family>;
}

export type SourceChoice =
  | { readonly from: string; readonly reason: 'original' }
  | {
      readonly from: undefined;
      readonly reason:
        | 'off'
        | 'no_capture'
        | 'unproven'
        | 'family'
        | 'host_network'
        | 'no_routing'
        | 'unroutable'
        | 'same_workload';
    };

const own = <R extends Exclude<SourceChoice['reason'], 'original'>>(reason: R) =>
  ({ from: undefined, reason }) as const;

export function chooseSource(i: SourceChoiceInput): SourceChoice {
  if (!i.enabled) return own('off');
  // Without the mark the capture rules would take the connection for plaintext inbound, and there are no
  // capture rules to route replies back either.
  if (i.mark === undefined) return own('no_capture');
  const proven = provenSource(i.catalog, i.principal, i.claimed);
  if (i.claimed === undefined || proven === undefined) return own('unproven');
  const claimed = canonicalIp(i.claimed);
  const family = isIP(claimed);
  const targetFamily = isIP(canonicalIp(i.target));
  if (family === 0 || family !== targetFamily) return own('family');
  // A workload on the host's network answers from this host itself (OUTPUT): its replies never pass
  // PREROUTING, where the reply mark is set, and would leave for the client's host.
  if (i.destination.uid !== undefined) return own('host_network');
  // Loopback or unspecified as a source on the wire is a martian; the workload's own address (a call to
  // itself through the mesh) is one too, inside its namespace.
  if (isLoopback(claimed) || isUnspecified(claimed)) return own('unroutable');
  if (i.destination.addresses.some((a) => canonicalIp(a) === claimed)) return own('same_workload');
  if (!i.routed.has(family as Family)) return own('no_routing');
  return { from: claimed, reason: 'original' };
}
