import { type AddressInfo, connect, createServer } from 'node:net';

// Loopback helpers shared by the tests and the bench.

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** `p`, or a rejection naming `what` once `ms` have passed. */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** The first emission of `event`, as its arguments (never rejects: 'error' is not special here). */
export function next(emitter: NodeJS.EventEmitter, event: string): Promise<unknown[]> {
  return new Promise((resolve) => emitter.once(event, (...args: unknown[]) => resolve(args)));
}

// Below Linux's ephemeral range (32768-60999 by default): a port the OS picked for us from that range can be
// taken as the source port of any outgoing connection before we listen on it (EADDRINUSE, seen in CI).
const LOW = 20_000;
const HIGH = 32_767;
const handedOut = new Set<number>();

function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => {
      const { port: got } = s.address() as AddressInfo;
      s.close(() => resolve(got === port));
    });
  });
}

/** A port nothing listens on right now, outside the ephemeral range, never the same twice in a process. */
export async function freePort(): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const port = LOW + Math.floor(Math.random() * (HIGH - LOW + 1));
    if (handedOut.has(port)) continue;
    if (await bindable(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error(`no free port found in ${LOW}-${HIGH} after 200 tries`);
}

/** Resolves once something accepts TCP on 127.0.0.1:port (bounded: gives up after `ms`). */
export async function waitForPort(port: number, ms = 5000, what = 'port'): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline)
      throw new Error(`${what}: nothing listens on 127.0.0.1:${port} after ${ms} ms`);
    await sleep(50);
  }
}
