/**
 * Waits for a descriptor to become readable without blocking the event loop, by
 * parking a Worker in poll(). Used by the async event iterator.
 *
 * With a `consumer` thread id (a userfaultfd opened with THREAD_ID), the Worker also watches for
 * the one hang it can see: the thread that reads the events blocked on a fault of the very
 * descriptor it serves. Nothing can ever serve that fault (the only server waits for itself), so
 * the Worker says so on stderr and ends the process (status 70) instead of letting it hang.
 * @module
 */
import { EventFd } from "./eventfd.ts";
import { UFFD_MSG_SIZE } from "./structs.ts";

/** How many messages the Worker may set aside while it looks for the consumer's own fault. */
export const STASH_CAPACITY = 64;
/** Byte offset of the stashed messages in the stash buffer (after the count and lock words). */
export const STASH_OFFSET = 64;

/** The thread that reads the events, for the self-fault watch. */
export interface FdWatcherConsumer {
  /** Its thread id (gettid()); a pagefault with this `ptid` is its own. */
  tid: number;
  /** How long it may stay away (blocked) before the Worker checks on it, ms. */
  graceMs: number;
}

/** Resolves {@link readable} when the watched descriptor can be read. */
export class FdWatcher {
  #worker: Worker;
  #stop = new EventFd();
  #ctrl = new Int32Array(new SharedArrayBuffer(4));
  /** [0] count of stashed messages, [1] lock; messages from STASH_OFFSET. */
  #stash = new SharedArrayBuffer(STASH_OFFSET + STASH_CAPACITY * UFFD_MSG_SIZE);
  #stashWords = new Int32Array(this.#stash, 0, 2);
  #waiter: ((ok: boolean) => void) | undefined;
  #closed = false;

  constructor(fd: number, consumer?: FdWatcherConsumer) {
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
    this.#worker.postMessage({
      fd,
      stopFd: this.#stop.fd,
      ctrl: this.#ctrl.buffer,
      stash: this.#stash,
      consumerTid: consumer?.tid ?? 0,
      graceMs: consumer?.graceMs ?? 0,
    });
  }

  /**
   * Moves the messages the Worker read and set aside (while the consumer was blocked elsewhere)
   * into `bytes`; returns how many (at most `bytes.length / 32`).
   */
  takeStashed(bytes: Uint8Array): number {
    const words = this.#stashWords;
    if (Atomics.load(words, 0) === 0) return 0;
    while (Atomics.compareExchange(words, 1, 0, 1) !== 0) { /* the Worker holds it for a copy */ }
    const n = Math.min(Atomics.load(words, 0), Math.floor(bytes.length / UFFD_MSG_SIZE));
    const held = new Uint8Array(this.#stash, STASH_OFFSET, Atomics.load(words, 0) * UFFD_MSG_SIZE);
    bytes.set(held.subarray(0, n * UFFD_MSG_SIZE));
    held.copyWithin(0, n * UFFD_MSG_SIZE);
    Atomics.sub(words, 0, n);
    Atomics.store(words, 1, 0);
    return n;
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
