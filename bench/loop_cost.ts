/**
 * The fault loop's own JavaScript per fault, without the kernel: `serve()` of
 * src/server/loop.ts runs on this thread with libc's `poll`, `read` and `ioctl` replaced by
 * stubs (poll: the uffd is readable; read: `batch` page-fault messages for the next pages in
 * order; ioctl: a COPY that placed its whole length). A second loop, the least a handler does
 * (bench/ts_min_handler.ts's loop, against the same stubs), gives the floor. Prints ns per fault
 * of both and their difference: what the server's bookkeeping costs per fault, to compare
 * versions of loop.ts without the noise of real faults on a shared machine.
 *
 *   deno run -A bench/loop_cost.ts [faults] [batch] [readahead] [another loop module]
 *   bun run bench/loop_cost.ts ...;  node .node/bench/loop_cost.js ...
 *
 * Defaults: 5,000,000 faults, batch 4 (about what threads-4 reads per read()), readahead 1.
 * @module
 */
import process from "node:process";
import { libc } from "../ffi/mod.ts";
import { serve as currentServe } from "../src/server/loop.ts";
import {
  CTRL_COUNT,
  ERROR_BYTES,
  PAGE,
  REGION_WORDS,
  type ServerInit,
  STAT,
  STAT_COUNT,
} from "../src/server/layout.ts";

const faults = Number(process.argv[2] ?? 5_000_000);
const batch = Number(process.argv[3] ?? 4);
const readahead = Number(process.argv[4] ?? 1);
// Another version of the loop to time instead (a module exporting the same serve()), for A/B runs.
const serve: typeof currentServe = process.argv[5]
  ? (await import(new URL(process.argv[5], `file://${process.cwd()}/`).href)).serve
  : currentServe;
const PS = 4096;
const NPAGES = 65536;
const TWO32 = 4294967296;
const BASE = 0x7f12_3400_0000; // a served address above 2^32, as real ones are
const FD = 1000;
const STOP = 1001;

const real = { poll: libc.poll, read: libc.read, ioctl: libc.ioctl, errno: libc.errno };
type Stubs = {
  poll: typeof libc.poll;
  read: typeof libc.read;
  ioctl: typeof libc.ioctl;
  errno: () => number;
};

/**
 * Stubs serving `total` faults on sequential pages, then the stop descriptor. `marks[k]` gets
 * the time when the first `every * k` faults had been handed out (the loop has handled them all
 * by the next read), so that one call of serve() is timed in segments: its closures are created
 * once, as in the server's Worker (a second call would make V8 see "many closures" and stop
 * inlining them). One set of stubs for the whole run, for the same reason.
 */
const stub = {
  left: 0,
  given: 0,
  next: 0,
  every: 1,
  marks: [] as number[],
  pages: undefined as Uint8Array | undefined,
  rv: new Uint16Array(0) as Uint16Array<ArrayBufferLike>,
  rvOf: undefined as ArrayBufferLike | undefined,
  mw: new Uint32Array(0) as Uint32Array<ArrayBufferLike>,
  mwOf: undefined as ArrayBufferLike | undefined,
  aw: new Int32Array(0) as Int32Array<ArrayBufferLike>,
  awOf: undefined as ArrayBufferLike | undefined,
};

function reset(total: number, pages: Uint8Array | undefined, every: number, marks: number[]): void {
  stub.left = total;
  stub.given = 0;
  stub.next = 0;
  stub.every = every;
  stub.marks = marks;
  stub.pages = pages;
}

const stubs: Stubs = {
  poll: (fds) => {
    if (stub.rvOf !== fds.buffer) {
      stub.rvOf = fds.buffer;
      stub.rv = new Uint16Array(fds.buffer);
    }
    if (stub.left > 0) stub.rv[3] = 1;
    else {
      if (stub.given % stub.every === 0) stub.marks[stub.given / stub.every] = performance.now();
      stub.rv[7] = 1;
    }
    return 1;
  },
  read: (_fd, buf) => {
    if (stub.given % stub.every === 0) stub.marks[stub.given / stub.every] = performance.now();
    if (stub.mwOf !== buf.buffer) {
      stub.mwOf = buf.buffer;
      stub.mw = new Uint32Array(buf.buffer);
    }
    const mw = stub.mw;
    const n = Math.min(batch, stub.left);
    for (let i = 0; i < n; i++) {
      if (stub.next === NPAGES) {
        stub.next = 0;
        stub.pages?.fill(PAGE.empty); // every fault takes the placing path
      }
      const addr = BASE + stub.next * PS;
      mw[i * 8] = 0x12; // UFFD_EVENT_PAGEFAULT
      mw[i * 8 + 4] = addr % TWO32;
      mw[i * 8 + 5] = Math.floor(addr / TWO32);
      stub.next += readahead;
    }
    stub.left -= n;
    stub.given += n;
    return n * 32;
  },
  ioctl: (_fd, _req, arg) => {
    if (stub.awOf !== arg.buffer) {
      stub.awOf = arg.buffer;
      stub.aw = new Int32Array(arg.buffer);
    }
    stub.aw[8] = stub.aw[4]; // uffdio_copy.copy = len
    return 0;
  },
  errno: () => 0,
};

