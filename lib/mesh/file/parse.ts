// Text -> document: the mesh file's text parsed as YAML (or checked as JSON) keeping line numbers, so that
// every refusal says where it is; and the file read and validated into the model.
import { readFile } from 'node:fs/promises';
import { type Document, LineCounter, parseDocument } from 'yaml';
import { MeshFileError } from '../../errors.js';
import type { Mesh } from '../model.js';
import { emptyMesh } from '../model.js';
import { type PathSeg, meshFormat } from './schema.js';
import { validateMesh } from './validate.js';

export const lineOf = (lc: LineCounter, offset: number): string => {
  const { line, col } = lc.linePos(offset);
  return `line ${line}, column ${col}`;
};

/**
 * Parses the text as a YAML document (JSON files too: JSON is YAML, and this gives line numbers and
 * duplicate-key errors that JSON.parse would swallow). Syntax errors become MeshFileError.
 */
export function parseMeshDocument(text: string, file: string): { doc: Document; lineCounter: LineCounter } {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const err = doc.errors[0];
  if (err) {
    const msg = err.message.replace(/ at line \d+, column \d+[\s\S]*$/, '');
    throw new MeshFileError(file, lineOf(lineCounter, err.pos[0]), `syntax error: ${msg}`);
  }
  if (meshFormat(file) === 'json' && text.trim() !== '') {
    // YAML accepts far more than JSON (comments, bare strings); a .json file must be JSON for other tools.
    try {
      JSON.parse(text);
    } catch (e) {
      const m = /position (\d+)/.exec((e as Error).message);
      const where = m ? lineOf(lineCounter, Number(m[1])) : '(document)';
      throw new MeshFileError(
        file,
        where,
        `invalid JSON: ${(e as Error).message.replace(/ in JSON at position \d+.*$/, '')}`,
      );
    }
  }
  return { doc, lineCounter };
}

type Ranged = { range?: [number, number, number] | null };

/**
 * Where the field at `path` is in the text: its value (or its key, for an unknown key), else the deepest
 * enclosing entry that exists (a required field that is missing is reported at its parent).
 */
export function locate(
  doc: Document,
  path: readonly PathSeg[],
  atKey: boolean,
  lc: LineCounter,
): string | undefined {
  for (let n = path.length; n >= 0; n--) {
    const sub = path.slice(0, n);
    const parent =
      n > 0 ? (doc.getIn(sub.slice(0, -1), true) as { items?: { key?: unknown }[] } | undefined) : undefined;
    const pair = parent?.items?.find(
      (it) => String((it.key as { value?: unknown })?.value) === String(path[n - 1]),
    );
    const key = (pair?.key as Ranged | undefined)?.range;
    const value = (doc.getIn(sub, true) as Ranged | undefined)?.range;
    // The field itself: its value. An unknown key, or the parent of a missing field: the key that names it.
    const range = n === path.length && !atKey ? (value ?? key) : (key ?? value);
    if (range) return lineOf(lc, range[0]);
  }
  return undefined;
}

/** Validates a parsed document; the error names the field path and, given the line counter, its line. */
export function meshFromDocument(doc: Document, file: string, lineCounter?: LineCounter): Mesh {
  return validateMesh(
    doc.toJS({ maxAliasCount: 100 }),
    file,
    lineCounter ? (path, atKey) => locate(doc, path, atKey, lineCounter) : undefined,
  );
}

/** Parses and validates the text of a mesh file; `file` names it in errors and picks the format. */
export function parseMesh(text: string, file: string): Mesh {
  const { doc, lineCounter } = parseMeshDocument(text, file);
  return meshFromDocument(doc, file, lineCounter);
}

/** The mesh in the file; a missing file is an empty mesh (nothing enrolled yet). */
export async function readMeshFile(path: string): Promise<Mesh> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return emptyMesh();
    throw new MeshFileError(path, '(file)', `cannot read: ${(e as Error).message}`);
  }
  return parseMesh(text, path);
}
