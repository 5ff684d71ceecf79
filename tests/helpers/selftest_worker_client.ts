// Main-thread side of tests/helpers/selftest_worker.ts.
import type { WorkerReply, WorkerRequest } from "./selftest_worker.ts";

/** A selftest Worker; replies are queued and taken in order with {@link next}. */
export class SelftestWorker {
  #worker: Worker;
  #replies: WorkerReply[] = [];
  #waiters: ((r: WorkerReply) => void)[] = [];

  constructor() {
    this.#worker = new Worker(new URL("./selftest_worker.ts", import.meta.url), { type: "module" });
    this.#worker.onmessage = (e: MessageEvent<WorkerReply>) => {
      const w = this.#waiters.shift();
      if (w) w(e.data);
      else this.#replies.push(e.data);
    };
  }

  /** Sends a request. */
  send(req: WorkerRequest): void {
    this.#worker.postMessage(req);
  }

  /** The next reply, or a rejection after `ms`. */
  next(ms: number, what: string): Promise<WorkerReply> {
    const queued = this.#replies.shift();
    if (queued) return Promise.resolve(queued);
    let timer: ReturnType<typeof setTimeout> | undefined;
    return new Promise<WorkerReply>((resolve, reject) => {
      const w = (r: WorkerReply) => {
        clearTimeout(timer);
        resolve(r);
      };
      this.#waiters.push(w);
      timer = setTimeout(() => {
        const i = this.#waiters.indexOf(w);
        if (i >= 0) this.#waiters.splice(i, 1);
        reject(new Error(`${what}: no answer within ${ms} ms`));
      }, ms);
    });
  }

  /** Terminates the Worker (only once it is not blocked in a fault). */
  close(): void {
    this.#worker.terminate();
  }
}
