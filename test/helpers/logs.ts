import { Writable } from 'node:stream';
import { pino } from 'pino';
import type { Logger } from '../../lib/log.js';

/** A logger factory for startCluster that keeps one node's JSON lines (parsed, in order); the others are silent. */
export function captureLogs(node = 'node-b'): {
  logger: (name: string) => Logger;
  lines: Record<string, unknown>[];
} {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split('\n'))
        if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  return {
    lines,
    logger: (name) => (name === node ? pino({ level: 'info' }, sink) : pino({ level: 'silent' })),
  };
}
