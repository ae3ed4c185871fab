// Replacing a file so that a reader sees the old text or the new, never a torso: the daemon's watcher
// reads the mesh file whenever it changes.
import { randomBytes } from 'node:crypto';
import { type FileHandle, chmod, open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** Writes a sibling temp file, fsyncs it and renames it over the target, then fsyncs the directory. */
export async function writeFileAtomic(target: string, text: string): Promise<void> {
  const dir = dirname(target);
  const tmp = join(dir, `.${basename(target)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  let fh: FileHandle | undefined;
  try {
    fh = await open(tmp, 'wx', 0o644);
    await fh.writeFile(text, 'utf8');
    await fh.sync();
    await fh.close();
    fh = undefined;
    await chmod(tmp, 0o644); // the umask may have narrowed it; the daemon may run as another user
    await rename(tmp, target);
  } catch (e) {
    await fh?.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw e;
  }
  try {
    const d = await open(dir, 'r');
    try {
      await d.sync();
    } finally {
      await d.close();
    }
  } catch {
    // Some filesystems refuse fsync on directories; the rename itself is still atomic.
  }
}
