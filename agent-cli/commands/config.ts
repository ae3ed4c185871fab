// `ambit config write|read|list|delete`: Consul's config entries (service-defaults, proxy-defaults,
// service-router, -splitter, -resolver, -intentions) in Consul's own shape, on either backend, as
// `consul config` works: the mesh file's `configEntries`, or Consul's /v1/config with --consul.
import type { Command } from 'commander';
import { ConfigError, NotFoundError } from '../../lib/errors.js';
import { KINDS, type Kind, entryLabel } from '../../lib/l7/entries.js';
import { L7ConfigError } from '../../lib/l7/errors.js';
import { entryRefOf } from '../../lib/mesh/edit.js';
import { readMeshFile } from '../../lib/mesh/file/parse.js';
import {
  ConsulEntries,
  type EntryBackend,
  MeshFileEntries,
  checkChange,
  inWriteOrder,
  labelOf,
} from '../config-backends.js';
import { consulClient } from '../consul.js';
import { type Io, globals, meshPath } from '../context.js';
import { readEntriesFile } from '../entries-file.js';
import { jsonText } from '../output.js';

function backend(cmd: Command): EntryBackend {
  const g = globals(cmd);
  const consul = consulClient(g);
  // A missing mesh file has no entries yet; `config write` creates it, as `policy allow` does.
  const file = meshPath(g);
  return consul ? new ConsulEntries(consul) : new MeshFileEntries(file, () => readMeshFile(file));
}

async function using<T>(cmd: Command, f: (b: EntryBackend) => Promise<T>): Promise<T> {
  const b = backend(cmd);
  try {
    return await f(b);
  } finally {
    b.close();
  }
}

function kindOf(v: string): Kind {
  if (!(KINDS as readonly string[]).includes(v))
    throw new ConfigError(`unknown config entry kind "${v}" (one of ${KINDS.join(', ')})`);
  return v as Kind;
}

function namespaceOf(v: string | undefined, b: EntryBackend): string | undefined {
  if (v === undefined || v === 'default') return undefined;
  if (b instanceof ConsulEntries)
    throw new ConfigError(`--namespace "${v}": Consul CE has no namespaces; use "default"`);
  return v;
}

function registerWrite(config: Command, io: Io): void {
  config
    .command('write')
    .description(
      "Write config entries (Consul's shape: Kind, Name, Consul's field names) from a YAML or JSON\n" +
        'file: one entry, a list, or several YAML documents; - reads standard input. An entry of the\n' +
        'same Kind and Name is replaced. Every entry is checked first, alone and with the entries in\n' +
        'force, as Consul checks a write; on an error nothing is written.',
    )
    .argument('<file>', 'file with the entries, or - for standard input')
    .action(async (file: string, _o: unknown, cmd: Command) => {
      const entries = await readEntriesFile(file);
      const seen = new Set<string>();
      for (const e of entries) {
        const k = `${entryLabel(e.entry)}@${e.entry.Namespace ?? 'default'}`;
        if (seen.has(k)) throw new ConfigError(`${entryLabel(e.entry)} is in the file twice`, { file });
        seen.add(k);
      }
      await using(cmd, async (b) => {
        checkChange(
          await b.current(),
          entries.map((e) => e.entry),
          [],
          file,
        );
        await b.write(inWriteOrder(entries));
      });
      for (const e of entries) io.out(`Config entry written: ${entryLabel(e.entry)}\n`);
    });
}

function registerRead(config: Command, io: Io): void {
  config
    .command('read')
    .description('Print one config entry as JSON, as it is stored.')
    .argument('<kind>', `entry kind (${KINDS.join(', ')})`)
    .argument('<name>', 'entry name')
    .option('--namespace <ns>', 'namespace (mesh file only; Consul CE has one)')
    .action(async (kind: string, name: string, o: { namespace?: string }, cmd: Command) => {
      const k = kindOf(kind);
      const entry = await using(cmd, (b) =>
        b.read({ kind: k, name, namespace: namespaceOf(o.namespace, b) }),
      );
      if (entry === undefined) throw new NotFoundError(`config entry ${k}/${name}`);
      io.out(jsonText(entry));
    });
}

function registerList(config: Command, io: Io): void {
  config
    .command('list')
    .description('List config entries: the names of one kind, or Kind/Name of every kind.')
    .argument('[kind]', `entry kind (${KINDS.join(', ')}); none = every kind`)
    .option('--json', 'print the entries themselves, as JSON')
    .action(async (kind: string | undefined, o: { json?: boolean }, cmd: Command) => {
      const k = kind === undefined ? undefined : kindOf(kind);
      const entries = await using(cmd, (b) => b.list(k));
      if (o.json) return io.out(jsonText(entries));
      const refs = entries.flatMap((e) => {
        const r = entryRefOf(e);
        return r ? [r] : [];
      });
      const lines = refs.map((r) => {
        const ns = r.namespace ? ` (namespace ${r.namespace})` : '';
        return `${k ? r.name : labelOf(r)}${ns}`;
      });
      io.out(
        lines
          .sort()
          .map((l) => `${l}\n`)
          .join(''),
      );
    });
}

function registerDelete(config: Command, io: Io): void {
  config
    .command('delete')
    .description(
      'Delete one config entry. Refused, with nothing changed, when the entries left would not pass\n' +
        '(a router left on a service whose protocol it defined), as Consul refuses it.',
    )
    .argument('<kind>', `entry kind (${KINDS.join(', ')})`)
    .argument('<name>', 'entry name')
    .option('--namespace <ns>', 'namespace (mesh file only; Consul CE has one)')
    .action(async (kind: string, name: string, o: { namespace?: string }, cmd: Command) => {
      const k = kindOf(kind);
      await using(cmd, async (b) => {
        const ref = { kind: k, name, namespace: namespaceOf(o.namespace, b) };
        if ((await b.read(ref)) === undefined) throw new NotFoundError(`config entry ${labelOf(ref)}`);
        try {
          checkChange(await b.current(), [], [ref], b.where);
        } catch (err) {
          // The error names the entry that would break; say which deletion breaks it.
          if (!(err instanceof L7ConfigError)) throw err;
          throw new L7ConfigError(`${b.where}: deleting ${labelOf(ref)}`, err.entry, err.field, err.reason);
        }
        await b.delete(ref);
      });
      io.out(`Config entry deleted: ${k}/${name}\n`);
    });
}

export function registerConfig(program: Command, io: Io): void {
  const config = program
    .command('config')
    .description(
      "Manage Consul's L7 config entries (routing, splits, resolvers, protocols, L7 intentions),\n" +
        'in the mesh file or, with --consul, in Consul.',
    );
  registerWrite(config, io);
  registerRead(config, io);
  registerList(config, io);
  registerDelete(config, io);
}
