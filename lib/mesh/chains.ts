// The compiled discovery chain of every service that has a waypoint, for `GET /config_dump`: what the
// waypoint routes by, shown from the entries in force on every daemon (the same model on each).
import { type CompiledChain, compileChain } from '../l7/chain.js';
import { L7ConfigError } from '../l7/errors.js';
import { indexEntries } from '../l7/set.js';
import type { Mesh } from './model.js';

/**
 * `<namespace>/<service>` → its chain, or the error that kept it from compiling (entries are validated),
 * compiled for `datacenter` as the waypoint's router compiles it.
 */
export function waypointChains(
  mesh: Mesh,
  datacenter = 'dc1',
): Record<string, CompiledChain | { error: string }> {
  const set = indexEntries(mesh.configEntries ?? []);
  const out: Record<string, CompiledChain | { error: string }> = {};
  for (const s of mesh.services) {
    if (s.waypoint === undefined) continue;
    try {
      out[`${s.namespace}/${s.name}`] = compileChain(set, s.name, {
        namespace: s.namespace,
        datacenter,
        where: 'mesh',
      });
    } catch (err) {
      if (!(err instanceof L7ConfigError)) throw err;
      out[`${s.namespace}/${s.name}`] = { error: err.message };
    }
  }
  return out;
}
