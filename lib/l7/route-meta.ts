// A per-route policy written in a service-router's Meta, the one shape fault injection (fault.ts) and
// mirroring (mirror.ts) share: Consul has no field for either and refuses unknown ones, so each is JSON
// under `<key>` (every route the router routes, the catch-all included) or `<key>-<i>` (Routes[i] alone,
// in place of `<key>`). One reading of the keys, one lookup by route, one parse per entry object.
import type { CompiledChain } from './chain.js';
import type { ServiceRouter } from './entries.js';
import { type Obj, Reader } from './read.js';
import { type EntrySet, keyOf } from './set.js';

/** A router's policies of one kind: per route index, and the one for the routes that have none of their own. */
export interface RoutePolicies<P> {
  readonly all: P | undefined;
  readonly routes: ReadonlyMap<number, P>;
}

/**
 * One kind of policy: its Meta key, the noun its errors use, the fields of its JSON object, and the
 * parser of one object (unknown fields already refused).
 */
export interface RouteMetaKind<P> {
  readonly key: string;
  readonly noun: string;
  readonly fields: readonly string[];
  readonly parse: (r: Reader, o: Obj, path: string) => P;
}

/** One Meta value: a JSON object of the kind's fields, parsed. */
function parseValue<P>(kind: RouteMetaKind<P>, r: Reader, text: string, path: string): P {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    r.fail(path, `is not JSON: ${(err as Error).message}`);
  }
  return kind.parse(r, r.obj(raw, path, kind.fields), path);
}

/**
 * The policies of a router entry, or undefined when its Meta names none (the cost of none: one scan of
 * its Meta keys, once per entry). Throws L7ConfigError naming the entry and `Meta.<key>.<field>`.
 */
function readRouteMeta<P>(
  kind: RouteMetaKind<P>,
  r: Reader,
  router: Pick<ServiceRouter, 'Meta' | 'Routes'>,
): RoutePolicies<P> | undefined {
  const meta = router.Meta;
  if (!meta) return undefined;
  let all: P | undefined;
  const routes = new Map<number, P>();
  const count = router.Routes?.length ?? 0;
  const routeKey = new RegExp(`^${kind.key}-(\\d+)$`);
  for (const [key, value] of Object.entries(meta)) {
    if (!key.startsWith(kind.key)) continue;
    const path = `Meta.${key}`;
    if (key === kind.key) {
      all = parseValue(kind, r, value, path);
      continue;
    }
    const m = routeKey.exec(key);
    if (!m) r.fail(path, `is not a ${kind.noun} key: ${kind.key} (every route) or ${kind.key}-<route index>`);
    const i = Number(m[1]);
    if (String(i) !== m[1]) r.fail(path, 'route index must be written without leading zeros');
    if (i >= count) r.fail(path, `names Routes[${i}], and the router has ${count} route(s)`);
    routes.set(i, parseValue(kind, r, value, path));
  }
  if (all === undefined && routes.size === 0) return undefined;
  return { all, routes };
}

/** The policy for route `index` of the router (`implicit`: the catch-all, which has no key of its own). */
export function policyFor<P>(
  p: RoutePolicies<P>,
  index: number | undefined,
  implicit: boolean,
): P | undefined {
  if (index !== undefined && !implicit) return p.routes.get(index) ?? p.all;
  return p.all;
}

/** What a kind of route Meta policy gives its users, made once per kind by routeMeta. */
export interface RouteMeta<P> {
  /** The policies of a router entry, checked: throws L7ConfigError naming the entry and the Meta field. */
  readonly read: (r: Reader, router: Pick<ServiceRouter, 'Meta' | 'Routes'>) => RoutePolicies<P> | undefined;
  /** The policies of a router entry as the waypoint reads them: parsed once per entry object. */
  readonly of: (router: ServiceRouter) => RoutePolicies<P> | undefined;
  /**
   * The policy a request's route meets, and the Meta key that sets it: the chain's router's
   * `<key>-<index>`, else its `<key>`; undefined without a router (route index) or a policy.
   */
  readonly route: (
    set: EntrySet,
    chain: Pick<CompiledChain, 'ServiceName' | 'Namespace'>,
    index: number | undefined,
    implicit: boolean,
  ) => { key: string; policy: P } | undefined;
}

export function routeMeta<P>(kind: RouteMetaKind<P>): RouteMeta<P> {
  const read = (r: Reader, router: Pick<ServiceRouter, 'Meta' | 'Routes'>): RoutePolicies<P> | undefined =>
    readRouteMeta(kind, r, router);
  const cache = new WeakMap<object, RoutePolicies<P> | null>();
  const of = (router: ServiceRouter): RoutePolicies<P> | undefined => {
    let p = cache.get(router);
    if (p === undefined) {
      // Validated when the entry was read: a failure here is an entry that bypassed the reader.
      try {
        p = read(new Reader('waypoint', `service-router/${router.Name}`), router) ?? null;
      } catch {
        p = null;
      }
      cache.set(router, p);
    }
    return p ?? undefined;
  };
  const route: RouteMeta<P>['route'] = (set, chain, index, implicit) => {
    if (index === undefined || set.routers.size === 0) return undefined;
    const router = set.routers.get(keyOf(chain.ServiceName, chain.Namespace));
    const policies = router && of(router);
    const policy = policies && policyFor(policies, index, implicit);
    if (!policy) return undefined;
    const own = !implicit && policies.routes.get(index) === policy;
    return { key: own ? `${kind.key}-${index}` : kind.key, policy };
  };
  return { read, of, route };
}
