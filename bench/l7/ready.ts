// Waiting for a hop (or the upstream) to answer, failing early with its output if one of its processes exits.

import { type Spawned, sleep, stopProcess } from '../proc.js';
import { BODY_SIZE, postOnce } from './http1.js';

/** Until a POST through 127.0.0.1:`port` comes back 200 with the upstream's 1 KiB body, at most `ms`. */
export async function untilAnswers(
  port: number,
  ms: number,
  what: string,
  procs: readonly Spawned[],
): Promise<void> {
  const deadline = Date.now() + ms;
  let last = '';
  for (;;) {
    const dead = procs.find((p) => p.child.exitCode !== null || p.child.signalCode !== null);
    if (dead) throw new Error(`${what}: ${dead.name} exited:\n${dead.output()}`);
    try {
      const r = await postOnce(port, 2000);
      if (r.status === 200 && r.bodyBytes === BODY_SIZE) return;
      last = `status ${r.status}, ${r.bodyBytes} B of body`;
    } catch (e) {
      last = (e as Error).message;
    }
    if (Date.now() > deadline) {
      const out = procs.map((p) => `--- ${p.name}\n${p.output()}`).join('\n');
      throw new Error(
        `${what}: no 200 with ${BODY_SIZE} B through 127.0.0.1:${port} after ${ms} ms (${last})\n${out}`,
      );
    }
    await sleep(100);
  }
}

export async function stopAll(procs: readonly Spawned[]): Promise<void> {
  await Promise.all(procs.map((p) => stopProcess(p)));
}
