// Service.protocol from the config entries, the one rule both backends apply (lib/l7's protocolOf: the
// service's service-defaults, else proxy-defaults' Config.protocol, else tcp), so that the data path reads
// the same protocol the chain compiler does.
import type { ConfigEntry } from '../l7/entries.js';
import { type EntrySet, indexEntries, protocolOf } from '../l7/set.js';
import { SERVICE_PROTOCOLS, type Service, type ServiceProtocol } from './model.js';

/**
 * The protocol of `service` by the entries; a value Consul accepts but no waypoint speaks (Consul takes any
 * string) is tcp, as Envoy treats it.
 */
export function serviceProtocol(set: EntrySet, name: string, namespace: string): ServiceProtocol {
  const p = protocolOf(set, name, namespace);
  return (SERVICE_PROTOCOLS as readonly string[]).includes(p) ? (p as ServiceProtocol) : 'tcp';
}

/** `services` with their protocol set from `entries`; tcp is left absent, as the model reads absent. */
export function withProtocols(services: readonly Service[], entries: readonly ConfigEntry[]): Service[] {
  const set = indexEntries(entries);
  return services.map((s) => {
    const { protocol: _old, ...rest } = s;
    const p = serviceProtocol(set, s.name, s.namespace);
    return p === 'tcp' ? rest : { ...rest, protocol: p };
  });
}
