// The FILE of `ambit config write`: one config entry or several, in Consul's shape, YAML or JSON (a list,
// or several YAML documents), each checked alone by lib/l7 with the line of the field it refuses.
import { readFile } from 'node:fs/promises';
import { type Document, LineCounter, parseAllDocuments } from 'yaml';
import { ConfigError } from '../lib/errors.js';
import { type ConfigEntry, validateEntry } from '../lib/l7/entries.js';
import { L7ConfigError } from '../lib/l7/errors.js';
import { fieldSteps } from '../lib/mesh/file/entries.js';
import { lineOf, locate } from '../lib/mesh/file/parse.js';
import type { PathSeg } from '../lib/mesh/file/schema.js';

export interface FileEntry {
  /** As written (Consul's shape): what is stored, so that it reads back as the user wrote it. */
  raw: Record<string, unknown>;
  /** As lib/l7 reads it. */
  entry: ConfigEntry;
}

/** Reads `file` (`-` is standard input) into its entries; throws L7ConfigError or ConfigError. */
export async function readEntriesFile(file: string, stdin?: () => Promise<string>): Promise<FileEntry[]> {
  let text: string;
  try {
    text = file === '-' ? await (stdin ?? readStdin)() : await readFile(file, 'utf8');
  } catch (e) {
    throw new ConfigError(`cannot read ${file}: ${(e as Error).message}`);
  }
  return parseEntries(text, file === '-' ? '(stdin)' : file);
}

export function parseEntries(text: string, where: string): FileEntry[] {
  const lc = new LineCounter();
  const docs = parseAllDocuments(text, { lineCounter: lc, uniqueKeys: true, prettyErrors: false });
  const all = Array.isArray(docs) ? docs : [docs];
  const out: FileEntry[] = [];
  for (const doc of all) {
    const err = doc.errors[0];
    if (err) {
      const msg = err.message.replace(/ at line \d+, column \d+[\s\S]*$/, '');
      throw new ConfigError(`syntax error: ${msg} (${lineOf(lc, err.pos[0])})`, { file: where });
    }
    const value: unknown = doc.toJS({ maxAliasCount: 100 });
    if (value === null || value === undefined) continue;
    const items: [unknown, PathSeg[]][] = Array.isArray(value)
      ? value.map((v, i) => [v, [i]])
      : [[value, []]];
    for (const [raw, prefix] of items) out.push(checked(raw, prefix, doc, lc, where));
  }
  if (out.length === 0) throw new ConfigError('holds no config entry', { file: where });
  return out;
}

function checked(raw: unknown, prefix: PathSeg[], doc: Document, lc: LineCounter, where: string): FileEntry {
  try {
    return { raw: raw as Record<string, unknown>, entry: validateEntry(raw, where) };
  } catch (err) {
    if (!(err instanceof L7ConfigError)) throw err;
    const path = [...prefix, ...fieldSteps(raw, err.field)];
    const at = locate(doc, path, err.reason.startsWith('unknown field'), lc);
    throw new L7ConfigError(where, err.entry, err.field, at ? `${err.reason} (${at})` : err.reason);
  }
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
