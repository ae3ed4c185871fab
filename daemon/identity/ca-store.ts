// Keeps the embedded CA's root certificate and key on disk: private to the daemon's user, created once
// even when several daemons start at the same time on a shared directory, and refused when the key has
// become readable by others.

import { randomBytes } from 'node:crypto';
import { type FileHandle, link, mkdir, open, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CaError } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';

export interface RootFiles {
  certFile: string;
  keyFile: string;
}

export interface RootPems {
  certPem: string;
  keyPem: string;
}

export const rootFiles = (dir: string): RootFiles => ({
  certFile: join(dir, 'root-cert.pem'),
  keyFile: join(dir, 'root-key.pem'),
});

// Another daemon may have published the key but not yet the certificate; a file this young may be that.
const PARTNER_WAIT_MS = 2000;
const POLL_MS = 50;
const checksPermissions = process.platform !== 'win32';

/**
 * Loads the root pair from `dir`, or publishes the one `create` makes when there is none.
 * `created` tells which happened, for the log.
 */
export async function loadOrCreateRootFiles(
  dir: string,
  create: () => Promise<RootPems>,
  logger: Logger,
): Promise<RootPems & RootFiles & { created: boolean }> {
  const files = rootFiles(dir);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await warnIfDirOpen(dir, logger);
  if (!(await exists(files.keyFile)) && !(await exists(files.certFile))) {
    const pems = await create();
    if (await publish(files, pems)) return { ...pems, ...files, created: true };
    logger.info({ dir }, 'another process created the CA first; using its root');
  }
  return { ...(await load(files)), ...files, created: false };
}

async function load(files: RootFiles): Promise<RootPems> {
  for (;;) {
    const [key, cert] = [await modified(files.keyFile), await modified(files.certFile)];
    if (key !== undefined && cert !== undefined) break;
    const [present, missing, since] =
      key !== undefined ? [files.keyFile, files.certFile, key] : [files.certFile, files.keyFile, cert ?? 0];
    // Only a file written moments ago can be half of a pair still being published.
    if (Date.now() - since >= PARTNER_WAIT_MS) {
      throw new CaError(
        `${present} exists but ${missing} does not; restore the missing file, or remove both to create a new CA`,
      );
    }
    await sleep(POLL_MS);
  }
  return { keyPem: await readPrivate(files.keyFile), certPem: await readText(files.certFile) };
}

/** Reads the key through one descriptor so the mode checked is that of the file read. */
async function readPrivate(file: string): Promise<string> {
  const handle = await openForReading(file);
  try {
    const { mode } = await handle.stat();
    if (checksPermissions && (mode & 0o077) !== 0) {
      const octal = (mode & 0o777).toString(8).padStart(4, '0');
      throw new CaError(
        `${file} is accessible by group or others (mode ${octal}); a CA key must be private: chmod 600 ${file}`,
      );
    }
    return await handle.readFile('utf8');
  } finally {
    await handle.close();
  }
}

async function readText(file: string): Promise<string> {
  const handle = await openForReading(file);
  try {
    return await handle.readFile('utf8');
  } finally {
    await handle.close();
  }
}

/**
 * Writes each file complete under a temporary name, then hard-links it into place: link() fails if the
 * name exists, so of two daemons racing exactly one wins and nobody ever reads a half-written key.
 * Returns false when another process won.
 */
async function publish(files: RootFiles, pems: RootPems): Promise<boolean> {
  if (!(await publishFile(files.keyFile, pems.keyPem, 0o600))) return false;
  if (!(await publishFile(files.certFile, pems.certPem, 0o644))) {
    // We own a key without its certificate: take it back so the directory stays consistent.
    await unlink(files.keyFile).catch(() => undefined);
    return false;
  }
  return true;
}

async function openForReading(file: string): Promise<FileHandle> {
  try {
    return await open(file, 'r');
  } catch (err) {
    throw new CaError(`cannot read ${file}`, { cause: err });
  }
}

async function publishFile(file: string, contents: string, mode: number): Promise<boolean> {
  const temp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  const handle = await open(temp, 'wx', mode);
  try {
    await handle.writeFile(contents, 'utf8');
    await handle.sync(); // the CA key must survive a crash right after first start
  } finally {
    await handle.close();
  }
  try {
    await link(temp, file);
    return true;
  } catch (err) {
    if (isCode(err, 'EEXIST')) return false;
    throw new CaError(`cannot write ${file}`, { cause: err });
  } finally {
    await unlink(temp).catch(() => undefined);
  }
}

async function warnIfDirOpen(dir: string, logger: Logger): Promise<void> {
  if (!checksPermissions) return;
  const { mode } = await stat(dir);
  if ((mode & 0o077) !== 0) {
    logger.warn({ dir, mode: (mode & 0o777).toString(8) }, 'CA directory is accessible by group or others');
  }
}

async function exists(file: string): Promise<boolean> {
  return (await modified(file)) !== undefined;
}

/** The file's modification time, or undefined if it does not exist. */
async function modified(file: string): Promise<number | undefined> {
  try {
    return (await stat(file)).mtimeMs;
  } catch (err) {
    if (isCode(err, 'ENOENT')) return undefined;
    throw new CaError(`cannot read ${file}`, { cause: err });
  }
}

const isCode = (err: unknown, code: string): boolean =>
  err instanceof Error && (err as NodeJS.ErrnoException).code === code;
