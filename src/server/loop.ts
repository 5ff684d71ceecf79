/**
 * The fault-serving loop, run inside the server's Worker. The hot path (poll, read,
 * COPY from the source's own address) allocates nothing and does no BigInt arithmetic: ioctl
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

/**
 * Serves faults until the stop descriptor fires. Resolves when stopped. `guarded`: a
 * standby watches this thread (a thread taking over without one gives a page whose
 * source ended the previous thread no retry: nothing would survive another such end).
 */
export async function serve(init: ServerInit, fill?: FillFunction, guarded = true): Promise<void> {
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
  let srcView: Uint8Array | undefined; // held: the kernel reads through its address
  if (src.kind === "bytes") {
    srcView = new Uint8Array(src.data, src.offset, src.length);
    srcBase = libc.addressOf(srcView);
    srcLen = src.length;
  } else if (src.kind === "address") {
    srcBase = src.address;
    srcLen = src.length;
    srcView = new Uint8Array(libc.view(src.address, src.length));
  } else if (src.kind === "module") {
    srcLen = src.length;
  }
  const staging = init.staging;
  const zeroArea = init.zeroArea;
  const FROM_SOURCE = 0;
  const FROM_STAGING = 1;
  const FROM_ZERO = 2;
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

  /** UFFDIO_WAKE of pages [a, a+n) (page indices). */
  function wake(a: number, n: number): void {
    put(rw, 0, base + a * ps);
    put(rw, 2, n * ps);
    libc.ioctl(fd, ioctl.UFFDIO_WAKE, rb);
    stats[STAT.wakes]++;
  }

  /**
   * Result of one placement ioctl: bytes done (>0) or -errno. The s64 field fits its low
   * signed word (at most a readahead window of bytes, or -errno), so the value stays a
   * small integer: no heap number on the hot path.
   */
  function result(r: number, field: number): number {
    return r === 0 || field !== 0 ? field : -libc.errno();
  }

  /**
   * UFFDIO_COPY or UFFDIO_MOVE (same struct layout) of pages [a, a+n) from the source at
   * the same offset (FROM_SOURCE), the staging area (FROM_STAGING), or the zero area
   * (FROM_ZERO). Arguments are page indices and small codes; addresses are formed here, so
   * no double crosses a call.
   */
  function placeFrom(req: number, a: number, n: number, from: number): number {
    put(cpw, 0, base + a * ps);
    put(cpw, 2, from === FROM_SOURCE ? srcBase + a * ps : from === FROM_STAGING ? staging : zeroArea);
    put(cpw, 4, n * ps);
    cpw[6] = 0;
    cpw[7] = 0;
    cpw[8] = 0;
    cpw[9] = 0;
    return result(libc.ioctl(fd, req, cpb), cps[8]);
  }

  /** ZEROPAGE / CONTINUE / POISON of pages [a, a+n) (page indices). */
  function rangeOp(req: number, a: number, n: number): number {
    put(zw, 0, base + a * ps);
    put(zw, 2, n * ps);
    zw[4] = 0;
    zw[5] = 0;
    zw[6] = 0;
    zw[7] = 0;
    return result(libc.ioctl(fd, req, zb), zs[6]);
  }

  /**
   * Zero pages [a, a+n): UFFDIO_ZEROPAGE, or on hugetlb (which has no ZEROPAGE) a COPY from
   * an area that is never written, so it reads as zeros.
   */
  function zeroFill(a: number, n: number): number {
    return zeroArea === 0
      ? rangeOp(ioctl.UFFDIO_ZEROPAGE, a, n)
      : placeFrom(ioctl.UFFDIO_COPY, a, n, FROM_ZERO);
  }

  function stagingFor(n: number): Uint8Array {
    return stagingViews[n] ??= stagingView!.subarray(0, n * ps);
  }

  /** Places the source bytes of pages [a, a+n) with the configured strategy; bytes done or -errno. */
  function placeSync(a: number, n: number): number {
    switch (placement) {
      case "zeropage":
        return zeroFill(a, n);
      case "continue":
        return rangeOp(ioctl.UFFDIO_CONTINUE, a, n);
      case "copy":
        // The kernel copies straight from the source, unless the last page reaches past it.
        if ((a + n) * ps <= srcLen) return placeFrom(ioctl.UFFDIO_COPY, a, n, FROM_SOURCE);
        stage(a, n);
        return placeFrom(ioctl.UFFDIO_COPY, a, n, FROM_STAGING);
      case "move":
        stage(a, n);
        return placeFrom(ioctl.UFFDIO_MOVE, a, n, FROM_STAGING);
    }
  }

  /** Copies the source bytes of pages [a, a+n) into the staging area, zero past the source's end. */
  function stage(a: number, n: number): void {
    const st = stagingFor(n);
    const off = a * ps;
    const have = Math.min(n * ps, Math.max(0, srcLen - off));
    if (have > 0) st.set(srcView!.subarray(off, off + have));
    if (have < n * ps) st.fill(0, have);
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
        if (placement === "move") {
          if (from) dest.set(from.subarray(0, n * ps));
          return placeFrom(ioctl.UFFDIO_MOVE, a, n, FROM_STAGING);
        }
        if (!from) return placeFrom(ioctl.UFFDIO_COPY, a, n, FROM_STAGING);
        // A returned buffer: the kernel copies from it directly.
        put(cpw, 0, base + a * ps);
        put(cpw, 2, libc.addressOf(from));
        put(cpw, 4, n * ps);
        cpw.fill(0, 6);
        return result(libc.ioctl(fd, ioctl.UFFDIO_COPY, cpb), cps[8]);
      } catch (e) {
        if (attempt >= policy.retries) {
          recordError(`page source failed at offset ${off}: ${e instanceof Error ? e.message : String(e)}`);
          return SOURCE_FAILED;
        }
        stats[STAT.retries]++;
      }
    }
  }

  // The window chosen for the current fault: [winA, winB) (closure integers, no allocation).
  let winA = 0;
  let winB = 0;

  /** Chooses the window of empty pages to place for a fault at page p. */
  function windowFor(p: number): void {
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
    winA = lo;
    winB = hi;
  }

  function mark(a: number, n: number, state: number): void {
    pages.fill(state, a, a + n);
  }

  function fail(p: number): void {
    if (policy.then === "zero") {
      const r = zeroFill(p, 1);
      if (r > 0 || r === -EEXIST) pages[p] = PAGE.placed;
      if (r > 0) stats[STAT.zeroed]++;
      else if (r === -EEXIST) wake(p, 1);
    } else if (rangeOp(ioctl.UFFDIO_POISON, p, 1) === -EEXIST) {
      pages[p] = PAGE.placed; // placed after all (a thread that ended just after its copy)
      wake(p, 1);
    } else {
      pages[p] = PAGE.poisoned;
      stats[STAT.poisoned]++;
    }
  }

  const DONE = 0;
  const DEFER = 1;
  const SINGLE = 2;

  const PLACE = 0;
  const HANDLED = -1;
  const RETRY = -2;

  /**
   * First step of a fault on page p: handles pages that are not empty (HANDLED, or RETRY
   * after events), else chooses the window [winA, winB) to place (PLACE).
   */
  function begin(p: number): number {
    const state = pages[p];
    if (state === PAGE.removed) {
      const r = zeroFill(p, 1);
      if (r === -EAGAIN) return RETRY;
      pages[p] = PAGE.placed;
      if (r === -EEXIST) wake(p, 1);
      return HANDLED;
    }
    if (state !== PAGE.empty) {
      // Placed by an earlier window (a second message for the same page): just wake.
      wake(p, 1);
      return HANDLED;
    }
    windowFor(p);
    return PLACE;
  }

  /** After placing window [a, b) with result r: DONE, DEFER (retry after events) or SINGLE. */
  function finish(p: number, a: number, b: number, r: number): number {
    if (r > 0) {
      const done = r / ps;
      mark(a, done, PAGE.placed);
      stats[STAT.pages] += done;
      stats[STAT.bytes] += r;
      if (a + done > p) return DONE;
      // A partial copy stopped before the faulting page (a present page, or the address space
      // changing): place the faulting page alone now; finishSingle defers it on EAGAIN.
      stats[STAT.eagain]++;
      return SINGLE;
    }
    if (r === -EAGAIN) {
      stats[STAT.eagain]++;
      return DEFER;
    }
    if (r === -EEXIST) {
      // Nothing was placed, so the window's first page is present (placed behind our back, e.g.
      // written before the range was registered): remember it, then place the faulting page alone.
      stats[STAT.eexist]++;
      pages[a] = PAGE.placed;
      return a === p ? finishSingle(p, r) : SINGLE;
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
      wake(p, 1);
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
    if (w !== PLACE) return w === HANDLED;
    const a = winA;
    const b = winB;
    let k = finish(p, a, b, placeSync(a, b - a));
    if (k === SINGLE) k = finishSingle(p, placeSync(p, 1));
    return k === DONE;
  }

  /**
   * Resolves a fault on page p from the custom source; false: retry after events. While
   * the source runs, ctrl[CTRL.filling] names p, so that if the source ends this thread
   * (process.exit, a fatal error) the thread taking over counts that as a failed attempt
   * for p (see resolveCrashed).
   */
  async function resolveCustom(p: number): Promise<boolean> {
    const w = begin(p);
    if (w !== PLACE) return w === HANDLED;
    const a = winA;
    const b = winB;
    if (Atomics.load(ctrl, CTRL.filling) !== p + 1) {
      Atomics.store(ctrl, CTRL.crashes, 0);
      Atomics.store(ctrl, CTRL.filling, p + 1);
    }
    let k = finish(p, a, b, await placeCustom(a, b - a));
    if (k === SINGLE) k = finishSingle(p, await placeCustom(p, 1));
    Atomics.store(ctrl, CTRL.filling, 0);
    Atomics.store(ctrl, CTRL.crashes, 0);
    return k === DONE;
  }

  /**
   * Taking over from a thread that ended while its source filled a page: that was a
   * failed attempt for the page. Within the policy's retries the page stays empty and its
   * fault (raised again by the takeover's wake) calls the source again; after them it is
   * resolved by the policy (poison, or zeros when the caller chose them), so a source that
   * always ends its thread on some page costs `retries + 1` threads, never a hung faulter
   * (at once when no standby watches this thread: see `guarded`).
   */
  function resolveCrashed(): void {
    const p = Atomics.load(ctrl, CTRL.filling) - 1;
    if (p < 0) return;
    const crashes = Atomics.add(ctrl, CTRL.crashes, 1) + 1;
    if (p >= nPages || pages[p] !== PAGE.empty) {
      Atomics.store(ctrl, CTRL.filling, 0);
      return;
    }
    if (crashes <= policy.retries && guarded) {
      stats[STAT.retries]++;
      return;
    }
    Atomics.store(ctrl, CTRL.filling, 0);
    Atomics.store(ctrl, CTRL.crashes, 0);
    recordError(
      `the page source ended its thread ${crashes} time(s) filling page ${p} (offset ${p * ps}); ` +
        `resolved by onError.then "${policy.then}"`,
    );
    fail(p);
  }

  // Faults waiting for the custom source (resolved asynchronously after the batch).
  const pending = new Float64Array(Math.max(64, init.batch * 4));
  let nPending = 0;

  async function drainPending(): Promise<void> {
    clock[0] = performance.now(); // custom sources are slow anyway: every batch is timed
    for (let i = 0; i < nPending; i++) {
      if (!(await resolveCustom(pending[i]))) deferred[nDeferred++] = pending[i];
    }
    latency(nPending);
    nPending = 0;
  }

  // Latency is timed per batch (the worst batch bounds the worst fault), on one batch in
  // `latencyEvery`: a clock read costs 35-85 ns, a fault ~7 us in all. The start time lives
  // in a typed array so no double crosses a call.
  const clock = new Float64Array(1);
  const every = init.latencyEvery;
  let sampleIn = 1;
  function latency(faults: number): void {
    const us = (performance.now() - clock[0]) * 1000;
    stats[STAT.sampledFaults] += faults;
    stats[STAT.totalLatencyUs] += us;
    if (us > stats[STAT.maxLatencyUs]) stats[STAT.maxLatencyUs] = us;
  }

  /** Handles message i: returns the faulting page index, or -1 (another event, or outside the range). */
  function onEvent(i: number): number {
    const w = i * 8;
    const code = msg[i * 32];
    if (code === UFFD_EVENT.PAGEFAULT) {
      if ((++stats[STAT.faults] & 0xffff) === 0 && mem) stats[STAT.heapNow] = mem().heapUsed;
      const p = Math.floor((mw[w + 5] * TWO32 + mw[w + 4] - base) / ps);
      return p >= 0 && p < nPages ? p : -1;
    }
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
    const timed = !fill && --sampleIn === 0;
    if (timed) clock[0] = performance.now();
    for (let i = 0; i < count; i++) {
      const p = onEvent(i);
      if (p < 0) continue;
      if (fill) pending[nPending++] = p;
      else if (!resolveSync(p)) deferred[nDeferred++] = p;
    }
    if (timed) {
      latency(count);
      sampleIn = every;
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

  resolveCrashed();
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
    void srcView;
  }
}
