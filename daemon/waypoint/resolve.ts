// Which service a CONNECT to the waypoint is for: its `:authority` is the client's original target (a
// service's `VIP:port`, a workload's `ip:port`, or `<service>.<namespace>[:<port>]` for an explicit
// upstream), resolved as the source would have, and only a service whose waypoint this is.
import { ConnectionRefusal } from '../../lib/errors.js';
import { splitHostPort } from '../../lib/net/hostport.js';
import { parseAuthority } from '../proxy/hbone.js';
import {
  type OutboundPlan,
  type OutboundState,
  type OutboundTarget,
  type RoutedService,
  planOutbound,
} from '../proxy/outbound/plan.js';

const NAME =
  /^([A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)\.([A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)$/;

/** The target an authority names; undefined when it is none of the three forms. */
export function targetOfAuthority(authority: string | undefined): OutboundTarget | undefined {
  if (!authority) return undefined;
  const hp = parseAuthority(authority);
  if (hp) return { kind: 'address', ip: hp.ip, port: hp.port };
  const split = splitHostPort(authority);
  const host = split?.host ?? authority;
  const portText = split?.port;
  if (portText !== undefined && !/^\d{1,5}$/.test(portText)) return undefined;
  const port = portText === undefined ? undefined : Number(portText);
  if (port !== undefined && (port < 1 || port > 65535)) return undefined;
  const m = NAME.exec(host);
  if (!m) return undefined;
  return { kind: 'service', service: m[1]!, namespace: m[2]!, port };
}

export type Resolved =
  | { readonly ok: true; readonly plan: OutboundPlan }
  | { readonly ok: false; readonly refusal: ConnectionRefusal; readonly service?: RoutedService };

/** The plan for `authority`, if it is a service of the waypoint `self` (namespace/name) that has endpoints. */
export function resolveForWaypoint(
  state: OutboundState,
  self: RoutedService,
  authority: string | undefined,
): Resolved {
  const target = targetOfAuthority(authority);
  if (!target) {
    const why = `malformed :authority ${JSON.stringify(authority)}`;
    return { ok: false, refusal: new ConnectionRefusal('bad_request', why) };
  }
  const route = planOutbound(state, target);
  if (route.kind === 'passthrough') {
    const why = `${authority} is no service of the mesh`;
    return { ok: false, refusal: new ConnectionRefusal('unknown_workload', why) };
  }
  const svc = state.service(route.service.namespace, route.service.name);
  if (svc?.waypoint !== self.name || route.service.namespace !== self.namespace) {
    const why = `service ${route.service.name} does not have waypoint ${self.name}`;
    return { ok: false, refusal: new ConnectionRefusal('unknown_workload', why), service: route.service };
  }
  if (route.kind === 'no_endpoint') {
    return { ok: false, refusal: new ConnectionRefusal('no_endpoint', route.why), service: route.service };
  }
  return { ok: true, plan: route };
}
