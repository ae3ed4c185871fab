// The load generator and the sink: child processes of the bench, spoken to over IPC (bench/protocol.ts), so
// that their CPU and memory are never charged to a contender. Used by run.ts and ab.ts.

import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Spawned, startProcess, stopProcess } from './proc.js';
import type { Job, JobReply, JobResult, SinkReady } from './protocol.js';

const here = dirname(fileURLToPath(import.meta.url)); // dist/bench

// ---- the load generator and sink, child processes spoken to over IPC

export class LoadGen {
  #proc: Spawned | undefined;
  #next = 1;
  #pending = new Map<number, { resolve: (r: JobResult) => void; reject: (e: Error) => void }>();

  #start(): Spawned {
    const p = startProcess('loadgen', process.execPath, ['--expose-gc', join(here, 'loadgen.js')], {
      ipc: true,
    });
    p.child.on('message', (m: JobReply) => {
      const waiter = this.#pending.get(m.id);
      if (!waiter) return;
      this.#pending.delete(m.id);
      if (m.error !== undefined) waiter.reject(new Error(m.error));
      else waiter.resolve(m.result!);
    });
    p.exited.then((status) => {
      for (const w of this.#pending.values()) w.reject(new Error(`load generator exited (${status})`));
      this.#pending.clear();
      if (this.#proc === p) this.#proc = undefined;
    });
    this.#proc = p;
    return p;
  }

  /** Runs one job; a job that overruns `timeoutMs` kills the generator (the next job gets a fresh one). */
  async run<T extends JobResult>(job: Job, timeoutMs: number): Promise<T> {
    const p = this.#proc ?? this.#start();
    const id = this.#next++;
    let timer: NodeJS.Timeout | undefined;
    try {
      return (await new Promise<JobResult>((resolve, reject) => {
        this.#pending.set(id, { resolve, reject });
        timer = setTimeout(() => {
          this.#pending.delete(id);
          reject(new Error(`${job.kind} did not finish within ${Math.round(timeoutMs / 1000)} s`));
          void stopProcess(p, 500);
        }, timeoutMs);
        p.child.send({ id, job });
      })) as T;
    } finally {
      clearTimeout(timer);
    }
  }

  async close(): Promise<void> {
    if (this.#proc) await stopProcess(this.#proc, 1000);
  }
}

export interface Sink {
  proc: Spawned;
  ports: Record<string, number>;
  /** A full GC in the sink, now rather than during the next latency measurement. */
  collect(): Promise<void>;
}

export async function startSink(names: readonly string[]): Promise<Sink> {
  const proc = startProcess('sink', process.execPath, ['--expose-gc', join(here, 'sink.js'), ...names], {
    ipc: true,
  });
  const ports = await new Promise<Record<string, number>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`sink did not start:\n${proc.output()}`)), 10_000);
    proc.child.once('message', (m: SinkReady) => {
      clearTimeout(timer);
      resolve(m.ports);
    });
    proc.exited.then((s) => reject(new Error(`sink exited (${s}):\n${proc.output()}`)));
  });
  const collect = (): Promise<void> =>
    new Promise((resolve) => {
      const timer = setTimeout(resolve, 5000);
      proc.child.once('message', () => {
        clearTimeout(timer);
        resolve();
      });
      proc.child.send('gc');
    });
  return { proc, ports, collect };
}
