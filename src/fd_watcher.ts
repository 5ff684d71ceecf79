/**
 * Waits for a descriptor to become readable without blocking the event loop, by
 * parking a Worker in poll(). Used by the async event iterator.
 * @module
 */
import { EventFd } from "./eventfd.ts";

/** Resolves {@link readable} when the watched descriptor can be read. */
export class FdWatcher {
  #worker: Worker;
  #stop = new EventFd();
  #ctrl = new Int32Array(new SharedArrayBuffer(4));
  #waiter: ((ok: boolean) => void) | undefined;
  #closed = false;

  constructor(fd: number) {
    this.#worker = new Worker(new URL("./fd_watcher_worker.ts", import.meta.url), { type: "module" });
    this.#worker.onmessage = (e: MessageEvent<string>) => {
      if (e.data === "stopped") {
        this.#worker.terminate();
        this.#stop.close();
        return;
      }
      const w = this.#waiter;
      this.#waiter = undefined;
      w?.(e.data === "readable");
    };
    this.#worker.postMessage({ fd, stopFd: this.#stop.fd, ctrl: this.#ctrl.buffer });
  }

  /** Resolves true when readable, false when closed. */
  readable(): Promise<boolean> {
    if (this.#closed) return Promise.resolve(false);
    return new Promise<boolean>((resolve) => {
      this.#waiter = resolve;
      Atomics.store(this.#ctrl, 0, 1);
      Atomics.notify(this.#ctrl, 0);
    });
  }

  /** Stops the Worker and releases the stop descriptor; safe twice. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    Atomics.store(this.#ctrl, 0, 2);
    Atomics.notify(this.#ctrl, 0);
    this.#stop.signal();
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.(false);
    // The Worker wakes from poll() or Atomics.wait() and answers "stopped"; only then
    // is it terminated and the stop descriptor closed, never under its poll().
  }
}
