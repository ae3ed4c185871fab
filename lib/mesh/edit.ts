// The one way anything changes the mesh file: under a lock, on the YAML document (so that users' comments and
// layout survive), validated before it is written, and written atomically (the daemon's watcher must never
// read a half-written file).
import { mkdir, readFile, realpath } from 'node:fs/promises';
import { dirname } from 'node:path';
import { type Document, YAMLMap, YAMLSeq, type Node as YamlNode, isMap, isNode, isScalar, isSeq } from 'yaml';
import { AmbitError, ConfigError, MeshFileError } from '../errors.js';
import { CONFIG_ENTRIES_KEY } from './file/entries.js';
import { acquireLock, releaseLock } from './file/lock.js';
import { meshFromDocument, parseMesh, parseMeshDocument } from './file/parse.js';
import { DEFAULT_NAMESPACE, meshFormat } from './file/schema.js';
import { nodeToDoc, policyToDoc, workloadToDoc } from './file/serialise.js';
import { writeFileAtomic } from './file/write.js';
import type { Mesh, MeshNode, Policy, PolicyAction, Workload } from './model.js';

const LOCK_WAIT_MS = 5_000;

export interface EditOptions {
  /** How long to wait for another editor's lock before MeshLockedError; default 5 s. */
  lockWaitMs?: number;
}

/** File-system failures (permissions, a full disk) as a ConfigError that names the file; AmbitErrors pass. */
function asWriteError(e: unknown, path: string): unknown {
  if (e instanceof AmbitError || !(e instanceof Error) || !('code' in e)) return e;
  const hint =
    (e as NodeJS.ErrnoException).code === 'EACCES' ? ' (run as the user that owns the mesh file?)' : '';
  return new ConfigError(`cannot write the mesh file: ${e.message}${hint}`, { file: path });
}

/**
 * Applies `edit` to the mesh file's YAML document under an exclusive lock and writes the result atomically,
 * only if it is a valid mesh; returns the new mesh. A missing file (and its directory) is created. Errors
 * thrown by `edit` abort the edit with nothing written. JSON files are written back as JSON.
 */
export async function editMeshFile(
  path: string,
  edit: (doc: Document) => void | Promise<void>,
  opts: EditOptions = {},
): Promise<Mesh> {
  const lockFile = `${path}.lock`;
  let held: { ino: number };
  try {
    await mkdir(dirname(path), { recursive: true });
    held = await acquireLock(lockFile, opts.lockWaitMs ?? LOCK_WAIT_MS);
  } catch (e) {
    throw asWriteError(e, path);
  }
  try {
    // Write through a symlink rather than replacing it with a regular file.
    let target = path;
    let before = '';
    try {
      target = await realpath(path);
      before = await readFile(target, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw new MeshFileError(path, '(file)', `cannot read: ${(e as Error).message}`);
      }
    }
    // A syntax error stops here: rewriting a document we could not fully parse would lose what we did not
    // understand. Semantic errors do not: the edit may be the very fix.
    const { doc } = parseMeshDocument(before, path);
    if (!isMap(doc.contents)) {
      if (doc.contents !== null && !(isScalar(doc.contents) && doc.contents.value === null)) {
        meshFromDocument(doc, path); // throws the "must be a mapping" error with the right wording
      }
      doc.contents = new YAMLMap() as typeof doc.contents;
    }
    // `{}` (what an empty JSON file holds) would otherwise keep everything added to it on one line.
    if (isMap(doc.contents) && doc.contents.items.length === 0) doc.contents.flow = false;
    await edit(doc);
    const after = meshFormat(path) === 'json' ? `${JSON.stringify(doc.toJS(), null, 2)}\n` : doc.toString();
    let mesh: Mesh;
    try {
      // Without line numbers: they would point into text that was never written.
      mesh = meshFromDocument(parseMeshDocument(after, path).doc, path);
    } catch (err) {
      // If the file was already invalid, report it as it is on disk (with its lines): that is what to fix.
      if (err instanceof MeshFileError) parseMesh(before, path);
      throw err;
    }
    if (after !== before)
      await writeFileAtomic(target, after).catch((e) => Promise.reject(asWriteError(e, path)));
    return mesh;
  } finally {
    await releaseLock(lockFile, held);
  }
}

// ---- typed helpers for the CLI and the daemon. Each changes one entry and leaves the rest of the document,
// comments included, as it was.

/** The mapping at `section`, created (block style) if absent or null. */
function section(doc: Document, key: string): YAMLMap {
  const existing = doc.get(key, true);
  if (isMap(existing)) return existing;
  const map = new YAMLMap();
  doc.set(key, map);
  return map;
}

/**
 * Lists of scalars read best inline (`addresses: [10.0.0.1]`), and list items that are small records
 * (upstreams, policy sources) one per line, as in the documented format.
 */
function styled(doc: Document, value: unknown): YamlNode {
  const node = doc.createNode(value) as YamlNode;
  const visit = (n: unknown): void => {
    if (isSeq(n)) {
      if (n.items.every((i) => isScalar(i))) n.flow = true;
      for (const i of n.items) {
        if (isMap(i) && i.items.every((p) => isScalar(p.value))) i.flow = true;
        else visit(i);
      }
    } else if (isMap(n)) {
      for (const p of n.items) visit(p.value);
    }
  };
  visit(node);
  return node;
}

/**
 * Makes `sec.name` equal `value`, updating an existing entry field by field so that comments on fields that
 * did not change stay put; fields absent from `value` are removed. Returns whether the entry existed.
 */
