/**
 * The fault-handling thread of `manpage_demo.ts` (`fault_handler_thread()` in the
 * userfaultfd(2) example), as a Worker: poll the userfaultfd and a stop eventfd, read
 * one event, copy a page filled with the next letter into the faulting page.
 *
 * It never blocks in read(): it reads only after poll() said the (non-blocking)
 * descriptor is readable, and it leaves its loop when the stop descriptor fires, so
 * the main thread can always stop it cleanly.
 * @module
 */
import { Mapping, pageSize, Userfaultfd } from "../mod.ts";
import { libc } from "../ffi/mod.ts";
import { POLLIN } from "../src/eventfd.ts";

/** What the main thread sends to start the handler. */
export interface HandlerStart {
  /** The userfaultfd descriptor number (handshake done, non-blocking). */
  fd: number;
  /** An eventfd that becomes readable when the handler must stop. */
  stopFd: number;
  /** The registered region, declared in this thread with `Mapping.adopt`. */
  start: number;
  /** Its length in bytes. */
  len: number;
  /** `[faults served, failed]`, shared with the main thread. */
  shared: SharedArrayBuffer;
}

const POLLERR = 8;
const EINTR = 4;

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent<HandlerStart>) => void) | null;
  postMessage(m: unknown): void;
  close(): void;
};

function serve(init: HandlerStart): void {
  const shared = new Int32Array(init.shared);
  let uffd: Userfaultfd | undefined;
  let region: Mapping | undefined;
  let page: Mapping | undefined;
  try {
    // Declare the main thread's region here: the library checks every range against the
    // mappings its thread knows. The descriptor stays owned (and closed) by the main thread.
    region = Mapping.adopt(init.start, init.len);
    uffd = Userfaultfd.fromFd(init.fd, 0);
    // The page that will be copied into the faulting region.
    page = Mapping.anonymous(pageSize);
    const pageBytes = page.bytes();
    const pollfds = new Int32Array([init.fd, POLLIN, init.stopFd, POLLIN]);
    const revents = new Uint16Array(pollfds.buffer); // revents of fd i at [4 * i + 3]
    let faultCnt = 0; // Number of faults so far handled

    for (;;) {
      // See what poll() tells us about the userfaultfd (and the stop descriptor).
      revents[3] = 0;
      revents[7] = 0;
      const nready = libc.poll(pollfds, 2, -1);
      if (nready === -1) {
        if (libc.errno() === EINTR) continue;
        throw new Error(`poll: errno ${libc.errno()}`);
      }
      if (revents[7] !== 0) break; // asked to stop
      console.log("\nfault_handler_thread():");
      console.log(
        `    poll() returns: nready = ${nready}; POLLIN = ${(revents[3] & POLLIN) !== 0 ? 1 : 0}; ` +
          `POLLERR = ${(revents[3] & POLLERR) !== 0 ? 1 : 0}`,
      );

      // Read an event from the userfaultfd.
      const ev = uffd.readEvent();
      if (ev === undefined) continue; // nothing pending after all (non-blocking read)

      // We expect only one kind of event; verify that assumption.
      if (ev.type !== "pagefault") throw new Error("Unexpected event on userfaultfd");

      // Display info about the page-fault event.
      console.log(
        `    UFFD_EVENT_PAGEFAULT event: flags = ${ev.flags.toString(16)}; address = ${
          ev.address.toString(16)
        }`,
      );

      // Copy the page into the faulting region. Vary the contents that are copied in,
      // so that it is more obvious that each fault is handled separately.
      pageBytes.fill(0x41 + faultCnt % 20); // 'A' + fault_cnt % 20
      faultCnt++;

      // Faults are handled in units of pages: round the address down to a page boundary.
      const copied = uffd.copy({
        start: ev.address - ev.address % pageSize,
        len: pageSize,
        src: page.address,
      });
      console.log(`        (uffdio_copy.copy returned ${copied})`);
      // The faulting thread is already running again; tell it this fault's lines are out.
      Atomics.store(shared, 0, faultCnt);
      Atomics.notify(shared, 0);
    }
  } catch (e) {
    console.error(`manpage_demo_handler: ${e instanceof Error ? e.message : e}`);
    Atomics.store(shared, 1, 1);
    Atomics.notify(shared, 0);
    // Closing the descriptor wakes the main thread if it is blocked in a fault (the page
    // then reads as zero); it sees the failure flag and exits without closing it again.
    if (uffd) uffd.close();
    else libc.close(init.fd);
  } finally {
    page?.close();
    region?.close(); // adopted: forgets the range, does not unmap it
  }
}

scope.onmessage = (e: MessageEvent<HandlerStart>) => {
  scope.onmessage = null;
  scope.postMessage("serving");
  serve(e.data); // returns when the stop descriptor fires (or on a fatal error)
  scope.postMessage("stopped");
  scope.close();
};
