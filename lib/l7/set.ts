// The entries of one mesh, indexed the way the chain compiler looks them up: by kind, then by
// `<namespace>/<name>` (namespace `default` when an entry names none, as Consul CE has only that one).

import type {
  ConfigEntry,
  ProxyDefaults,
  ServiceDefaults,
  ServiceIntentions,
  ServiceResolver,
  ServiceRouter,
  ServiceSplitter,
} from './entries.js';

export interface EntrySet {
  proxyDefaults: ProxyDefaults | undefined;
  serviceDefaults: ReadonlyMap<string, ServiceDefaults>;
  routers: ReadonlyMap<string, ServiceRouter>;
  splitters: ReadonlyMap<string, ServiceSplitter>;
  resolvers: ReadonlyMap<string, ServiceResolver>;
  intentions: ReadonlyMap<string, ServiceIntentions>;
}

export const nsOf = (namespace: string | undefined): string =>
  namespace === undefined || namespace === '' ? 'default' : namespace;
export const keyOf = (name: string, namespace?: string): string => `${nsOf(namespace)}/${name}`;

/** Indexes entries; a later entry of the same kind and name replaces an earlier one (validateEntries refuses that). */
export function indexEntries(entries: readonly ConfigEntry[]): EntrySet {
  const serviceDefaults = new Map<string, ServiceDefaults>();
  const routers = new Map<string, ServiceRouter>();
  const splitters = new Map<string, ServiceSplitter>();
  const resolvers = new Map<string, ServiceResolver>();
  const intentions = new Map<string, ServiceIntentions>();
  let proxyDefaults: ProxyDefaults | undefined;
  for (const e of entries) {
    const k = keyOf(e.Name, e.Namespace);
    if (e.Kind === 'proxy-defaults') proxyDefaults = e;
    else if (e.Kind === 'service-defaults') serviceDefaults.set(k, e);
    else if (e.Kind === 'service-router') routers.set(k, e);
    else if (e.Kind === 'service-splitter') splitters.set(k, e);
    else if (e.Kind === 'service-resolver') resolvers.set(k, e);
    else intentions.set(k, e);
  }
  return { proxyDefaults, serviceDefaults, routers, splitters, resolvers, intentions };
}

/** A service's protocol as Consul derives it: its service-defaults, else proxy-defaults' Config.protocol, else tcp. */
export function protocolOf(set: EntrySet, service: string, namespace?: string): string {
  const own = set.serviceDefaults.get(keyOf(service, namespace))?.Protocol;
  if (own) return own;
  const global = set.proxyDefaults?.Config?.protocol;
  return typeof global === 'string' && global !== '' ? global : 'tcp';
}
