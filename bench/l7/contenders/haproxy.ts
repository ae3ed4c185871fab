// HAProxy as an L7 hop: mode http, one thread, server-side connections reused, keep-alive on both sides.

import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { commandLine, freePort, startProcess, which } from '../../proc.js';
import type { L7Contender } from '../contender.js';
import { stopAll, untilAnswers } from '../ready.js';
import { INSTALL_HINT } from './nginx.js';

const bin = (): string | undefined => which('haproxy');

export const contender: L7Contender = {
  name: 'haproxy',
  description: 'HAProxy, `nbthread 1`: `mode http`, `option http-keep-alive`, `http-reuse always`',
  missing: () => (bin() ? undefined : `haproxy is not installed: ${INSTALL_HINT}`),
  version() {
    const b = bin();
    if (!b) return 'missing';
    return (
      commandLine(b, ['-v'], /^HA-?Proxy version/)?.replace(/ - https.*$/, '') ?? 'HAProxy (unknown version)'
    );
  },
  async start(ctx) {
    const b = bin()!;
    const port = await freePort();
    const maxconn = Math.max(100, Math.min(30_000, Math.floor((ctx.fileLimit - 200) / 2)));
    const cfg = join(ctx.dir, 'haproxy.cfg');
    await writeFile(
      cfg,
      [
        'global',
        '  nbthread 1',
        `  maxconn ${maxconn}`,
        'defaults',
        '  mode http',
        '  option http-keep-alive',
        '  http-reuse always',
        `  maxconn ${maxconn}`,
        '  timeout connect 5s',
        '  timeout client 10m',
        '  timeout server 10m',
        '  timeout http-keep-alive 10m',
        'frontend l7_in',
        `  bind 127.0.0.1:${port}`,
        '  default_backend upstream',
        'backend upstream',
        `  server up 127.0.0.1:${ctx.upstreamPort}`,
        '',
      ].join('\n'),
    );
    const check = startProcess('haproxy -c', b, ['-c', '-q', '-f', cfg]);
    const status = await check.exited;
    if (status !== 'code 0') {
      throw new Error(
        `haproxy rejects its config (${status}):\n${check.output()}\n${await readFile(cfg, 'utf8')}`,
      );
    }
    const proc = startProcess('haproxy hop', b, ['-db', '-f', cfg], {
      logFile: join(ctx.dir, 'haproxy.log'),
    });
    try {
      await untilAnswers(port, 10_000, 'haproxy', [proc]);
      return { port, pids: [proc.pid], stop: () => stopAll([proc]) };
    } catch (e) {
      await stopAll([proc]);
      throw e;
    }
  },
};
