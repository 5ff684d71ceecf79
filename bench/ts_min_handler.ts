/**
 * A diagnostic fault handler for the two-process scenarios (`--handler=min`): the least a
 * JavaScript handler can do, run in a Worker like the FaultServer's loop. poll([uffd, stop]),
 * read up to 32 messages, one UFFDIO_COPY of the faulting page from the source per fault (a
 * WAKE on EEXIST), nothing else: no page state, no window, no stats but a fault count. The
 * difference between it and the FaultServer is the cost of the server's own JavaScript; between
 * it and the C handler, the runtime's (its FFI calls, its thread).
 * @module
 */
import { libc } from "../ffi/mod.ts";

/** The Worker's start message. */
export interface MinHandlerInit {
  /** The uffd (this process's descriptor number). */
  fd: number;
  /** An eventfd: readable means stop. */
  stopFd: number;
  /** The served range's start (another process's address) and the source's address. */
  start: number;
  src: number;
  length: number;
  /** [0] faults, [1] reads, [2] pages placed, [3] state (1 running, 2 stopped). */
  counters: SharedArrayBuffer;
}

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent<MinHandlerInit>) => void) | null;
  postMessage(m: unknown): void;
};

const UFFDIO_COPY = 0xc028aa03;
const UFFDIO_WAKE = 0x8010aa02;
const EEXIST = 17;
const TWO32 = 4294967296;
const PS = 4096;

function run(m: MinHandlerInit): void {
  const counters = new Int32Array(m.counters);
  const pollfds = new Int32Array([m.fd, 1, m.stopFd, 1]);
  const revents = new Uint16Array(pollfds.buffer);
  const msg = new Uint8Array(32 * 32);
  const mw = new Uint32Array(msg.buffer);
  const cp = new Uint32Array(10);
  const cpb = new Uint8Array(cp.buffer);
  const cps = new Int32Array(cp.buffer);
  const wk = new Uint32Array(4);
  const wkb = new Uint8Array(wk.buffer);
  const start = m.start;
  const end = m.start + m.length;
  // src - start: the source address of a page is its address plus this (split in two words).
  const delta = m.src - m.start;
  cp[4] = PS;
  Atomics.store(counters, 3, 1);
  for (;;) {
    revents[3] = 0;
    revents[7] = 0;
    if (libc.poll(pollfds, 2, -1) < 0) continue;
    if (revents[7] !== 0) break;
    if (revents[3] === 0) continue;
    const n = libc.read(m.fd, msg, msg.byteLength);
    if (n <= 0) continue;
    counters[1]++;
    for (let i = 0, c = n >> 5; i < c; i++) {
      if (msg[i * 32] !== 0x12) continue; // UFFD_EVENT_PAGEFAULT (REMOVE needs nothing here)
      counters[0]++;
      const hi = mw[i * 8 + 5];
      const lo = (mw[i * 8 + 4] & ~(PS - 1)) >>> 0;
      const addr = hi * TWO32 + lo;
      if (addr < start || addr >= end) continue;
      const s = addr + delta;
      cp[0] = lo;
      cp[1] = hi;
      cp[2] = s % TWO32;
      cp[3] = (s - cp[2]) / TWO32;
      cp[8] = 0;
      cp[9] = 0;
      const r = libc.ioctl(m.fd, UFFDIO_COPY, cpb);
      if (r === 0 || cps[8] > 0) counters[2]++;
      else if (libc.errno() === EEXIST) {
        wk[0] = lo;
        wk[1] = hi;
        wk[2] = PS;
        libc.ioctl(m.fd, UFFDIO_WAKE, wkb);
      }
    }
  }
  Atomics.store(counters, 3, 2);
  Atomics.notify(counters, 3);
  scope.postMessage({ done: true });
}

scope.onmessage = (e: MessageEvent<MinHandlerInit>) => {
  scope.onmessage = null;
  try {
    run(e.data);
  } catch (err) {
    scope.postMessage({ error: err instanceof Error ? err.message : String(err) });
  }
};
