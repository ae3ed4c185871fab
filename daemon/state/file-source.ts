// The embedded control plane as seen by the daemon: the mesh file, watched, and applied to the state store
// whenever it changes into something valid. An invalid edit never takes the mesh down: the last good state
// stays in force and the error is reported (log, lastError, 'rejected'). Every applied text is also kept as
// the last good copy in the state directory, so that a restart while the file is broken, empty or gone
// starts from what was last in force rather than refusing to start (or starting empty).
import { EventEmitter } from 'node:events';
import { type FSWatcher, watch } from 'node:fs';
import { mkdir, readFile, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { MeshFileError } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';
import { parseMesh } from '../../lib/mesh/file/parse.js';
import { meshFormat } from '../../lib/mesh/file/schema.js';
import { writeFileAtomic } from '../../lib/mesh/file/write.js';
import type { Mesh } from '../../lib/mesh/model.js';
import { emptyMesh } from '../../lib/mesh/model.js';
import type { StateStore } from './store.js';

export interface MeshFileSourceOptions {
  /** Interval of the stat poll that backs up fs.watch (which misses events on some filesystems); default 1000. */
  pollMs?: number;
  /** Quiet time after a change event before reading, so that a burst of events is one reload; default 50. */
  debounceMs?: number;
  /**
   * Checks only this host can make (its interface addresses); throws a MeshFileError to refuse the file,
   * which keeps the last good state as any invalid file does.
   */
  check?: (mesh: Mesh) => void;
  /**
   * Where the text of every applied file is kept (see lastGoodPath); without it, nothing is kept and a
   * broken file at start is refused.
   */
  lastGood?: string;
}

/** `<stateDir>/mesh.last-good.yaml` (`.json` for a JSON mesh file: the copy is parsed as the file is). */
export const lastGoodPath = (stateDir: string, meshFile: string): string =>
  join(stateDir, `mesh.last-good.${meshFormat(meshFile) === 'json' ? 'json' : 'yaml'}`);

type Signature = string; // mtime|size|ino, or 'missing'

/**
 * Events: 'applied' (mesh) after a valid file is in force; 'rejected' (MeshFileError) when a change was
 * refused and the previous state kept.
 */
export class MeshFileSource extends EventEmitter {
  readonly path: string;
  readonly #store: StateStore;
  readonly #log: Logger;
  readonly #pollMs: number;
  readonly #debounceMs: number;
  readonly #check: (mesh: Mesh) => void;
  readonly #lastGood: string | undefined;
  #watcher: FSWatcher | undefined;
  #poll: NodeJS.Timeout | undefined;
  #debounce: NodeJS.Timeout | undefined;
  #signature: Signature | undefined;
  /** Text last read (applied or rejected): the same bytes are not applied or reported twice. */
  #lastText: string | undefined;
  #lastErrorKey: string | undefined;
  #lastError: MeshFileError | undefined;
  #lastLoadedAt: Date | undefined;
  #loading: Promise<void> | undefined;
  #again = false;
  #closed = false;

  constructor(path: string, store: StateStore, logger: Logger, opts: MeshFileSourceOptions = {}) {
    super();
    this.path = path;
    this.#store = store;
    this.#log = logger.child({ component: 'mesh-file' });
    this.#pollMs = opts.pollMs ?? 1000;
    this.#debounceMs = opts.debounceMs ?? 50;
    this.#check = opts.check ?? (() => {});
    this.#lastGood = opts.lastGood;
  }

  /** The error of the last change that was refused; cleared when a valid file is applied. */
  get lastError(): MeshFileError | undefined {
    return this.#lastError;
  }

  /** When a valid file was last applied. */
  get lastLoadedAt(): Date | undefined {
    return this.#lastLoadedAt;
  }

  /**
   * Loads the file and starts watching. A file that is invalid, unreadable, empty or missing is replaced by
   * the last good copy when there is one (the error reported as any rejected change is, and the watch goes
   * on); without one, a missing or empty file is an empty mesh and an invalid one throws: a daemon must not
   * come up serving a mesh that is not one its operator wrote.
   */
  async start(): Promise<void> {
    const sig = await this.#stat();
    let text: string | undefined;
    let broken: MeshFileError | undefined;
    let mesh: Mesh | undefined;
    try {
      text = await this.#read();
      if (text !== undefined && text.trim() !== '') mesh = this.#parse(text);
    } catch (err) {
      if (!(err instanceof MeshFileError)) throw err;
      broken = err;
    }
    if (mesh) await this.#apply(mesh, text);
    else await this.#startWithout(text, broken);
    this.#signature = sig;
    // The directory must exist to be watched; the daemon owns it, and the CLI would create it anyway.
    await mkdir(dirname(this.path), { recursive: true }).catch(() => {});
    this.#watch();
    this.#poll = setInterval(() => void this.#checkPoll(), this.#pollMs);
    this.#poll.unref();
  }

  /** Start when the file gives no mesh: `text` undefined (missing) or empty, or `broken` says why not. */
  async #startWithout(text: string | undefined, broken: MeshFileError | undefined): Promise<void> {
    const saved = await this.#readLastGood();
    if (!saved) {
      if (broken) throw broken;
      if (text === undefined)
        this.#log.warn({ file: this.path }, 'mesh file does not exist yet; starting with an empty mesh');
      await this.#apply(emptyMesh(), text);
      return;
    }
    await this.#apply(saved.mesh, undefined, false);
    // The file's own text, so that the poll neither re-reports it nor mistakes it for a change.
    this.#lastText = text;
    const from = { file: this.path, lastGood: this.#lastGood, savedAt: saved.savedAt.toISOString() };
    if (!broken) {
      const what = text === undefined ? 'does not exist' : 'is empty';
      this.#log.warn(from, `mesh file ${what}; starting from the last good state`);
      return;
    }
    this.#lastErrorKey = broken.message;
    this.#log.error(
      { ...from, field: broken.field, reason: broken.reason },
      'mesh file rejected at start; starting from the last good state, watching for a fixed file',
    );
    this.#rejectQuietly(broken);
  }

  /** The last good copy, parsed and checked as the file is; undefined when there is none or it is unusable. */
  async #readLastGood(): Promise<{ mesh: Mesh; savedAt: Date } | undefined> {
    if (!this.#lastGood) return undefined;
    try {
      const [text, st] = await Promise.all([readFile(this.#lastGood, 'utf8'), stat(this.#lastGood)]);
      return { mesh: this.#parse(text, this.#lastGood), savedAt: st.mtime };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        this.#log.warn(
          { lastGood: this.#lastGood, err: (err as Error).message },
          'the last good copy of the mesh file is unusable; ignoring it',
        );
      }
      return undefined;
    }
  }

  /** Keeps `text` as the last good copy; a failure is logged, never a reason to refuse the file. */
  async #saveLastGood(text: string): Promise<void> {
    if (!this.#lastGood) return;
    try {
      await writeFileAtomic(this.#lastGood, text);
    } catch (err) {
      this.#log.warn(
        { lastGood: this.#lastGood, err: (err as Error).message },
        'cannot keep the last good copy of the mesh file',
      );
    }
  }

  close(): void {
    this.#closed = true;
    this.#watcher?.close();
    this.#watcher = undefined;
    if (this.#poll) clearInterval(this.#poll);
    if (this.#debounce) clearTimeout(this.#debounce);
  }

  #watch(): void {
    const dir = dirname(this.path);
    const name = basename(this.path);
    try {
      // The directory, not the file: an atomic rename replaces the file's inode, and a watch on the old
      // inode would go silent after the first edit.
      this.#watcher = watch(dir, { persistent: false }, (_event, changed) => {
        if (changed === null || changed === name) this.#schedule();
      });
      this.#watcher.on('error', (err) => {
        this.#log.warn({ file: this.path, err: err.message }, 'watching the mesh file failed; polling only');
        this.#watcher?.close();
        this.#watcher = undefined;
      });
    } catch (err) {
      // No directory yet, inotify limits, ...: the poll still catches every change, just later.
      this.#log.warn(
        { file: this.path, err: (err as Error).message },
        'cannot watch the mesh file; polling only',
      );
    }
  }

  #schedule(): void {
    if (this.#closed) return;
    if (this.#debounce) clearTimeout(this.#debounce);
    this.#debounce = setTimeout(() => void this.#reload(), this.#debounceMs);
    this.#debounce.unref();
  }

  async #checkPoll(): Promise<void> {
    const sig = await this.#stat();
    if (sig !== this.#signature) this.#schedule();
  }

  /** One reload at a time; a change that arrives during one causes exactly one more. */
  async #reload(): Promise<void> {
    if (this.#closed) return;
    if (this.#loading) {
      this.#again = true;
      return;
    }
    this.#loading = this.#reloadOnce();
    try {
      await this.#loading;
    } catch (err) {
      // Never an unhandled rejection from a timer: a bug here must not take the data path down with it.
      this.#log.error({ file: this.path, err: (err as Error).message }, 'reloading the mesh file failed');
    } finally {
      this.#loading = undefined;
    }
    if (this.#again) {
      this.#again = false;
      this.#schedule();
    }
  }

  async #reloadOnce(): Promise<void> {
    const sig = await this.#stat();
    if (sig === 'missing') {
      if (this.#signature !== 'missing') {
        this.#log.warn({ file: this.path }, 'mesh file was removed; keeping the last good state in force');
      }
      this.#signature = sig;
      return;
    }
    let text: string | undefined;
    try {
      text = await this.#read();
    } catch (err) {
      this.#reject(err as MeshFileError, sig);
      return;
    }
    // Written in place by an editor while we read: wait for the writer to finish rather than apply a torso.
    if ((await this.#stat()) !== sig) {
      this.#schedule();
      return;
    }
    this.#signature = sig;
    if (text === undefined || text === this.#lastText) return;
    if (text.trim() === '') {
      // Every in-place write passes through an empty file (truncate, then write), and the stat above cannot
      // tell when the write has not started yet. An empty file is kept as a removed one is: the last good
      // state stays in force, so that one save in an editor never blackholes the node for an instant.
      if (this.#lastText !== '') {
        this.#log.warn({ file: this.path }, 'mesh file is empty; keeping the last good state in force');
      }
      this.#lastText = '';
      return;
    }
    let mesh: Mesh;
    try {
      mesh = this.#parse(text);
    } catch (err) {
      if (!(err instanceof MeshFileError)) throw err;
      this.#lastText = text;
      this.#reject(err, sig);
      return;
    }
    await this.#apply(mesh, text);
  }

  /** `text` as a mesh, checked as this host checks it; errors name `file` (the mesh file or its copy). */
  #parse(text: string, file = this.path): Mesh {
    const mesh = parseMesh(text, file);
    this.#check(mesh);
    return mesh;
  }

  /** Puts `mesh` in force; `save`: keep `text` as the last good copy (not when it is that copy). */
  async #apply(mesh: Mesh, text: string | undefined, save = true): Promise<void> {
    this.#store.replace(mesh);
    this.#lastText = text;
    this.#lastError = undefined;
    this.#lastErrorKey = undefined;
    this.#lastLoadedAt = new Date();
    this.#log.info(
      {
        file: this.path,
        nodes: mesh.nodes.length,
        workloads: mesh.workloads.length,
        services: mesh.services.length,
        policies: mesh.policies.length,
        configEntries: mesh.configEntries?.length ?? 0,
      },
      save ? 'mesh applied' : 'mesh applied from the last good copy',
    );
    if (save && text !== undefined && text.trim() !== '') await this.#saveLastGood(text);
    this.emit('applied', mesh);
  }

  #reject(err: MeshFileError, sig: Signature): void {
    this.#signature = sig;
    // Once per distinct error: a poll must not repeat the same complaint every second.
    if (err.message !== this.#lastErrorKey) {
      this.#lastErrorKey = err.message;
      this.#log.error(
        { file: err.file, field: err.field, reason: err.reason },
        'mesh file change rejected; the last good state stays in force',
      );
    }
    this.#rejectQuietly(err);
  }

  /** Records and announces a refusal already logged. */
  #rejectQuietly(err: MeshFileError): void {
    this.#lastError = err;
    this.emit('rejected', err);
  }

  async #stat(): Promise<Signature> {
    try {
      const s = await stat(this.path);
      return `${s.mtimeMs}|${s.size}|${s.ino}`;
    } catch {
      return 'missing';
    }
  }

  /** The file's text; undefined if it does not exist. */
  async #read(): Promise<string | undefined> {
    try {
      return await readFile(this.path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new MeshFileError(this.path, '(file)', `cannot read: ${(e as Error).message}`);
    }
  }
}
