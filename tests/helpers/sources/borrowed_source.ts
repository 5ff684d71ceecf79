// A page source for tests/mutants_loop.test.ts: page k holds byte k + 1, except that for one window
// (byte offset and length in options) it returns a view of memory at options.addr, which the kernel
// then copies from directly: memory the test registered with a userfaultfd of its own, so that the
// server's COPY blocks in the kernel on that memory's fault until the test resolves it (or poisons it,
// and the COPY answers EFAULT).
import { libc } from "../../../ffi/mod.ts";

let at = { offset: -1, length: 0, addr: 0 };

export function init(options: { offset: number; length: number; addr: number }): void {
  at = options;
}

export function fill(offset: number, dest: Uint8Array): Uint8Array | void {
  if (offset === at.offset && dest.length === at.length) return new Uint8Array(libc.view(at.addr, at.length));
  const ps = 4096;
  for (let k = 0; k * ps < dest.length; k++) dest.fill((offset / ps + k + 1) & 0xff, k * ps, (k + 1) * ps);
}
