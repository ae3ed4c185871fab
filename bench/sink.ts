// The workload at the far end of every contender (child process): echoes or counts, per bench/protocol.ts.
// Usage: node dist/bench/sink.js <name>... ; it listens on one loopback port per name and sends
// { ports: { name: port } } to its parent over IPC.

import { type AddressInfo, type Server, type Socket, createServer } from 'node:net';
import { BULK_ACK, BULK_HEADER, MODE_BULK, MODE_ECHO, type SinkReady } from './protocol.js';

function handle(sock: Socket): void {
  sock.setNoDelay(true);
  sock.on('error', () => sock.destroy());
  let mode = 0;
  let header: Buffer | undefined;
  let want = -1;
  let got = 0;
  const onBulk = (chunk: Buffer): void => {
    if (want < 0) {
      header = header ? Buffer.concat([header, chunk]) : chunk;
      if (header.length < BULK_HEADER) return;
      want = Number(header.readBigUInt64BE(1));
      got = header.length - BULK_HEADER;
      header = undefined;
    } else {
      got += chunk.length;
    }
    if (got >= want) {
      sock.write(Buffer.of(BULK_ACK));
      want = Number.POSITIVE_INFINITY; // anything more is counted and dropped
    }
  };
  sock.on('data', (chunk: Buffer) => {
    if (mode === 0) {
      mode = chunk[0]!;
      if (mode !== MODE_ECHO && mode !== MODE_BULK) {
        sock.destroy();
        return;
      }
    }
    if (mode === MODE_ECHO) {
      sock.write(chunk);
    } else {
      onBulk(chunk);
    }
  });
  sock.on('end', () => sock.end());
}

async function main(): Promise<void> {
  const names = process.argv.slice(2);
  if (names.length === 0) throw new Error('usage: sink <name>...');
  const servers: Server[] = [];
  const ports: Record<string, number> = {};
  for (const name of names) {
    const server = createServer({ allowHalfOpen: true, noDelay: true }, handle);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, resolve);
    });
    servers.push(server);
    ports[name] = (server.address() as AddressInfo).port;
  }
  const ready: SinkReady = { ports };
  process.send?.(ready);
  // Before a latency measurement the parent asks for a full collection now rather than in the middle of it.
  process.on('message', (m: unknown) => {
    if (m === 'gc') {
      (globalThis as { gc?: () => void }).gc?.();
      process.send?.('gc-done');
    }
  });
  // The parent's end of the channel closing means it is gone: do not outlive it.
  process.on('disconnect', () => process.exit(0));
  process.on('SIGTERM', () => process.exit(0));
}

main().catch((err: unknown) => {
  process.stderr.write(`sink: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
