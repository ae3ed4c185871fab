// Where `ambit config` keeps config entries: the mesh file's `configEntries` (through the locked,
// comment-keeping editor) or Consul's /v1/config. Both are checked the same way before anything is
// written: the entries in force with the change applied must pass lib/l7 as Consul checks a write.
import { readFile } from 'node:fs/promises';
import type { ConsulClient } from '../lib/consul/client.js';
import { validateLeniently } from '../lib/consul/config-entries.js';
import { ConfigError, NotFoundError } from '../lib/errors.js';
import { type ConfigEntry, KINDS, type Kind, entryLabel } from '../lib/l7/entries.js';
import { checkGraph } from '../lib/l7/graph.js';
import {
  type EntryRef,
  configEntriesIn,
  editMeshFile,
  entryRefOf,
  removeConfigEntry,
  sameEntry,
  setConfigEntry,
} from '../lib/mesh/edit.js';
import { SHORTHAND_META, isShorthand } from '../lib/mesh/file/entries.js';
import { parseMeshDocument } from '../lib/mesh/file/parse.js';
import type { Mesh } from '../lib/mesh/model.js';
import type { FileEntry } from './entries-file.js';

export interface EntryBackend {
  /** Names the backend in errors: the mesh file, or `consul`. */
  readonly where: string;
  /** The entries in force, as lib/l7 reads them (for the check of a change). */
  current(): Promise<ConfigEntry[]>;
  /** The entries as stored (Consul's shape), of one kind or all. */
  list(kind?: Kind): Promise<Record<string, unknown>[]>;
  read(ref: EntryRef): Promise<Record<string, unknown> | undefined>;
  /** Writes the entries in the given order; nothing is written when the first fails. */
  write(entries: readonly FileEntry[]): Promise<void>;
  delete(ref: EntryRef): Promise<void>;
  close(): void;
}

const refOf = (e: ConfigEntry): EntryRef => ({ kind: e.Kind, name: e.Name, namespace: e.Namespace });
export const labelOf = (r: EntryRef): string => `${r.kind}/${r.name}`;

/**
 * Checks `current` with `writes` replacing (or joining) the entries they name and `deletes` gone, as Consul
 * checks a write against what it holds; throws the first L7ConfigError.
 */
export function checkChange(
  current: readonly ConfigEntry[],
  writes: readonly ConfigEntry[],
  deletes: readonly EntryRef[],
  where: string,
): void {
  const gone = [...writes.map(refOf), ...deletes];
  const kept = current.filter((e) => !gone.some((r) => sameEntry(refOf(e), r)));
  checkGraph([...kept, ...writes], where);
}

/**
 * Writes that depend on others come after them, so that Consul, which checks each write against what it
 * already holds, accepts a file that defines a service's protocol and its router together.
 */
const WRITE_ORDER: readonly Kind[] = [
  'proxy-defaults',
  'service-defaults',
  'service-resolver',
  'service-splitter',
  'service-router',
  'service-intentions',
];
export const inWriteOrder = (entries: readonly FileEntry[]): FileEntry[] =>
  [...entries].sort((a, b) => WRITE_ORDER.indexOf(a.entry.Kind) - WRITE_ORDER.indexOf(b.entry.Kind));

// ---- the mesh file

export class MeshFileEntries implements EntryBackend {
  constructor(
    readonly where: string,
    private readonly readMesh: () => Promise<Mesh>,
  ) {}

  async current(): Promise<ConfigEntry[]> {
    return [...((await this.readMesh()).configEntries ?? [])];
  }

