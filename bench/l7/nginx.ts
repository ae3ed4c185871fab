// nginx as the bench runs it: in the foreground, one worker, everything (pid, logs, temp files) in its own
// directory, so that it never touches the system's nginx. Used for the shared upstream and the nginx hop.

import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type Spawned, commandLine, startProcess, which } from '../proc.js';

export const nginxBin = (): string | undefined => which('nginx');

export const nginxVersion = (): string => {
  const bin = nginxBin();
  if (!bin) return 'missing';
  return (
    commandLine(bin, ['-v'], /^nginx version/)?.replace(/^nginx version:\s*/, '') ?? 'nginx (unknown version)'
  );
};

/** Starts nginx with `http` as the body of its http block; returns the master process (the worker is its child). */
export async function startNginx(
  name: string,
  dir: string,
  http: readonly string[],
  fileLimit: number,
): Promise<Spawned> {
  const bin = nginxBin();
  if (!bin) throw new Error('nginx is not installed');
  await mkdir(join(dir, 'temp'), { recursive: true });
  const workerConnections = Math.max(512, Math.min(16_384, Math.floor((fileLimit - 100) / 2)));
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map(
    (t) => `  ${t}_temp_path ${join(dir, 'temp', t)};`,
  );
  const conf = [
    'daemon off;',
    'master_process on;',
    'worker_processes 1;',
    `worker_rlimit_nofile ${fileLimit};`,
    `pid ${join(dir, 'nginx.pid')};`,
    `error_log ${join(dir, 'error.log')} warn;`,
    `events { worker_connections ${workerConnections}; }`,
    'http {',
    '  access_log off;',
    ...temp,
    ...http.map((l) => `  ${l}`),
    '}',
    '',
  ].join('\n');
  const file = join(dir, 'nginx.conf');
  await writeFile(file, conf);
  // -e: the error log before the config is read (else /var/log/nginx/error.log).
  return startProcess(name, bin, ['-p', dir, '-e', join(dir, 'error.log'), '-c', file], {
    logFile: join(dir, 'stdout.log'),
  });
}
