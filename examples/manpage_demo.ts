/**
 * The example program of userfaultfd(2) ("userfaultfd_demo.c"), rewritten on `uffd`.
 *
 * It maps `num-pages` pages of anonymous memory, registers them for missing-page
 * faults, and reads one byte every 1024 bytes. The first read of each page faults; a
 * handler thread (here a Worker, `manpage_demo_handler.ts`) copies in a page filled with
 * the next letter, so every read of page 0 prints `A`, of page 1 `B`, and so on.
 *
 * ```sh
 * deno run --allow-ffi --allow-read examples/manpage_demo.ts 3
 * bun run examples/manpage_demo.ts 3
 * ```
 *
 * The output has the same lines as the C program's, in the order its sample output
 * shows. Differences from the C program:
 * - On kernels since 5.x the fault address is rounded down to the page unless the
 *   `EXACT_ADDRESS` feature is requested; like the C program on such a kernel, this one
 *   prints the rounded address (the man page's sample shows `...c00f`).
 * - The C program can print a `Read address` line before the handler's
 *   `(uffdio_copy.copy returned 4096)` line (the copy wakes the reader first); here the
 *   reader waits for the handler's line, so the order is always the documented one.
 * - The C program sleeps 100 ms after every read "to slow things down"; that would add
 *   1.2 s for 3 pages and change nothing, so it is left out.
 * - The descriptor is user-mode-only (the library's safe default): the faults come from
 *   user code, so nothing is lost. At the end the handler is stopped through an eventfd
 *   and the descriptor closed, so the process exits by itself.
 * @module
 */
import process from "node:process";
import { Mapping, pageSize, UffdError, Userfaultfd } from "../mod.ts";
import { EventFd } from "../src/eventfd.ts";
import type { HandlerStart } from "./manpage_demo_handler.ts";

/** `strtoull(s, NULL, 0)`: decimal, `0x` hex or `0` octal prefix; 0 when there are no digits. */
function strtoull(s: string): number {
  const t = s.trim();
  const m = /^0[xX]([0-9a-fA-F]+)/.exec(t) ?? /^(0[0-7]*)/.exec(t) ?? /^\+?(\d+)/.exec(t);
  if (!m) return 0;
  if (/^0[xX]/.test(t)) return parseInt(m[1], 16);
  if (t.startsWith("0")) return parseInt(m[1], 8);
  return parseInt(m[1], 10);
}

function fail(what: string, e: unknown): never {
  console.error(`manpage_demo: ${what}: ${e instanceof Error ? e.message : e}`);
  process.exit(1);
}

function nextMessage(worker: Worker): Promise<unknown> {
  return new Promise((resolve, reject) => {
    worker.onmessage = (e: MessageEvent) => resolve(e.data);
    worker.onerror = (e: ErrorEvent) => {
      e.preventDefault();
      reject(new Error(e.message));
    };
  });
}

if (process.argv.length !== 3) {
  console.error(`Usage: ${process.argv[1]} num-pages`);
  process.exit(1);
}
const len = strtoull(process.argv[2]) * pageSize;

// Create and enable the userfaultfd object: O_CLOEXEC | O_NONBLOCK, UFFDIO_API with no features.
let uffd: Userfaultfd;
try {
  uffd = Userfaultfd.open({ nonBlocking: true });
} catch (e) {
  fail(e instanceof UffdError ? e.op : "userfaultfd", e);
}

// A private anonymous mapping: demand-zero paged, not yet allocated.
let mem: Mapping;
try {
  mem = Mapping.anonymous(len);
} catch (e) {
  fail("mmap", e);
}
console.log(`Address returned by mmap() = 0x${mem.address.toString(16)}`);

// Register the mapping for missing-page faults.
try {
  uffd.register(mem, { missing: true });
} catch (e) {
  fail("ioctl-UFFDIO_REGISTER", e);
}

// Start the thread that processes the userfaultfd events, and wait until it serves.
const stop = new EventFd();
const shared = new Int32Array(new SharedArrayBuffer(8)); // [faults served, handler failed]
const worker = new Worker(new URL("./manpage_demo_handler.ts", import.meta.url), { type: "module" });
const serving = nextMessage(worker);
worker.postMessage(
  { fd: uffd.fd, stopFd: stop.fd, start: mem.address, len, shared: shared.buffer } satisfies HandlerStart,
);
if ((await serving) !== "serving") fail("handler", "did not start");

// Touch locations 1024 bytes apart, starting off a page boundary (0xf) to show that the
// handler deals with unaligned fault addresses. The first touch of each page faults.
const view = mem.bytes();
let pagesTouched = 0;
for (let l = 0xf; l < len; l += 1024) {
  const c = view[l]; // blocks here, in the kernel, until the handler has copied the page in
  const page = Math.floor(l / pageSize);
  if (page >= pagesTouched) {
    pagesTouched = page + 1;
    // The copy woke us; let the handler finish printing this fault before we print.
    while (Atomics.load(shared, 0) < pagesTouched && Atomics.load(shared, 1) === 0) {
      Atomics.wait(shared, 0, Atomics.load(shared, 0), 100);
    }
    if (Atomics.load(shared, 1) !== 0) process.exit(1); // the handler failed and closed the uffd
  }
  console.log(`Read address 0x${(mem.address + l).toString(16)} in main(): ${String.fromCharCode(c)}`);
}

// Stop the handler (it is in poll(), never in a blocking read), then release everything.
const stopped = nextMessage(worker);
stop.signal();
await stopped;
worker.terminate();
stop.close();
uffd.close();
mem.close();