  /** The file's own entries as written, then those its `protocol` shorthands stand for (marked in Meta). */
  async list(kind?: Kind): Promise<Record<string, unknown>[]> {
    let text = '';
    try {
      text = await readFile(this.where, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    const own = configEntriesIn(parseMeshDocument(text, this.where).doc) as Record<string, unknown>[];
    const short = (await this.current()).filter(isShorthand) as unknown as Record<string, unknown>[];
    return [...own, ...short].filter((e) => kind === undefined || entryRefOf(e)?.kind === kind);
  }

  async read(ref: EntryRef): Promise<Record<string, unknown> | undefined> {
    return (await this.list(ref.kind as Kind)).find((e) => {
      const r = entryRefOf(e);
      return r !== undefined && sameEntry(r, ref);
    });
  }

  async write(entries: readonly FileEntry[]): Promise<void> {
    await editMeshFile(this.where, (doc) => {
      for (const e of entries) setConfigEntry(doc, e.raw);
    });
  }

  async delete(ref: EntryRef): Promise<void> {
    const e = await this.read(ref);
    const from = e?.Meta && (e.Meta as Record<string, string>)[SHORTHAND_META];
    if (from)
      throw new ConfigError(
        `${labelOf(ref)} stands for ${from} in the mesh file: remove that field instead`,
        {
          file: this.where,
        },
      );
    await editMeshFile(this.where, (doc) => {
      if (!removeConfigEntry(doc, ref)) throw new NotFoundError(`config entry ${labelOf(ref)}`);
    });
  }

  close(): void {}
}

// ---- Consul

/** The ACL permission Consul wants for an entry, named in a 403 (Consul's config entry ACLs). */
function permission(kind: string, name: string, access: 'read' | 'write'): string {
  if (kind === 'proxy-defaults') return `operator:${access}`;
  if (kind === 'service-intentions') return `intentions:${access} on "${name}"`;
  return `service:${access} on "${name}"`;
}

const entryPath = (r: EntryRef): string =>
  `/v1/config/${encodeURIComponent(r.kind)}/${encodeURIComponent(r.name)}`;

export class ConsulEntries implements EntryBackend {
  readonly where = 'consul';
  constructor(private readonly client: ConsulClient) {}

  /** What Consul holds that lib/l7 accepts: a change is checked against what the daemons use. */
  async current(): Promise<ConfigEntry[]> {
    return validateLeniently(await this.list(), 'consul').entries;
  }

  async list(kind?: Kind): Promise<Record<string, unknown>[]> {
    const out: Record<string, unknown>[] = [];
    for (const k of kind ? [kind] : KINDS) {
      const res = await this.client.get<unknown>(`/v1/config/${k}`, {
        allow404: true,
        permission: `read on the ${k} entries`,
      });
      if (Array.isArray(res.body)) out.push(...(res.body as Record<string, unknown>[]));
    }
    return out;
  }

  async read(ref: EntryRef): Promise<Record<string, unknown> | undefined> {
    const res = await this.client.get<Record<string, unknown>>(entryPath(ref), {
      allow404: true,
      permission: permission(ref.kind, ref.name, 'read'),
    });
    return res.status === 404 ? undefined : res.body;
  }

  async write(entries: readonly FileEntry[]): Promise<void> {
    const written: string[] = [];
    for (const e of entries) {
      const label = entryLabel(e.entry);
      try {
        const res = await this.client.put<unknown>('/v1/config', {
          body: e.raw,
          permission: permission(e.entry.Kind, e.entry.Name, 'write'),
        });
        if (res.body !== true)
          throw new ConfigError(`Consul did not store ${label} (it answered ${res.body})`);
      } catch (err) {
        // Consul has no transaction over config entries: say what is already in.
        if (written.length === 0 || !(err instanceof Error)) throw err;
        throw new ConfigError(`${err.message}; already written: ${written.join(', ')}`);
      }
      written.push(label);
    }
  }

  async delete(ref: EntryRef): Promise<void> {
    if ((await this.read(ref)) === undefined) throw new NotFoundError(`config entry ${labelOf(ref)}`);
    await this.client.delete(entryPath(ref), { permission: permission(ref.kind, ref.name, 'write') });
  }

  close(): void {
    this.client.close();
  }
}