function install(s: Stubs): void {
  const l = libc as unknown as Stubs;
  l.poll = s.poll;
  l.read = s.read;
  l.ioctl = s.ioctl;
  l.errno = s.errno;
}

/** One serve() call over `segments` segments of `n` faults; ns per fault of each segment. */
async function serverLoop(n: number, segments: number): Promise<number[]> {
  const data = new SharedArrayBuffer(NPAGES * PS);
  const regions = new Float64Array(new SharedArrayBuffer(REGION_WORDS * 8));
  regions[0] = BASE;
  regions[1] = NPAGES * PS;
  regions[2] = 0;
  const pages = new Uint8Array(new SharedArrayBuffer(NPAGES));
  const stats = new Float64Array(new SharedArrayBuffer(STAT_COUNT * 8));
  const init: ServerInit = {
    fd: FD,
    stopFd: STOP,
    regions: regions.buffer as SharedArrayBuffer,
    pageSize: PS,
    placement: "copy",
    source: { kind: "bytes", data, offset: 0, length: data.byteLength },
    readahead: { mode: "fixed", pages: readahead },
    onError: { retries: 2, then: "poison" },
    busyPollUs: 0,
    batch: 32,
    latencyEvery: 16,
    onRemove: "source",
    staging: 0,
    stagingLen: 0,
    zeroArea: 0,
    zeroLen: 0,
    stats: stats.buffer as SharedArrayBuffer,
    ctrl: new SharedArrayBuffer(CTRL_COUNT * 4),
    pages: pages.buffer as SharedArrayBuffer,
    prefetch: undefined,
    prefetchRun: 1,
    record: undefined,
    error: new SharedArrayBuffer(ERROR_BYTES),
  };
  const marks: number[] = [];
  reset(n * segments, pages, n, marks);
  install(stubs);
  await serve(init, undefined, false);
  if (stats[STAT.faults] !== n * segments) {
    throw new Error(`served ${stats[STAT.faults]} faults, expected ${n * segments}`);
  }
  return marks.slice(1).map((t, k) => ((t - marks[k]) * 1e6) / n);
}

/** bench/ts_min_handler.ts's loop (a copy, against the stubs), over `segments` segments of `n` faults. */
function minLoop(n: number, segments: number): number[] {
  const marks: number[] = [];
  reset(n * segments, undefined, n, marks);
  install(stubs);
  const pollfds = new Int32Array([FD, 1, STOP, 1]);
  const revents = new Uint16Array(pollfds.buffer);
  const msg = new Uint8Array(32 * 32);
  const mw = new Uint32Array(msg.buffer);
  const cp = new Uint32Array(10);
  const cpb = new Uint8Array(cp.buffer);
  const cps = new Int32Array(cp.buffer);
  const start = BASE;
  const end = BASE + NPAGES * PS;
  const delta = 0x1000_0000;
  cp[4] = PS;
  let placed = 0;
  for (;;) {
    revents[3] = 0;
    revents[7] = 0;
    if (libc.poll(pollfds, 2, -1) < 0) continue;
    if (revents[7] !== 0) break;
    const r = libc.read(FD, msg, msg.byteLength);
    for (let i = 0, c = r >> 5; i < c; i++) {
      if (msg[i * 32] !== 0x12) continue;
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
      if (libc.ioctl(FD, 0xc028aa03, cpb) === 0 || cps[8] > 0) placed++;
    }
  }
  if (placed !== n * segments) throw new Error(`placed ${placed}, expected ${n * segments}`);
  return marks.slice(1).map((t, k) => ((t - marks[k]) * 1e6) / n);
}

const rounds = 5;
// The first segment of each warms the JIT up.
const s = (await serverLoop(faults, rounds + 1)).slice(1);
const m = minLoop(faults, rounds + 1).slice(1);
const med = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const min = (xs: number[]): number => Math.min(...xs);
install(real);
const versions = process.versions as Record<string, string | undefined>;
console.log(
  `${libc.runtime} ${versions[libc.runtime] ?? "?"}: server loop ${med(s).toFixed(1)} ns/fault ` +
    `(min ${min(s).toFixed(1)}), minimal loop ${med(m).toFixed(1)} (min ${min(m).toFixed(1)}), ` +
    `difference ${(med(s) - med(m)).toFixed(1)} (of the minima ${(min(s) - min(m)).toFixed(1)}); ` +
    `medians of ${rounds} x ${faults} faults, batch ${batch}, readahead ${readahead}`,
);
