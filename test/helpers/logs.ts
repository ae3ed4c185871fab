// The daemons' log lines, kept in memory per node, for tests that read the access log.
import { Writable } from 'node:stream';
import pino from 'pino';
import type { Logger } from '../../lib/log.js';

export type LogLine = Record<string, unknown>;

/** A logger per node (for startCluster's `logger`) and every line each wrote, parsed. */
export function captureLogs(level = 'info'): {
  lines: Map<string, LogLine[]>;
  logger: (node: string) => Logger;
} {
  const lines = new Map<string, LogLine[]>();
  return {
    lines,
    logger: (node) => {
      const mine: LogLine[] = [];
      lines.set(node, mine);
      const sink = new Writable({
        write(chunk: Buffer, _enc, done) {
          for (const l of chunk.toString().split('\n')) if (l) mine.push(JSON.parse(l) as LogLine);
          done();
        },
      });
      return pino({ level }, sink);
    },
  };
}
