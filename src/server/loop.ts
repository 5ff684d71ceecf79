/**
 * The fault-serving loop, run inside the server's Worker. The hot path (poll, read,
 * COPY from the source's own address) allocates nothing and uses no BigInt: ioctl
 * structs and the message buffer are preallocated typed arrays, u64 fields are
 * packed as two u32 halves.
 * @module
 */
import { libc } from "../../ffi/mod.ts";
import { ioctl, UFFD_EVENT } from "../abi.ts";
import { ERRNO } from "../errors.ts";
import { POLLIN } from "../eventfd.ts";
import { CTRL, PAGE, type ServerInit, STAT, STATE } from "./layout.ts";

const TWO32 = 4294967296;
const EEXIST = ERRNO.EEXIST;
const EAGAIN = ERRNO.EAGAIN;
const EINTR = ERRNO.EINTR;
/** placeCustom's result when the source failed after its retries (not an errno). */
const SOURCE_FAILED = -0x10000;

/** A custom source's fill function: fill `dest` with the bytes at `offset`, or return them. */
export type FillFunction = (
  offset: number,
  dest: Uint8Array,
) => void | Uint8Array | Promise<void | Uint8Array>;

/** Serves faults until the stop descriptor fires. Resolves when stopped. */
export async function serve(init: ServerInit, fill?: FillFunction): Promise<void> {
  const { fd, stopFd, len, placement } = init;
  const ps = init.pageSize;
  const nPages = len / ps;
  const stats = new Float64Array(init.stats);
  const ctrl = new Int32Array(init.ctrl);
  const pages = new Uint8Array(init.pages);
  const errorBuf = new Uint8Array(init.error);
  let base = stats[STAT.base] || init.start; // a standby resumes where the region is now

  const pollfds = new Int32Array([fd, POLLIN, stopFd, POLLIN]);
  const revents = new Uint16Array(pollfds.buffer);
  const msg = new Uint8Array(32 * init.batch);
  const mw = new Uint32Array(msg.buffer);

  // uffdio_copy / uffdio_move: dst, src, len, mode, result (10 words); others 8 words.
  const cpw = new Uint32Array(10);
  const cpb = new Uint8Array(cpw.buffer);
  const cps = new Int32Array(cpw.buffer);
  const zw = new Uint32Array(8); // uffdio_zeropage / uffdio_continue / uffdio_poison share the layout
  const zb = new Uint8Array(zw.buffer);
  const zs = new Int32Array(zw.buffer);
  const rw = new Uint32Array(4);
  const rb = new Uint8Array(rw.buffer);

  // Source: an address the kernel copies from directly (held by `hold`).
  const src = init.source;
  let srcBase = 0;
  let srcLen = 0;
  const hold: unknown[] = [];
  if (src.kind === "bytes") {
    const view = new Uint8Array(src.data, src.offset, src.length);
    hold.push(view);
    srcBase = libc.addressOf(view);
    srcLen = src.length;
  } else if (src.kind === "address") {
    srcBase = src.address;
    srcLen = src.length;
  } else if (src.kind === "module") {
    srcLen = src.length;
  }
  const staging = init.staging;
  const stagingView = init.stagingLen > 0 ? new Uint8Array(libc.view(staging, init.stagingLen)) : undefined;
  const stagingViews: Uint8Array[] = [];

  const ra = init.readahead;
  const minW = ra.mode === "fixed" ? ra.pages : ra.min;
  const maxW = ra.mode === "fixed" ? ra.pages : ra.max;
  let window = minW;
  let lastEnd = -1;
  stats[STAT.window] = window;

  const deferred = new Float64Array(Math.max(64, init.batch * 4));
  let nDeferred = 0;
  const policy = init.onError;

  function put(w: Uint32Array, i: number, v: number): void {
    const lo = v % TWO32;
    w[i] = lo;
    w[i + 1] = (v - lo) / TWO32;
  }

  function recordError(message: string): void {
    stats[STAT.errors]++;
    const bytes = new TextEncoder().encode(message).subarray(0, errorBuf.length);
    errorBuf.set(bytes);
    Atomics.store(ctrl, CTRL.errorLen, bytes.length);
  }

  function wake(addr: number, n: number): void {
    put(rw, 0, addr);
    put(rw, 2, n);
    libc.ioctl(fd, ioctl.UFFDIO_WAKE, rb);
    stats[STAT.wakes]++;
  }

  /** Result of one placement ioctl: bytes done (>0) or -errno. */
  function result(r: number, s: Int32Array, w: Uint32Array, i: number): number {
    if (r === 0) return s[i + 1] * TWO32 + w[i];
    const v = s[i + 1] * TWO32 + w[i];
    return v !== 0 ? v : -libc.errno();
  }

  /** UFFDIO_COPY or UFFDIO_MOVE (same struct layout) of `n` bytes from `from` to `addr`. */
  function placeFrom(req: number, addr: number, from: number, n: number): number {
    put(cpw, 0, addr);
    put(cpw, 2, from);
    put(cpw, 4, n);
    cpw[6] = 0;
    cpw[7] = 0;
    cpw[8] = 0;
    cpw[9] = 0;
    return result(libc.ioctl(fd, req, cpb), cps, cpw, 8);
  }

  function copyFrom(addr: number, from: number, n: number): number {
    return placeFrom(ioctl.UFFDIO_COPY, addr, from, n);
  }

  function moveFrom(addr: number, from: number, n: number): number {
    return placeFrom(ioctl.UFFDIO_MOVE, addr, from, n);
  }

  function rangeOp(req: number, addr: number, n: number): number {
    put(zw, 0, addr);
    put(zw, 2, n);
    zw[4] = 0;
    zw[5] = 0;
    zw[6] = 0;
    zw[7] = 0;
    return result(libc.ioctl(fd, req, zb), zs, zw, 6);
  }

  function stagingFor(n: number): Uint8Array {
    return stagingViews[n] ??= stagingView!.subarray(0, n * ps);
  }

  /** Places the source bytes of pages [a, a+n) with the configured strategy; bytes done or -errno. */
  function placeSync(a: number, n: number): number {
    const addr = base + a * ps;
    const bytes = n * ps;
    switch (placement) {
      case "zeropage":
        return rangeOp(ioctl.UFFDIO_ZEROPAGE, addr, bytes);
      case "continue":
        return rangeOp(ioctl.UFFDIO_CONTINUE, addr, bytes);
      case "copy": {
        const off = a * ps;
        if (off + bytes <= srcLen) return copyFrom(addr, srcBase + off, bytes);
        // The tail page reaches past the source: stage it so no byte beyond the source is read.
        const have = Math.max(0, srcLen - off);
        const st = stagingFor(n);
        libc.memcpy(staging, srcBase + off, have);
        st.fill(0, have);
        return copyFrom(addr, staging, bytes);
      }
      case "move": {
        const off = a * ps;
        const have = Math.min(bytes, Math.max(0, srcLen - off));
        const st = stagingFor(n);
        if (have > 0) libc.memcpy(staging, srcBase + off, have);
        if (have < bytes) st.fill(0, have);
        return moveFrom(addr, staging, bytes);
      }
    }
  }

  /** Places pages [a, a+n) from a custom source, retrying per policy; bytes done or -errno. */
  async function placeCustom(a: number, n: number): Promise<number> {
    const off = a * ps;
    const dest = stagingFor(n);
    for (let attempt = 0;; attempt++) {
      try {
        let r = fill!(off, dest);
        if (r !== undefined && typeof (r as Promise<unknown>).then === "function") r = await r;
        const from = r instanceof Uint8Array ? r : undefined;
        if (from && from.byteLength < n * ps) {
          throw new RangeError(`fill returned ${from.byteLength} bytes for ${n * ps}`);
        }
        const addr = base + a * ps;
        if (placement === "move") {
          if (from) dest.set(from.subarray(0, n * ps));
          return moveFrom(addr, staging, n * ps);
        }
        return copyFrom(addr, from ? libc.addressOf(from) : staging, n * ps);
      } catch (e) {
        if (attempt >= policy.retries) {
          recordError(`page source failed at offset ${off}: ${e instanceof Error ? e.message : String(e)}`);
          return SOURCE_FAILED;
        }
        stats[STAT.retries]++;
      }
    }
  }

  /** The window of empty pages to place for a fault at page p: [a, b). */
  function windowFor(p: number): number {
    let a: number;
    let b: number;
    if (ra.mode === "fixed") {
      a = p - (p % minW);
      b = Math.min(a + minW, nPages);
    } else {
      window = p === lastEnd ? Math.min(window * 2, maxW) : minW;
      stats[STAT.window] = window;
      a = p;
      b = Math.min(p + window, nPages);
    }
    let lo = p;
    while (lo > a && pages[lo - 1] === PAGE.empty) lo--;
    let hi = p + 1;
    while (hi < b && pages[hi] === PAGE.empty) hi++;
    lastEnd = hi;
    return lo * TWO32 + hi; // packed pair, no allocation
  }

  function mark(a: number, n: number, state: number): void {
    for (let i = a; i < a + n; i++) pages[i] = state;
  }

  function fail(p: number): void {
    if (policy.then === "zero") {
      const r = rangeOp(ioctl.UFFDIO_ZEROPAGE, base + p * ps, ps);
      if (r > 0 || r === -EEXIST) pages[p] = PAGE.placed;
      stats[STAT.zeroed]++;
    } else {
      rangeOp(ioctl.UFFDIO_POISON, base + p * ps, ps);
      pages[p] = PAGE.poisoned;
      stats[STAT.poisoned]++;
    }
  }

  const DONE = 0;
  const DEFER = 1;
  const SINGLE = 2;

  /**
   * First step of a fault on page p: handles pages that are not empty and returns
   * the window [a, b) packed as a * 2^32 + b, or -1 when nothing is left to place
   * (-2 when it must be retried after events).
   */
  function begin(p: number): number {
    const state = pages[p];
    if (state === PAGE.removed) {
      const r = rangeOp(ioctl.UFFDIO_ZEROPAGE, base + p * ps, ps);
      if (r === -EAGAIN) return -2;
      pages[p] = PAGE.placed;
      if (r === -EEXIST) wake(base + p * ps, ps);
      return -1;
    }
    if (state !== PAGE.empty) {
      // Placed by an earlier window (a second message for the same page): just wake.
      wake(base + p * ps, ps);
      return -1;
    }
    return windowFor(p);
  }

  /** After placing window [a, b) with result r: DONE, DEFER (retry after events) or SINGLE. */
  function finish(p: number, a: number, b: number, r: number): number {
    if (r > 0) {
      const done = r / ps;
      mark(a, done, PAGE.placed);
      stats[STAT.pages] += done;
      stats[STAT.bytes] += r;
      if (a + done > p) return DONE;
      stats[STAT.eagain]++;
      return DEFER; // a partial copy stopped before the faulting page
    }
    if (r === -EAGAIN) {
      stats[STAT.eagain]++;
      return DEFER;
    }
    if (r === -EEXIST) {
      stats[STAT.eexist]++;
      return b - a > 1 ? SINGLE : finishSingle(p, r); // part of the window was present
    }
    if (r === SOURCE_FAILED) {
      fail(p); // the source failed after its retries
      return DONE;
    }
    // ENOENT/ESRCH: the mapping or the faulting process went away.
    recordError(`${placement} of pages [${a}, ${b}) failed: errno ${-r}`);
    if (r === -ERRNO.EFAULT) fail(p);
    return DONE;
  }

  /** After placing only the faulting page p with result r. */
  function finishSingle(p: number, r: number): number {
    if (r > 0) {
      pages[p] = PAGE.placed;
      stats[STAT.pages]++;
      stats[STAT.bytes] += r;
    } else if (r === -EEXIST) {
      pages[p] = PAGE.placed;
      wake(base + p * ps, ps);
    } else if (r === -EAGAIN) {
      stats[STAT.eagain]++;
      return DEFER;
    } else if (r === SOURCE_FAILED) {
      fail(p);
    } else {
      recordError(`${placement} of page ${p} failed: errno ${-r}`);
      fail(p);
    }
    return DONE;
  }

  /** Resolves a fault on page p with a synchronous placement; false: retry after events. */
  function resolveSync(p: number): boolean {
    const w = begin(p);
    if (w < 0) return w === -1;
    const a = Math.floor(w / TWO32);
    const b = w % TWO32;
    let k = finish(p, a, b, placeSync(a, b - a));
    if (k === SINGLE) k = finishSingle(p, placeSync(p, 1));
    return k === DONE;
  }

  /** Resolves a fault on page p from the custom source; false: retry after events. */
  async function resolveCustom(p: number): Promise<boolean> {
    const w = begin(p);
    if (w < 0) return w === -1;
    const a = Math.floor(w / TWO32);
    const b = w % TWO32;
    let k = finish(p, a, b, await placeCustom(a, b - a));
    if (k === SINGLE) k = finishSingle(p, await placeCustom(p, 1));
    return k === DONE;
  }

  // Faults waiting for the custom source (resolved asynchronously after the batch).
  const pending = new Float64Array(Math.max(64, init.batch * 4));
  let nPending = 0;

  async function drainPending(): Promise<void> {
    for (let i = 0; i < nPending; i++) {
      const t0 = performance.now();
      if (!(await resolveCustom(pending[i]))) deferred[nDeferred++] = pending[i];
      latency(t0);
    }
    nPending = 0;
  }

  function latency(t0: number): void {
    const us = (performance.now() - t0) * 1000;
    stats[STAT.totalLatencyUs] += us;
    if (us > stats[STAT.maxLatencyUs]) stats[STAT.maxLatencyUs] = us;
  }

  function onEvent(i: number): number {
    const w = i * 8;
    const code = msg[i * 32];
    if (code === UFFD_EVENT.PAGEFAULT) return mw[w + 5] * TWO32 + mw[w + 4];
    stats[STAT.events]++;
    const x = mw[w + 3] * TWO32 + mw[w + 2];
    const y = mw[w + 5] * TWO32 + mw[w + 4];
    if (code === UFFD_EVENT.REMOVE || code === UFFD_EVENT.UNMAP) {
      const s = Math.max(0, Math.floor((x - base) / ps));
      const e = Math.min(nPages, Math.ceil((y - base) / ps));
      const to = code === UFFD_EVENT.UNMAP ? PAGE.gone : init.onRemove === "zero" ? PAGE.removed : PAGE.empty;
      for (let k = s; k < e; k++) {
        if (to === PAGE.gone || pages[k] === PAGE.placed) pages[k] = to;
      }
      if (code === UFFD_EVENT.REMOVE) stats[STAT.removed] += Math.max(0, e - s);
    } else if (code === UFFD_EVENT.REMAP && x === base) {
      base = y; // the region moved; serve it at its new address
      stats[STAT.base] = base;
    }
    return -1;
  }

  /** Reads and handles one batch; returns false when there was nothing to read. */
  function readBatch(): boolean {
    const n = libc.read(fd, msg, msg.byteLength);
    if (n <= 0) return false;
    stats[STAT.reads]++;
    const count = n >> 5;
    for (let i = 0; i < count; i++) {
      const addr = onEvent(i);
      if (addr < 0) continue;
      if ((++stats[STAT.faults] & 0xffff) === 0 && mem) stats[STAT.heapNow] = mem().heapUsed;
      const p = Math.floor((addr - base) / ps);
      if (p < 0 || p >= nPages) continue;
      if (fill) {
        pending[nPending++] = p;
        continue;
      }
      const t0 = performance.now();
      if (!resolveSync(p)) deferred[nDeferred++] = p;
      latency(t0);
    }
    return true;
  }

  function retryDeferred(): void {
    const n = nDeferred;
    nDeferred = 0;
    for (let i = 0; i < n; i++) {
      if (fill) pending[nPending++] = deferred[i];
      else if (!resolveSync(deferred[i])) deferred[nDeferred++] = deferred[i];
    }
  }

  // JS heap of this Worker, sampled every 65536 faults: the hot path must not grow it.
  const mem = (globalThis as { process?: { memoryUsage?: () => { heapUsed: number } } }).process?.memoryUsage;
  stats[STAT.heapStart] = stats[STAT.heapNow] = mem ? mem().heapUsed : 0;

  Atomics.store(ctrl, CTRL.state, STATE.running);
  Atomics.notify(ctrl, CTRL.state);
  const spinMs = init.busyPollUs / 1000;
  try {
    for (;;) {
      revents[3] = 0;
      revents[7] = 0;
      let ready = 0;
      if (spinMs > 0 && nDeferred === 0) {
        const until = performance.now() + spinMs;
        do {
          ready = libc.poll(pollfds, 2, 0);
        } while (ready === 0 && performance.now() < until);
        if (ready > 0) stats[STAT.spinHits]++;
      }
      if (ready === 0) ready = libc.poll(pollfds, 2, nDeferred > 0 ? 1 : -1);
      if (ready < 0) {
        if (libc.errno() === EINTR) continue;
        throw new Error(`poll failed: errno ${libc.errno()}`);
      }
      if (revents[7] !== 0) break;
      if (revents[3] !== 0) readBatch();
      if (nDeferred > 0) retryDeferred();
      if (nPending > 0) await drainPending();
    }
    // Stop requested: serve what is already queued so no faulter is left waiting.
    for (let tries = 0; tries < 1000; tries++) {
      revents[3] = 0;
      const more = libc.poll(pollfds, 1, nDeferred > 0 ? 1 : 0) > 0 && readBatch();
      if (nDeferred > 0) retryDeferred();
      if (nPending > 0) await drainPending();
      if (!more && nDeferred === 0) break;
    }
    if (mem) stats[STAT.heapNow] = mem().heapUsed;
    Atomics.store(ctrl, CTRL.state, STATE.stopped);
  } catch (e) {
    recordError(`fault loop failed: ${e instanceof Error ? e.message : String(e)}`);
    Atomics.store(ctrl, CTRL.state, STATE.failed);
    throw e;
  } finally {
    Atomics.notify(ctrl, CTRL.state);
    void hold;
  }
}
