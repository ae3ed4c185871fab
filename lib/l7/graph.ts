// The rules Consul applies to a write against the entries it already holds (its
// validateProposedConfigEntryInGraph): each entry once, routers, splitters and L7 intentions only on
// http-like services, subsets of other services that exist, and every chain compiling.

import { compileChain } from './chain.js';
import { type ConfigEntry, HTTP_LIKE, entryLabel } from './entries.js';
import { L7ConfigError } from './errors.js';
import { type EntrySet, indexEntries, keyOf, protocolOf } from './set.js';

export function checkGraph(entries: readonly ConfigEntry[], where: string): EntrySet {
  const seen = new Set<string>();
  for (const e of entries) {
    const k = `${e.Kind}/${keyOf(e.Name, e.Namespace)}`;
    if (seen.has(k)) throw new L7ConfigError(where, entryLabel(e), '', 'defined more than once');
    seen.add(k);
  }
  const set = indexEntries(entries);
  for (const e of entries) {
    const fail = (field: string, reason: string): never => {
      throw new L7ConfigError(where, entryLabel(e), field, reason);
    };
    const needHttp = (svc: string, field: string, what: string): void => {
      const p = protocolOf(set, svc, e.Namespace);
      if (!HTTP_LIKE.includes(p))
        fail(
          field,
          `discovery chain "${svc}" uses a protocol "${p}" that does not permit advanced routing or splitting behavior: ${what} needs http, http2 or grpc (set Protocol in service-defaults/${svc})`,
        );
    };
    const needSubset = (svc: string, subset: string | undefined, field: string): void => {
      const res = set.resolvers.get(keyOf(svc, e.Namespace));
      // A resolver that redirects replaces the whole target: the chain compile checks where it lands.
      if (subset === undefined || res?.Redirect) return;
      if (res?.Subsets?.[subset] === undefined)
        fail(
          field,
          `service "${svc}" does not have a subset named "${subset}" (no service-resolver defines it)`,
        );
    };
    if (e.Kind === 'service-router') {
      needHttp(e.Name, '', 'a service-router');
      e.Routes.forEach((r, i) => {
        const d = r.Destination;
        if (!d) return;
        const p = `Routes[${i}].Destination`;
        if (d.Service) needHttp(d.Service, `${p}.Service`, 'a route destination');
        needSubset(d.Service ?? e.Name, d.ServiceSubset, `${p}.ServiceSubset`);
      });
    } else if (e.Kind === 'service-splitter') {
      needHttp(e.Name, '', 'a service-splitter');
      e.Splits.forEach((s, i) => {
        if (s.Service) needHttp(s.Service, `Splits[${i}].Service`, 'a split');
        needSubset(s.Service ?? e.Name, s.ServiceSubset, `Splits[${i}].ServiceSubset`);
      });
    } else if (e.Kind === 'service-resolver') {
      const r = e.Redirect;
      if (r?.Service && r.Service !== e.Name && !r.Peer)
        needSubset(r.Service, r.ServiceSubset, 'Redirect.ServiceSubset');
      for (const [k, f] of Object.entries(e.Failover ?? {})) {
        const p = `Failover[${JSON.stringify(k)}]`;
        if (f.Service && f.Service !== e.Name) needSubset(f.Service, f.ServiceSubset, `${p}.ServiceSubset`);
        f.Targets?.forEach((t, i) => {
          if (t.Service && t.Service !== e.Name && !t.Peer)
            needSubset(t.Service, t.ServiceSubset, `${p}.Targets[${i}].ServiceSubset`);
        });
      }
    } else if (e.Kind === 'service-intentions' && e.Name !== '*') {
      e.Sources.forEach((s, i) => {
        if (s.Permissions?.length)
          needHttp(e.Name, `Sources[${i}].Permissions`, 'an intention with Permissions');
      });
    }
  }
  // Redirect loops, splits that loop, and chains mixing protocols only show when a chain is compiled.
  const services = new Set<string>();
  for (const e of entries)
    if (e.Kind === 'service-router' || e.Kind === 'service-splitter' || e.Kind === 'service-resolver')
      services.add(keyOf(e.Name, e.Namespace));
  for (const k of services) {
    const [namespace, ...rest] = k.split('/');
    compileChain(set, rest.join('/'), { namespace, where });
  }
  return set;
}
