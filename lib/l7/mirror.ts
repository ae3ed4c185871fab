// Request mirroring on a service-router's routes, Istio's `mirror` and `mirrorPercentage`, written where
// fault injection is (fault.ts) and for the same reason: Consul has no field for it and refuses unknown
// ones, so the policy is JSON in the router entry's Meta. `ambit-mirror` applies to every request the
// router routes (each route and the catch-all); `ambit-mirror-<i>` to Routes[i] alone, in place of
// `ambit-mirror`. The same entry, Meta and all, goes in the mesh file's configEntries. Pure: parsing, its
// refusals, and one request's draw from an injected RNG.
import { type ChainTarget, targetId } from './chain.js';
import { hits, percent } from './fault.js';
import type { Random } from './lb.js';
import { type Obj, type Reader, join } from './read.js';
import { type RoutePolicies, policyFor, routeMeta } from './route-meta.js';
import { type EntrySet, keyOf } from './set.js';

/** The Meta key of the mirror for every route of the router. */
export const MIRROR_META = 'ambit-mirror';

export interface MirrorPolicy {
  /** The service the copy goes to, in `namespace` (the router's own when unset). */
  readonly service: string;
  readonly namespace: string | undefined;
  /** Its subset ('' for the resolver's DefaultSubset, else every endpoint), as a route Destination's. */
  readonly subset: string;
  /** The share of the route's requests copied, 0 to 100 with fractions; unset: 100. */
  readonly percent: number;
}

/** A router's mirrors: per route index, and the one for the routes that have none of their own. */
export type RouterMirrors = RoutePolicies<MirrorPolicy>;

const MIRRORS = routeMeta<MirrorPolicy>({
  key: MIRROR_META,
  noun: 'mirror',
  fields: ['Service', 'ServiceSubset', 'Namespace', 'Percent'],
  parse: parseMirror,
});

/** The mirrors of a router entry, or undefined when its Meta names none (route-meta.ts). */
export const routerMirrors = MIRRORS.read;

/** One policy from its Meta value's object of Service, ServiceSubset, Namespace and Percent. */
function parseMirror(r: Reader, o: Obj, path: string): MirrorPolicy {
  const service = r.nonEmpty(o, 'Service', path) ?? r.fail(join(path, 'Service'), 'is required');
  const subset = r.str(o, 'ServiceSubset', path) ?? '';
  if (subset !== '' && !/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(subset))
    r.fail(join(path, 'ServiceSubset'), `"${subset}" is not a valid subset name`);
  return { service, namespace: r.nonEmpty(o, 'Namespace', path), subset, percent: percent(r, o, path) };
}

/** The policy for route `index` of the router (`implicit`: the catch-all, which has no key of its own). */
export const mirrorFor: (
  m: RouterMirrors,
  index: number | undefined,
  implicit: boolean,
) => MirrorPolicy | undefined = policyFor;

/** Whether one request is copied: drawn from `random` in [0, 1); 100 always, 0 never. */
export const drawMirror = (p: MirrorPolicy, random: Random): boolean => hits(p.percent, random);

/**
 * The copy's Host (or :authority) as Envoy's shadowAppendedHost makes it: `-shadow` after the host, ahead
 * of a port (`api:8080` is `api-shadow:8080`), so that the mirror's logs tell copies apart.
 */
export function shadowHost(host: string): string {
  const m = /^(\[[^\]]*\]|[^:]*)(:\d*)?$/.exec(host);
  if (!m) return `${host}-shadow`;
  return `${m[1]}-shadow${m[2] ?? ''}`;
}

/** The mirrors of a router entry as the waypoint reads them: parsed once per entry object. */
export const mirrorsOf = MIRRORS.of;

/**
 * The mirror policy a request's route has, and the Meta key that sets it: the chain's router's
 * `ambit-mirror-<index>`, else its `ambit-mirror`; undefined without a router (route index) or a mirror.
 */
export const routeMirror = MIRRORS.route;

/**
 * Where the copies go: the mirror's service in its namespace (the router's when unset), its subset, else
 * its resolver's DefaultSubset, as a route Destination's; `why` when the resolver has no such subset.
 */
export function mirrorTarget(
  set: EntrySet,
  policy: MirrorPolicy,
  routerNamespace: string,
  datacenter: string,
): { service: { name: string; namespace: string }; target?: ChainTarget; why?: string } {
  const namespace = policy.namespace ?? routerNamespace;
  const service = { name: policy.service, namespace };
  const resolver = set.resolvers.get(keyOf(policy.service, namespace));
  const subset = policy.subset || resolver?.DefaultSubset || '';
  const def = subset ? resolver?.Subsets?.[subset] : undefined;
  if (subset && !def) return { service, why: `service-resolver/${policy.service} has no subset ${subset}` };
  const want = {
    Service: policy.service,
    ServiceSubset: subset,
    Namespace: namespace,
    Partition: 'default',
    Datacenter: datacenter,
  };
  return { service, target: { ID: targetId(want), ...want, Subset: def ?? {} } };
}
