// The daemon's own listeners, as a target: a CONNECT to one would be a self-call, or a way into the admin
// API through the tunnel, whatever the mesh says is there.
import type { DaemonConfig } from '../lib/config.js';
import { type LocalAddresses, bindAccepts } from '../lib/net/addresses.js';

export interface BoundPorts {
  tunnel: number;
  admin: number;
  metrics: number;
  ready: number;
  /** Capture listeners (15001, 15006); 0 when capture is off. */
  outbound: number;
  plaintext: number;
}

type Binds = Pick<DaemonConfig, 'tunnel' | 'admin' | 'metrics' | 'ready' | 'outbound' | 'inboundPlaintext'>;

/** Every listener the daemon holds, as bind host and port (port 0: not listening). */
export const ownListeners = (
  config: Binds,
  ports: BoundPorts,
  upstreams: readonly [string, number][],
): [string, number][] => [
  [config.tunnel.host, ports.tunnel],
  [config.admin.host, ports.admin],
  [config.metrics.host, ports.metrics],
  [config.ready.host, ports.ready],
  [config.outbound.host, ports.outbound],
  [config.inboundPlaintext.host, ports.plaintext],
  ...upstreams,
];

/** Whether ip:port reaches one of `bound` (tunnel, capture, admin, metrics, ready, explicit upstreams). */
export function reachesOwnListener(
  bound: readonly [string, number][],
  ip: string,
  port: number,
  local: LocalAddresses,
): boolean {
  for (const [host, p] of bound) if (p === port && p !== 0 && bindAccepts(host, ip, local)) return true;
  return false;
}
