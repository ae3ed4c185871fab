// nginx as an L7 hop: proxy_pass to an upstream block with a keep-alive pool, one worker, no access log.

import { freePort, processTree } from '../../proc.js';
import type { L7Contender } from '../contender.js';
import { nginxBin, nginxVersion, startNginx } from '../nginx.js';
import { stopAll, untilAnswers } from '../ready.js';

export const INSTALL_HINT =
  'install it with `apt-get install -y nginx haproxy wrk` (or run bench/install.sh)';

export const contender: L7Contender = {
  name: 'nginx',
  description:
    'nginx, 1 worker: `proxy_pass` to an `upstream` with `keepalive 32`, `proxy_http_version 1.1`, ' +
    '`proxy_set_header Connection ""`, access log off',
  missing: () => (nginxBin() ? undefined : `nginx is not installed: ${INSTALL_HINT}`),
  version: nginxVersion,
  async start(ctx) {
    const port = await freePort();
    const proc = await startNginx(
      'nginx hop',
      ctx.dir,
      [
        'keepalive_requests 10000000;',
        'keepalive_timeout 600s;',
        'upstream up {',
        `  server 127.0.0.1:${ctx.upstreamPort};`,
        '  keepalive 32;',
        '  keepalive_requests 10000000;',
        '  keepalive_timeout 600s;',
        '}',
        'server {',
        `  listen 127.0.0.1:${port} backlog=4096;`,
        '  location / {',
        '    proxy_pass http://up;',
        '    proxy_http_version 1.1;',
        '    proxy_set_header Connection "";',
        '  }',
        '}',
      ],
      ctx.fileLimit,
    );
    try {
      await untilAnswers(port, 10_000, 'nginx', [proc]);
      // The master and its worker: the master does nothing per request, but it is part of the cost in memory.
      return { port, pids: processTree(proc.pid), stop: () => stopAll([proc]) };
    } catch (e) {
      await stopAll([proc]);
      throw e;
    }
  },
};
