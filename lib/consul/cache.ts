// The last answers Consul gave, kept in the state directory (`consul-cache.json`) so that a daemon that
// starts while Consul is down serves the mesh it last knew. It holds leaf private keys, so it is written
// with mode 0600, atomically (temp file + rename), and at most once per `flushMs`.

import { chmod, mkdir, open, readFile, rename, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Logger } from '../log.js';
import { isRecord } from './catalog.js';

const VERSION = 1;

export interface CacheEntry {
  /** When Consul gave this answer. */
  at: string;
  body: unknown;
}

export class ConsulCache {
  readonly file: string;
  readonly #log: Logger;
  readonly #flushMs: number;
  #entries = new Map<string, CacheEntry>();
  #timer: NodeJS.Timeout | undefined;
  #writing: Promise<void> = Promise.resolve();
  #dirty = false;
  #loadedAt: Date | undefined;

  constructor(stateDir: string, log: Logger, opts: { flushMs?: number } = {}) {
    this.file = join(stateDir, 'consul-cache.json');
    this.#log = log;
    this.#flushMs = opts.flushMs ?? 250;
  }

  /** When the loaded cache was last written (undefined: no cache was found). */
  get savedAt(): Date | undefined {
    return this.#loadedAt;
  }

  get size(): number {
    return this.#entries.size;
  }

  /** Reads the file; a missing, unreadable or foreign file is an empty cache (logged), never an error. */
  async load(): Promise<void> {
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        this.#log.warn({ file: this.file, err: (err as Error).message }, 'cannot read the Consul cache');
      }
      return;
    }
    try {
      const doc: unknown = JSON.parse(text);
      if (!isRecord(doc) || doc.version !== VERSION || !isRecord(doc.entries))
        throw new Error('unknown format');
      for (const [k, v] of Object.entries(doc.entries)) {
        if (isRecord(v) && typeof v.at === 'string') this.#entries.set(k, { at: v.at, body: v.body });
      }
      this.#loadedAt = typeof doc.savedAt === 'string' ? new Date(doc.savedAt) : undefined;
    } catch (err) {
      this.#log.warn(
        { file: this.file, err: (err as Error).message },
        'ignoring a Consul cache that does not parse',
      );
    }
  }

  get(key: string): CacheEntry | undefined {
    return this.#entries.get(key);
  }

  keys(): string[] {
    return [...this.#entries.keys()];
  }

  set(key: string, body: unknown): void {
    this.#entries.set(key, { at: new Date().toISOString(), body });
    this.#schedule();
  }

  delete(key: string): void {
    if (this.#entries.delete(key)) this.#schedule();
  }

  #schedule(): void {
    this.#dirty = true;
    if (this.#timer) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      void this.flush();
    }, this.#flushMs);
    this.#timer.unref();
  }

  /** Writes pending changes now (one write at a time). */
  flush(): Promise<void> {
    if (this.#timer) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    this.#writing = this.#writing.then(async () => {
      if (!this.#dirty) return;
      this.#dirty = false;
      const doc = {
        version: VERSION,
        savedAt: new Date().toISOString(),
        entries: Object.fromEntries(this.#entries),
      };
      const tmp = `${this.file}.${process.pid}.tmp`;
      try {
        await mkdir(dirname(this.file), { recursive: true, mode: 0o700 });
        const fh = await open(tmp, 'w', 0o600);
        try {
          await fh.writeFile(JSON.stringify(doc));
          await fh.sync();
        } finally {
          await fh.close();
        }
        await chmod(tmp, 0o600);
        await rename(tmp, this.file);
      } catch (err) {
        this.#dirty = true;
        await unlink(tmp).catch(() => {});
        this.#log.warn({ file: this.file, err: (err as Error).message }, 'cannot write the Consul cache');
      }
    });
    return this.#writing;
  }
}
