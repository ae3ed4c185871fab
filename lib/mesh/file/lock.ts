// The mesh file's edit lock: a `<file>.lock` created exclusively, holding the editor's pid, so that
// concurrent editors (the CLI, the daemon registering its node) take turns; a lock left by a dead or hung
// editor is taken over.
import { open, readFile, stat, unlink } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { MeshLockedError } from '../../errors.js';

/** A lock older than this is left over from a crashed or hung editor (an edit takes milliseconds). */
export const LOCK_STALE_MS = 30_000;

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    // EPERM: the process exists but belongs to someone else.
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Takes the lock, waiting up to `waitMs` for its holder; the inode returned proves ownership at release. */
export async function acquireLock(lockFile: string, waitMs: number): Promise<{ ino: number }> {
  const deadline = Date.now() + waitMs;
  for (let attempt = 0; ; attempt++) {
    try {
      const fh = await open(lockFile, 'wx', 0o644);
      try {
        await fh.writeFile(`${process.pid}\n`);
        return { ino: (await fh.stat()).ino };
      } finally {
        await fh.close();
      }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    if (await takeOverIfStale(lockFile)) continue;
    if (Date.now() >= deadline) throw new MeshLockedError(lockFile);
    // Jittered backoff so that several waiting editors do not retry in lockstep.
    await sleep(Math.min(20 * 2 ** Math.min(attempt, 3), 150) + Math.random() * 20);
  }
}

/** Removes the lock if its holder is dead or it is too old; true if the caller should retry at once. */
async function takeOverIfStale(lockFile: string): Promise<boolean> {
  let before: Awaited<ReturnType<typeof stat>>;
  let content: string;
  try {
    before = await stat(lockFile);
    content = await readFile(lockFile, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return true; // released meanwhile
    throw e;
  }
  const pid = Number.parseInt(content.trim(), 10);
  const old = Date.now() - before.mtimeMs > LOCK_STALE_MS;
  // An empty lock file may be one whose creator has not written its pid yet: only age makes it stale.
  const dead = Number.isInteger(pid) && pid > 0 && pid !== process.pid && !pidAlive(pid);
  if (!old && !dead) return false;
  try {
    // Only remove the very file we judged stale, not a fresh lock another editor created since.
    const now = await stat(lockFile);
    if (now.ino !== before.ino || now.mtimeMs !== before.mtimeMs) return true;
    await unlink(lockFile);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  return true;
}

/** Removes the lock only if it is still the one `held` names. */
export async function releaseLock(lockFile: string, held: { ino: number }): Promise<void> {
  try {
    const s = await stat(lockFile);
    if (s.ino === held.ino) await unlink(lockFile);
  } catch {
    // Already gone (taken over as stale after a very long edit): nothing of ours to remove.
  }
}
