/**
 * Workers of the TS scenarios: a toucher (threads-4) and a write-protect handler
 * (wp-roundtrip). Only the library, ffi/mod.ts (for a view of an address) and the
 * shared-memory primitives are used.
 * @module
 */
import { EventBuffer, Mapping, UFFD_EVENT, Userfaultfd } from "../mod.ts";
import { libc } from "../ffi/mod.ts";
import { PS } from "./common.ts";

/** ctrl words shared with the main thread. */
export const GO = 0;
/** Workers done (touchers) or faults handled (wp). */
export const DONE = 1;
/** Workers ready. */
export const READY = 2;

/** Message starting a toucher. */
export interface TouchInit {
  kind: "touch";
  addr: number;
  len: number;
  from: number;
  to: number;
  ctrl: SharedArrayBuffer;
}

/** Message starting the write-protect handler. */
export interface WpInit {
  kind: "wp";
  fd: number;
  start: number;
  len: number;
  faults: number;
  ctrl: SharedArrayBuffer;
}

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent<TouchInit | WpInit>) => void) | null;
  postMessage(m: unknown): void;
};

/** Reads one byte of each page in [from, to): the toucher's loop, timed and warmed alike. */
function touchRange(mem: Uint8Array, from: number, to: number): number {
  let acc = 0;
  for (let p = from; p < to; p++) acc += mem[p * PS];
  return acc;
}

/**
 * Runs touchRange on present memory until the JIT has compiled it, as the main thread's
 * warm-up pass does for its own loop: a fresh Worker would otherwise run the timed pass
 * interpreted and compile it on the same CPU.
 */
function warmTouch(): number {
  const pages = 256;
  const local = new Uint8Array(new ArrayBuffer(pages * PS));
  let acc = 0;
  for (let i = 0; i < 2000; i++) acc += touchRange(local, 0, pages);
  return acc;
}

function touch(m: TouchInit): void {
  const ctrl = new Int32Array(m.ctrl);
  const mem = new Uint8Array(libc.view(m.addr, m.len));
  warmTouch();
  Atomics.wait(ctrl, GO, 0, 50); // let the background compiler finish before the timed pass
  Atomics.add(ctrl, READY, 1);
  Atomics.notify(ctrl, READY);
  Atomics.wait(ctrl, GO, 0);
  const acc = touchRange(mem, m.from, m.to);
  Atomics.add(ctrl, DONE, 1);
  Atomics.notify(ctrl, DONE);
  scope.postMessage({ acc });
}

function wp(m: WpInit): void {
  const ctrl = new Int32Array(m.ctrl);
  // The descriptor and the mapping belong to the main thread: wrap and declare them here.
  const uffd = Userfaultfd.fromFd(m.fd, 0);
  const region = Mapping.adopt(m.start, m.len);
  const buf = new EventBuffer(32);
  // Reused option objects and the buffer's allocation-free accessors: nothing allocated per fault.
  // poll(2)'s largest timeout (about 24 days), as C's poll(-1): readEvents refuses a negative one,
  // and without a timeout a read of this non-blocking descriptor would not wait at all.
  const wait = { timeout: 2 ** 31 - 1 };
  const unprotect = { start: 0, len: PS, wp: false };
  Atomics.add(ctrl, READY, 1);
  Atomics.notify(ctrl, READY);
  let handled = 0;
  while (handled < m.faults) {
    const n = uffd.readEvents(buf, wait);
    for (let i = 0; i < n; i++) {
      if (buf.code(i) !== UFFD_EVENT.PAGEFAULT) continue;
      const address = buf.pagefaultAddress(i);
      unprotect.start = address - (address % PS);
      uffd.writeprotect(unprotect);
      handled++;
    }
  }
  Atomics.store(ctrl, DONE, handled);
  Atomics.notify(ctrl, DONE);
  region.close();
  scope.postMessage({ handled });
}

scope.onmessage = (e: MessageEvent<TouchInit | WpInit>) => {
  scope.onmessage = null;
  try {
    if (e.data.kind === "touch") touch(e.data);
    else wp(e.data);
  } catch (err) {
    scope.postMessage({ error: err instanceof Error ? err.message : String(err) });
  }
};
