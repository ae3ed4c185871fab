// The mesh file's `configEntries`: Consul's config entries in Consul's own shape, validated by lib/l7 as
// Consul validates a write, each refusal turned into a path into the file (so that parse.ts can give its
// line) and shown as lib/l7 names it: `configEntries[0] service-router/api: Routes[1].Match.HTTP.PathPrefix`.
// `services.<svc>.protocol`, the older shorthand, becomes the service-defaults entry it stands for.
import { type ConfigEntry, entryLabel, validateEntry } from '../../l7/entries.js';
import { L7ConfigError } from '../../l7/errors.js';
import { checkGraph } from '../../l7/graph.js';
import { keyOf } from '../../l7/set.js';
import type { Service } from '../model.js';
import { Invalid } from './invalid.js';
import { DEFAULT_NAMESPACE, type PathSeg } from './schema.js';

export const CONFIG_ENTRIES_KEY = 'configEntries';
/** Meta of an entry that stands for `services.<svc>.protocol`; its value is that field's path. */
export const SHORTHAND_META = 'ambit-from';

const fold = (k: string): string => k.replaceAll('_', '').toLowerCase();

/**
 * lib/l7's field path (`Routes[1].Match.HTTP.PathPrefix`, `Subsets["v1"].Filter`) as steps into `raw`, with
 * the keys as the file spells them: lib/l7 matches keys regardless of case and underscores, as Consul's
 * decoder does, so `path_prefix` in the file is `PathPrefix` in the error. Steps past what exists are kept
 * as lib/l7 names them (the line is then the deepest one that exists).
 */
export function fieldSteps(raw: unknown, field: string): PathSeg[] {
  const steps: PathSeg[] = [];
  const re = /\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]|\.?([^.[\]]+)/g;
  let cur: unknown = raw;
  for (let m = re.exec(field); m !== null; m = re.exec(field)) {
    if (m[1] !== undefined) {
      const i = Number(m[1]);
      steps.push(i);
      cur = Array.isArray(cur) ? cur[i] : undefined;
      continue;
    }
    const want = m[2] !== undefined ? (JSON.parse(m[2]) as string) : m[3]!;
    let key = want;
    if (typeof cur === 'object' && cur !== null && !Array.isArray(cur)) {
      const keys = Object.keys(cur);
      // Map keys (Subsets, Meta) are the user's, and compared exactly; field names are folded.
      key = keys.includes(want)
        ? want
        : m[2] !== undefined
          ? want
          : (keys.find((k) => fold(k) === fold(want)) ?? want);
      cur = (cur as Record<string, unknown>)[key];
    } else cur = undefined;
    steps.push(key);
  }
  return steps;
}

/** An L7ConfigError about the entry at `configEntries[index]` as the file's refusal. */
function refusal(err: L7ConfigError, raw: unknown, index: number): Invalid {
  const label = err.entry ? ` ${err.entry}` : '';
  const at = `${CONFIG_ENTRIES_KEY}[${index}]${label}`;
  return new Invalid(
    [CONFIG_ENTRIES_KEY, index, ...fieldSteps(raw, err.field)],
    err.reason,
    err.field ? `${at}: ${err.field}` : at,
    err.reason.startsWith('unknown field'),
  );
}

/** The service-defaults entry that `services.<svc>.protocol` stands for. */
function shorthandEntry(s: Service): ConfigEntry {
  return {
    Kind: 'service-defaults',
    Name: s.name,
    ...(s.namespace === DEFAULT_NAMESPACE ? {} : { Namespace: s.namespace }),
    Protocol: s.protocol!,
    Meta: { [SHORTHAND_META]: `services.${s.name}.protocol` },
  };
}

/**
 * The file's entries, validated one by one and then together (with the entries the services' `protocol`
 * shorthand stands for, appended), as Consul validates a write against what it holds; throws Invalid.
 */
export function configEntriesOf(raw: unknown, services: readonly Service[]): ConfigEntry[] {
  const list: unknown = raw ?? [];
  if (!Array.isArray(list))
    throw new Invalid([CONFIG_ENTRIES_KEY], 'must be a list of config entries (Kind, Name, ...)');
  const entries = list.map((e, i) => {
    try {
      return validateEntry(e, '');
    } catch (err) {
      if (err instanceof L7ConfigError) throw refusal(err, e, i);
      throw err;
    }
  });
  const own = new Map(
    entries.filter((e) => e.Kind === 'service-defaults').map((e) => [keyOf(e.Name, e.Namespace), e]),
  );
  const shorthands: Service[] = [];
  for (const s of services) {
    if (s.protocol === undefined) continue;
    const entry = own.get(keyOf(s.name, s.namespace));
    if (entry === undefined) shorthands.push(s);
    else if ((entry.Protocol ?? 'tcp') !== s.protocol)
      throw new Invalid(
        ['services', s.name, 'protocol'],
        `says ${s.protocol} but ${entryLabel(entry)} in ${CONFIG_ENTRIES_KEY} says ` +
          `${entry.Protocol ?? 'nothing (tcp)'}: remove this deprecated shorthand and set Protocol there`,
      );
  }
  const all = [...entries, ...shorthands.map(shorthandEntry)];
  try {
    checkGraph(all, '');
  } catch (err) {
    if (!(err instanceof L7ConfigError)) throw err;
    const i = entries.findIndex((e) => entryLabel(e) === err.entry);
    if (i >= 0) throw refusal(err, list[i], i);
    const s = shorthands.find((x) => `service-defaults/${x.name}` === err.entry);
    if (s) throw new Invalid(['services', s.name, 'protocol'], `${err.entry}: ${err.reason}`);
    throw new Invalid([CONFIG_ENTRIES_KEY], err.message.replace(/^: /, ''));
  }
  return all;
}

/** Whether `e` stands for a services' `protocol` shorthand rather than an entry of the file's list. */
export const isShorthand = (e: ConfigEntry): boolean => e.Meta?.[SHORTHAND_META] !== undefined;
