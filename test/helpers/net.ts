import { type AddressInfo, connect, createServer } from 'node:net';

// Loopback helpers shared by the tests and the bench.

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A port nothing listens on right now: bound by the OS for us, then released. */
export async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
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
