// Consul's config entries as the daemon takes them: each one validated by lib/l7, and all of them together
// as Consul validates a write. Consul already accepted them, so a refusal here is an entry that Ambit reads
// differently from Consul (a newer field, a regex that RE2 refuses, a filter selector lib/l7 lacks): it is
// left out, the rest kept, and the caller logs it. Never throws for an entry.
import { type ConfigEntry, entryLabel, validateEntry } from '../l7/entries.js';
import { L7ConfigError } from '../l7/errors.js';
import { FAULT_META } from '../l7/fault.js';
import { checkGraph } from '../l7/graph.js';

export interface LenientEntries {
  entries: ConfigEntry[];
  refused: L7ConfigError[];
}

export function validateLeniently(raw: readonly unknown[], where: string): LenientEntries {
  const refused: L7ConfigError[] = [];
  let entries: ConfigEntry[] = [];
  for (const r of raw) {
    try {
      entries.push(validateEntry(r, where));
    } catch (err) {
      if (!(err instanceof L7ConfigError)) throw err;
      refused.push(err);
      // Consul never refuses a fault in a router's Meta: a typo there costs the faults, not the routes.
      const kept = err.field.startsWith(`Meta.${FAULT_META}`) ? withoutFaults(r) : undefined;
      if (kept) entries.push(validateEntry(kept, where));
    }
  }
  // Each round leaves out the entry the graph check names; bounded by the number of entries.
  for (let round = 0; round <= raw.length && entries.length > 0; round++) {
    try {
      checkGraph(entries, where);
      break;
    } catch (err) {
      if (!(err instanceof L7ConfigError)) throw err;
      refused.push(err);
      const i = entries.findIndex((e) => entryLabel(e) === err.entry);
      // An error naming no entry of the set cannot be pinned on one: none is used rather than a wrong set.
      if (i < 0) entries = [];
      else entries.splice(i, 1);
    }
  }
  return { entries, refused };
}

/** A router entry with its `ambit-fault...` Meta keys left out, or undefined if it is not one. */
function withoutFaults(raw: unknown): unknown {
  const e = raw as { Meta?: unknown };
  if (typeof e?.Meta !== 'object' || e.Meta === null) return undefined;
  const meta = Object.fromEntries(Object.entries(e.Meta).filter(([k]) => !k.startsWith(FAULT_META)));
  return { ...e, Meta: meta };
}
