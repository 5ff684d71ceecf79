// Main-thread side of tests/helpers/selftest_worker.ts.
import type { UffdEvent, Userfaultfd } from "../../mod.ts";
import { EventBuffer, UFFD_EVENT } from "../../mod.ts";
import type { WorkerReply, WorkerRequest } from "./selftest_worker.ts";

/** A selftest Worker; replies are queued and taken in order with {@link next}. */
export class SelftestWorker {
  #worker: Worker;
  #replies: WorkerReply[] = [];
  #waiters: ((r: WorkerReply) => void)[] = [];
  /** Raised by the worker (Atomics) when its current request is done, before it replies. */
  readonly done: Int32Array = new Int32Array(new SharedArrayBuffer(4));

  constructor() {
    this.#worker = new Worker(new URL("./selftest_worker.ts", import.meta.url), { type: "module" });
    this.#worker.onmessage = (e: MessageEvent<WorkerReply>) => {
      const w = this.#waiters.shift();
      if (w) w(e.data);
      else this.#replies.push(e.data);
    };
  }

  /** Sends a request (and lowers the done flag). */
  send(req: WorkerRequest): void {
    Atomics.store(this.done, 0, 0);
    this.#worker.postMessage({ req, done: this.done });
  }

  /** Whether the current request is done (its reply may still be on its way). */
  get finished(): boolean {
    return Atomics.load(this.done, 0) === 1;
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

/** Handles one pagefault message: its flags and address (EventBuffer's allocation-free reads). */
export type FaultHandler = (flags: number, address: number) => void;

/**
 * uffd_poll_thread() on the test's thread while `worker` runs a request: reads messages (in
 * batches, without an object per fault) and hands each pagefault to `handle` until the worker
 * is done and nothing is pending. Any other event fails unless `other` takes it. Throws after
 * `ms` (the caller's finally then closes the descriptor, which releases the worker).
 */
export function serveWhile(
  uffd: Userfaultfd,
  worker: SelftestWorker,
  ms: number,
  handle: FaultHandler,
  other?: (ev: UffdEvent) => void,
): number {
  const buf = new EventBuffer(64);
  const deadline = Date.now() + ms;
  let faults = 0;
  for (;;) {
    const n = uffd.readEvents(buf, { timeout: 5 });
    for (let i = 0; i < n; i++) {
      if (buf.code(i) === UFFD_EVENT.PAGEFAULT) {
        handle(buf.pagefaultFlags(i), buf.pagefaultAddress(i));
        faults++;
      } else if (other) other(buf.event(i));
      else throw new Error(`unexpected event ${JSON.stringify(buf.event(i))}`);
    }
    if (n === 0 && worker.finished) return faults;
    if (Date.now() > deadline) {
      throw new Error(`the worker was not done within ${ms} ms (${faults} faults served)`);
    }
  }
}