function upsert(doc: Document, sec: string, name: string, value: object): boolean {
  const map = section(doc, sec);
  const existing = map.get(name, true);
  if (!isMap(existing)) {
    map.set(name, styled(doc, value));
    return existing !== undefined;
  }
  const wanted = value as Record<string, unknown>;
  for (const pair of [...existing.items]) {
    const k = isScalar(pair.key) ? pair.key.value : pair.key;
    if (typeof k !== 'string' || !(k in wanted)) existing.delete(pair.key);
  }
  for (const [k, v] of Object.entries(wanted)) {
    if (v === undefined) continue;
    const cur = existing.get(k, true);
    if (isScalar(cur) && (typeof v !== 'object' || v === null)) {
      if (cur.value !== v) cur.value = v;
    } else if (cur === undefined || !isNode(cur) || JSON.stringify(cur.toJSON()) !== JSON.stringify(v)) {
      existing.set(k, styled(doc, v));
    }
  }
  return true;
}

function remove(doc: Document, sec: string, name: string): boolean {
  const map = doc.get(sec, true);
  if (!isMap(map) || !map.has(name)) return false;
  map.delete(name);
  return true;
}

/** Adds or updates a node; returns true if it already existed. */
export const setNode = (doc: Document, node: MeshNode): boolean =>
  upsert(doc, 'nodes', node.name, nodeToDoc(node));

/** Adds or updates a workload (re-enrolling replaces it); returns true if it already existed. */
export const upsertWorkload = (doc: Document, w: Workload): boolean =>
  upsert(doc, 'workloads', w.name, workloadToDoc(w));

/** Returns false if there was no such workload. */
export const removeWorkload = (doc: Document, name: string): boolean => remove(doc, 'workloads', name);

/** Adds or replaces a policy; returns true if one of that name already existed. */
export const addPolicy = (doc: Document, p: Policy): boolean =>
  upsert(doc, 'policies', p.name, policyToDoc(p));

/** Returns false if there was no such policy. */
export const removePolicy = (doc: Document, name: string): boolean => remove(doc, 'policies', name);

export function setDefaultPolicy(doc: Document, action: PolicyAction): void {
  const cur = doc.get('defaultPolicy', true);
  if (isScalar(cur)) cur.value = action;
  else if (isMap(doc.contents)) doc.contents.items.unshift(doc.createPair('defaultPolicy', action));
  else doc.set('defaultPolicy', action);
}

// ---- config entries: the `configEntries` list, one entry per Kind, Namespace and Name.

/** What names a config entry in the list: its Kind, Namespace (absent is default) and Name. */
export interface EntryRef {
  kind: string;
  name: string;
  namespace?: string | undefined;
}

const fold = (k: string): string => k.replaceAll('_', '').toLowerCase();

/** Kind, Name and Namespace of a raw entry, its keys matched as lib/l7 (and Consul) match them. */
export function entryRefOf(raw: unknown): EntryRef | undefined {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return undefined;
  const get = (want: string): unknown =>
    Object.entries(raw as Record<string, unknown>).find(([k]) => fold(k) === want)?.[1];
  const kind = get('kind');
  const name = get('name');
  const namespace = get('namespace');
  if (typeof kind !== 'string' || typeof name !== 'string') return undefined;
  return { kind, name, namespace: typeof namespace === 'string' && namespace !== '' ? namespace : undefined };
}

export const sameEntry = (a: EntryRef, b: EntryRef): boolean =>
  a.kind === b.kind &&
  a.name === b.name &&
  (a.namespace ?? DEFAULT_NAMESPACE) === (b.namespace ?? DEFAULT_NAMESPACE);

/** The `configEntries` list, created (block style) if absent or null. */
function entryList(doc: Document): YAMLSeq {
  const existing = doc.get(CONFIG_ENTRIES_KEY, true);
  if (isSeq(existing)) return existing;
  const seq = new YAMLSeq();
  doc.set(CONFIG_ENTRIES_KEY, seq);
  return seq;
}

const indexOfEntry = (doc: Document, seq: YAMLSeq, ref: EntryRef): number =>
  seq.items.findIndex((it) => {
    const r = entryRefOf(isNode(it) ? it.toJS(doc) : it);
    return r !== undefined && sameEntry(r, ref);
  });

/**
 * Adds `raw` (an entry in Consul's shape, as the user wrote it) to `configEntries`, or replaces the entry
 * of the same Kind, Namespace and Name in place, keeping the comment above it. Returns whether one existed.
 */
export function setConfigEntry(doc: Document, raw: Record<string, unknown>): boolean {
  const ref = entryRefOf(raw);
  if (!ref) throw new ConfigError('a config entry needs a Kind and a Name');
  const seq = entryList(doc);
  const node = styled(doc, raw);
  const i = indexOfEntry(doc, seq, ref);
  if (i < 0) {
    seq.items.push(node);
    return false;
  }
  const old = seq.items[i];
  if (isNode(old) && old.commentBefore) node.commentBefore = old.commentBefore;
  seq.items[i] = node;
  return true;
}

/** Removes the entry named by `ref`; returns false if there was none. An emptied list goes too. */
export function removeConfigEntry(doc: Document, ref: EntryRef): boolean {
  const seq = doc.get(CONFIG_ENTRIES_KEY, true);
  if (!isSeq(seq)) return false;
  const i = indexOfEntry(doc, seq, ref);
  if (i < 0) return false;
  seq.items.splice(i, 1);
  if (seq.items.length === 0) doc.delete(CONFIG_ENTRIES_KEY);
  return true;
}

/** The raw entries of the file's `configEntries` (not those the `protocol` shorthand stands for). */
export function configEntriesIn(doc: Document): unknown[] {
  const seq = doc.get(CONFIG_ENTRIES_KEY, true);
  return isSeq(seq) ? (seq.toJS(doc) as unknown[]) : [];
}
