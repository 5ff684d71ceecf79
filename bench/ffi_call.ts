/**
 * The cost of one FFI call through the library's libc backend: `ioctl(-1, UFFDIO_COPY, buf)` (fails
 * with EBADF in the kernel at once, so it times the runtime's call path plus a trivial syscall),
 * then `read(-1, buf, 32)` and `poll(fds, 1, 0)` on an eventfd, the calls of the serving loop.
 * Prints ns per call and how much the JS heap grew over the calls (the fault path must not allocate).
 *
 *   deno run --allow-ffi bench/ffi_call.ts [calls]
 *   bun run bench/ffi_call.ts [calls]
 *   node .node/bench/ffi_call.js [calls]        (after node scripts/build.mjs --tests)
 */
import process from "node:process";
import { libc } from "../ffi/mod.ts";

const calls = Number(process.argv[2] ?? 5_000_000);
const UFFDIO_COPY = 0xc028aa03;
const buf = new Uint8Array(40);
const msg = new Uint8Array(32);
const EFD_NONBLOCK = 0o4000;
const efd = libc.syscall(290, /* eventfd2 */ 0, EFD_NONBLOCK);
const fds = new Int32Array([efd, 1 /* POLLIN */]);

function heapUsed(): number {
  return process.memoryUsage().heapUsed;
}

function time(name: string, n: number, f: () => number): string {
  for (let i = 0; i < 100_000; i++) f(); // warm up (JIT)
  const heap0 = heapUsed();
  const t0 = performance.now();
  let r = 0;
  for (let i = 0; i < n; i++) r |= f();
  const ns = ((performance.now() - t0) * 1e6) / n;
  const grew = Math.max(0, heapUsed() - heap0);
  if (r === 0x7fffffff) console.log(r); // keep the result alive
  return `${name} ${ns.toFixed(0)} ns (heap +${(grew / 1024).toFixed(0)} KiB)`;
}

const versions = process.versions as Record<string, string | undefined>;
const runtime = `${libc.runtime} ${versions[libc.runtime] ?? "?"}`;
libc.ioctl(-1, UFFDIO_COPY, buf);
const errno = libc.errno(); // EBADF (9), read right after the call
const ioctl = time("ioctl(-1)", calls, () => libc.ioctl(-1, UFFDIO_COPY, buf));
const read = time("read(-1)", Math.ceil(calls / 5), () => libc.read(-1, msg, 32));
const poll = time("poll(eventfd, 0)", Math.ceil(calls / 5), () => libc.poll(fds, 1, 0));
libc.close(efd);
console.log(`${runtime.padEnd(14)} ${ioctl}, errno ${errno}; ${read}; ${poll} [${calls} ioctl calls]`);
