// The upstream server every contender forwards to: nginx answering any request with a fixed 1 KiB body
// from memory (`return 200`), one worker, in its own process, the same for the whole run. Returning a
// constant costs nginx less than proxying does, so it is not what limits a hop.

import { freePort } from '../proc.js';
import type { Spawned } from '../proc.js';
import { BODY_SIZE } from './http1.js';
import { startNginx } from './nginx.js';
import { untilAnswers } from './ready.js';

export interface Upstream {
  readonly port: number;
  readonly proc: Spawned;
}

export async function startUpstream(dir: string, fileLimit: number): Promise<Upstream> {
  const port = await freePort();
  const body = 'x'.repeat(BODY_SIZE);
  const proc = await startNginx(
    'upstream nginx',
    dir,
    [
      // Keep-alive connections from the hops are never closed by request count or a short idle timeout.
      'keepalive_requests 10000000;',
      'keepalive_timeout 600s;',
      'client_body_buffer_size 16k;',
      'server {',
      `  listen 127.0.0.1:${port} backlog=4096;`,
      `  location / { default_type application/octet-stream; return 200 "${body}"; }`,
      '}',
    ],
    fileLimit,
  );
  await untilAnswers(port, 10_000, 'upstream', [proc]);
  return { port, proc };
}
