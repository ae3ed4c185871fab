// A service-defaults entry's Meta in the mesh file says what `services.<svc>` says: `ambit-waypoint` (the
// waypoint the service opts into), `ambit-vips` (addresses, comma-separated) and `ambit-service-ports`
// (`80:8080,443`). These are the keys Consul mode reads (daemon/state/consul-source.ts), so one entry
// written by `ambit config write` means the same on either backend. Said in both places, they must agree:
// two answers to "which waypoint" would leave one of them silently unused.
import { isIP } from 'node:net';
import { META } from '../../consul/catalog.js';
import { type ConfigEntry, entryLabel } from '../../l7/entries.js';
import { keyOf } from '../../l7/set.js';
import { canonicalV6 } from '../../net/addresses.js';
import type { Service, ServicePort } from '../model.js';
import { CONFIG_ENTRIES_KEY, fieldSteps, isShorthand } from './entries.js';
import { Invalid } from './invalid.js';
import { DEFAULT_NAMESPACE, type PathSeg, SERVICE_NAME } from './schema.js';

/** What one entry's Meta says about its service; a field is absent when its key is. */
interface MetaSays {
  waypoint?: string;
  vips?: string[];
  ports?: ServicePort[];
}

type Field = keyof MetaSays;
const KEYS: Record<Field, string> = {
  waypoint: META.waypoint,
  vips: META.vips,
  ports: META.servicePorts,
};

/** Where a Meta key of `configEntries[index]` is, as a path into the file and as the error shows it. */
interface At {
  path: PathSeg[];
  display: string;
}

function metaAt(entry: ConfigEntry, raw: unknown, index: number, key: string): At {
  const field = `Meta[${JSON.stringify(key)}]`;
  return {
    path: [CONFIG_ENTRIES_KEY, index, ...fieldSteps(raw, field)],
    display: `${CONFIG_ENTRIES_KEY}[${index}] ${entryLabel(entry)}: ${field}`,
  };
}

const fail = (at: At, reason: string): never => {
  throw new Invalid(at.path, reason, at.display);
};

function parseVips(text: string, at: At): string[] {
  const out: string[] = [];
  for (const item of text.split(',').map((s) => s.trim())) {
    if (isIP(item) === 0) fail(at, `"${item}" is not an IPv4 or IPv6 address literal`);
    const ip = canonicalV6(item);
    if (out.includes(ip)) fail(at, `lists ${item} twice`);
    out.push(ip);
  }
  return out;
}

function parsePorts(text: string, at: At): ServicePort[] {
  const out: ServicePort[] = [];
  const isPort = (s: string | undefined): boolean =>
    s !== undefined && /^\d{1,5}$/.test(s) && Number(s) >= 1 && Number(s) <= 65535;
  for (const item of text.split(',').map((s) => s.trim())) {
    const [p, t, ...rest] = item.split(':');
    if (!isPort(p) || (t !== undefined && !isPort(t)) || rest.length)
      fail(at, `"${item}" is not port or port:targetPort (ports between 1 and 65535)`);
    const port = Number(p);
    if (out.some((x) => x.port === port)) fail(at, `lists port ${port} twice`);
    out.push({ port, targetPort: t === undefined ? port : Number(t) });
  }
  return out;
}

function metaSays(entry: ConfigEntry, raw: unknown, index: number): MetaSays {
  const meta = entry.Meta ?? {};
  const at = (f: Field): At => metaAt(entry, raw, index, KEYS[f]);
  const out: MetaSays = {};
  const wp = meta[KEYS.waypoint];
  if (wp !== undefined) {
    if (!SERVICE_NAME.test(wp))
      fail(at('waypoint'), `waypoint service name "${wp}" must use only letters, digits, "-" and "_"`);
    out.waypoint = wp;
  }
  const vips = meta[KEYS.vips];
  if (vips !== undefined) out.vips = parseVips(vips, at('vips'));
  const ports = meta[KEYS.ports];
  if (ports !== undefined) out.ports = parsePorts(ports, at('ports'));
  return out;
}

const sameVips = (a: readonly string[], b: readonly string[]): boolean =>
  a.length === b.length && a.every((x) => b.includes(x));
const samePorts = (a: readonly ServicePort[], b: readonly ServicePort[]): boolean =>
  a.length === b.length && a.every((x) => b.some((y) => y.port === x.port && y.targetPort === x.targetPort));
const showPorts = (ps: readonly ServicePort[]): string =>
  ps.map((p) => (p.port === p.targetPort ? `${p.port}` : `${p.port}:${p.targetPort}`)).join(',');

/**
 * `services` with what the service-defaults entries' Meta says merged in (a service only an entry names is
 * added); throws Invalid naming both fields when `services.<svc>` says otherwise. `rawEntries` is the
 * file's `configEntries` list, whose positions are those of the first entries of `entries`.
 */
export function withServiceMeta(
  services: readonly Service[],
  entries: readonly ConfigEntry[],
  rawEntries: unknown,
): Service[] {
  const out = [...services];
  const raws: unknown[] = Array.isArray(rawEntries) ? rawEntries : [];
  entries.forEach((entry, index) => {
    if (entry.Kind !== 'service-defaults' || isShorthand(entry)) return;
    const says = metaSays(entry, raws[index], index);
    if (Object.keys(says).length === 0) return;
    const namespace = entry.Namespace ?? DEFAULT_NAMESPACE;
    const i = out.findIndex((s) => keyOf(s.name, s.namespace) === keyOf(entry.Name, namespace));
    const own = out[i];
    const conflict = (f: Field, file: string, meta: string): never =>
      fail(
        { path: ['services', entry.Name, f], display: `services.${entry.Name}.${f}` },
        `says ${file} but ${metaAt(entry, raws[index], index, KEYS[f]).display} says ${meta}: ` +
          'set it in one place',
      );
    if (own?.waypoint !== undefined && says.waypoint !== undefined && own.waypoint !== says.waypoint)
      conflict('waypoint', own.waypoint, says.waypoint);
    if (own?.vips.length && says.vips && !sameVips(own.vips, says.vips))
      conflict('vips', own.vips.join(','), says.vips.join(','));
    if (own?.ports.length && says.ports && !samePorts(own.ports, says.ports))
      conflict('ports', showPorts(own.ports), showPorts(says.ports));
    const merged: Service = {
      ...(own ?? { name: entry.Name, namespace }),
      vips: own?.vips.length ? own.vips : (says.vips ?? []),
      ports: own?.ports.length ? own.ports : (says.ports ?? []),
      waypoint: own?.waypoint ?? says.waypoint,
    };
    if (merged.vips.length > 0 && merged.ports.length === 0)
      fail(
        metaAt(entry, raws[index], index, KEYS.vips),
        `a service with vips must list the ports its vips accept (${KEYS.ports}, or services.${entry.Name}.ports)`,
      );
    if (own) out[i] = merged;
    else out.push(merged);
  });
  return out;
}
