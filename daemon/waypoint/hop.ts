// The waypoint's own hop: a new HBONE CONNECT to the chosen endpoint's node, from the waypoint's identity,
// `:authority` the endpoint's `ip:targetPort`, the client's identity in x-forwarded-client-cert.
import type { Workload } from '../../lib/mesh/model.js';
import type { H2Headers } from '../proxy/h2/stream.js';
import { newTraceparent } from '../proxy/hbone.js';
import { type OutboundPlan, type OutboundState, planHop } from '../proxy/outbound/plan.js';
import type { Pool, TunnelResponse } from '../proxy/pool/pool.js';
import { XFCC, formatXfcc } from './xfcc.js';

export interface HopDeps {
  readonly store: OutboundState;
  readonly pool: Pool;
  readonly identityOf: (w: Pick<Workload, 'namespace' | 'service'>) => string;
  /** The waypoint's own SPIFFE ID. */
  readonly self: string;
}

/** Who the hop is for: the client's proven identity and what it said of its address. */
export interface HopClient {
  readonly principal: string;
  /** The `forwarded` header the client's daemon sent, handed on as it is. */
  readonly forwarded: string | undefined;
  readonly traceparent: string | undefined;
}

export type HopResult =
  | { readonly kind: 'open'; readonly response: TunnelResponse; readonly authority: string }
  | { readonly kind: 'skip'; readonly why: string };

/** Opens the CONNECT to `ep` and waits for its answer; a tunnel that cannot be opened rejects. */
export async function openHop(
  d: HopDeps,
  plan: OutboundPlan,
  ep: Workload,
  client: HopClient,
): Promise<HopResult> {
  const hop = planHop(d.store, plan, ep, d.self, d.identityOf);
  if (hop.kind === 'skip') return { kind: 'skip', why: hop.why };
  const headers: H2Headers = {
    ':method': 'CONNECT',
    ':authority': hop.authority,
    traceparent: client.traceparent ?? newTraceparent(),
    [XFCC]: formatXfcc(d.self, client.principal),
  };
  if (client.forwarded) headers.forwarded = client.forwarded;
  const response = await d.pool.connect(hop.session, headers);
  return { kind: 'open', response, authority: hop.authority };
}
