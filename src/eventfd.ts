/**
 * A tiny eventfd wrapper: the stop descriptor that ends every poll loop.
 * @module
 */
import { libc } from "../ffi/mod.ts";
import { O_CLOEXEC, O_NONBLOCK } from "./abi.ts";
import { UffdError } from "./errors.ts";

const NR_eventfd2 = 290;

/** An eventfd used to wake a thread blocked in `poll()`. */
export class EventFd {
  /** The descriptor. */
  readonly fd: number;
  #closed = false;
  #one = new BigUint64Array([1n]);

  constructor() {
    this.fd = libc.syscall(NR_eventfd2, 0, O_CLOEXEC | O_NONBLOCK);
    if (this.fd < 0) throw new UffdError("eventfd", libc.errno());
  }

  /** Makes the descriptor readable (wakes pollers). */
  signal(): void {
    if (!this.#closed) libc.write(this.fd, this.#one, 8);
  }

  /** Closes the descriptor; safe twice. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    libc.close(this.fd);
  }
}

/** Bytes of one `struct pollfd`. */
export const POLLFD_SIZE = 8;
/** `POLLIN`. */
export const POLLIN = 1;
