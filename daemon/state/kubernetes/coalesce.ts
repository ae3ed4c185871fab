/**
 * One run at a time of `run`; a call while one is under way asks for one more after it, however many
 * calls came (the state they sync is read afresh by each run). `stop()` says a further run is not wanted.
 */
export class Coalesced {
  readonly #run: () => Promise<void>;
  readonly #stop: () => boolean;
  #running: Promise<void> | undefined;
  #again = false;

  constructor(run: () => Promise<void>, stop: () => boolean = () => false) {
    this.#run = run;
    this.#stop = stop;
  }

  /** Resolves once a run that began at or after this call has finished. */
  sync(): Promise<void> {
    if (this.#running) {
      this.#again = true;
      return this.#running;
    }
    this.#running = (async () => {
      try {
        do {
          this.#again = false;
          await this.#run();
        } while (this.#again && !this.#stop());
      } finally {
        this.#running = undefined;
      }
    })();
    return this.#running;
  }
}
