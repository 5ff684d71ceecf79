/**
 * The fault-serving loop, run inside the server's Worker. The hot path (poll, read,
 * COPY from the source's own address) allocates nothing and does no BigInt arithmetic: ioctl
 * structs and the message buffer are preallocated typed arrays, u64 fields are
 * packed as two u32 halves.
 * @module
 */
import { libc as libcBinding } from "../../ffi/mod.ts";
import { ioctl as ioctlBinding, UFFD_EVENT as UFFD_EVENT_BINDING } from "../abi.ts";
import { ERRNO } from "../errors.ts";
import { POLLIN } from "../eventfd.ts";
import {
  CHUNK,
  CHUNK_STATE,
  CTRL,
  PAGE as PAGE_BINDING,
  REGION_WORDS as REGION_WORDS_BINDING,
  type ServerInit,
  STAT as STAT_BINDING,
  STATE,
} from "./layout.ts";
import { chunkDigest } from "../snapshot/digest.ts";

// Module-local copies of the imports the hot path reads per fault. An imported binding is live
// (the exporting module could still assign it), so optimized code loads each use from its cell
// and checks it for the hole: two dependent loads and a branch per `STAT.faults`, `PAGE.empty`,
// `libc.ioctl`. A local const is a constant to the compiler.
const libc = libcBinding;
const ioctl = ioctlBinding;
const UFFD_EVENT = UFFD_EVENT_BINDING;
const PAGE = PAGE_BINDING;
const STAT = STAT_BINDING;
const REGION_WORDS = REGION_WORDS_BINDING;

const TWO32 = 4294967296;
const EEXIST = ERRNO.EEXIST;
const EAGAIN = ERRNO.EAGAIN;
const EINTR = ERRNO.EINTR;
/** UFFDIO_COPY_MODE_DONTWAKE, UFFDIO_ZEROPAGE_MODE_DONTWAKE: the prefetcher wakes once at the end. */
const MODE_DONTWAKE = 1;
/** placeCustom's result when the source failed after its retries (not an errno). */
const SOURCE_FAILED = -0x10000;

/** A custom source's fill function: fill `dest` with the bytes at `offset`, or return them. */
export type FillFunction = (
  offset: number,
  dest: Uint8Array,
) => void | Uint8Array | Promise<void | Uint8Array>;

/** The runtime's `process.memoryUsage` (this thread's own JS heap in a Worker), or undefined. */
export function heapUsedOf(): (() => { heapUsed: number }) | undefined {
  return (globalThis as { process?: { memoryUsage?: () => { heapUsed: number } } }).process?.memoryUsage;
}

/**
 * Serves faults until the stop descriptor fires. Resolves when stopped. `guarded`: a
 * standby watches this thread (a thread taking over without one gives a page whose
 * source ended the previous thread no retry: nothing would survive another such end).
 */
export async function serve(
  init: ServerInit,
  fill?: FillFunction,
  guarded = true,
  fetchPort?: { postMessage(m: unknown): void },
): Promise<void> {
  const { fd, stopFd, placement } = init;
  const ps = init.pageSize;
  const stats = new Float64Array(init.stats);
  const ctrl = new Int32Array(init.ctrl);
  const pages = new Uint8Array(init.pages);
  const nPages = pages.length;
  const errorBuf = new Uint8Array(init.error);

  // Regions: [start, length, first page] each; the start follows mremap (REMAP events), so a
  // standby resumes where the region is now. Every placement works on the current region,
  // chosen by regionOf(p): page p is at dbase + p * ps, and windows stay within [rLo, rHi).
  const regions = new Float64Array(init.regions);
  const nRegions = regions.length / REGION_WORDS;
  let dbase = 0;
  let rLo = 0;
  let rHi = 0;

  /** Makes the region holding page p current; false when no region holds it. */
  function regionOf(p: number): boolean {
    // Most faults are in the current region: nothing to look up, and no double (dbase) to store.
    if (p >= rLo && p < rHi) return true;
    for (let r = 0; r < nRegions; r++) {
      const first = regions[r * REGION_WORDS + 2];
      const end = first + regions[r * REGION_WORDS + 1] / ps;
      if (p >= first && p < end) {
        rLo = first;
        rHi = end;
        dbase = regions[r * REGION_WORDS] - first * ps;
        return true;
      }
    }
    return false;
  }

  /** 1 / page size: exact (a power of two), and a multiplication where a division was. */
  const perPage = 1 / ps;

  /** The page index of a fault address, or -1 outside every region. */
  function pageAt(addr: number): number {
    for (let r = 0; r < nRegions; r++) {
      const start = regions[r * REGION_WORDS];
      if (addr >= start && addr < start + regions[r * REGION_WORDS + 1]) {
        return regions[r * REGION_WORDS + 2] + Math.floor((addr - start) * perPage);
      }
    }
    return -1;
  }

  // A url source adds the fetcher's completion eventfd to the poll set.
  const urlSrc = init.source.kind === "url" ? init.source : undefined;
  const pollfds = new Int32Array(
    urlSrc ? [fd, POLLIN, stopFd, POLLIN, urlSrc.doneFd, POLLIN] : [fd, POLLIN, stopFd, POLLIN],
  );
  const nfds = urlSrc ? 3 : 2;
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

  // Source: an address the kernel copies from directly (held by `hold`), or layers: one
  // address per layer and a page table naming the topmost layer that holds each page.
  const src = init.source;
  let srcBase = 0;
  let srcLen = 0;
  let srcView: Uint8Array | undefined; // held: the kernel reads through its address
  let table: Uint8Array | undefined;
  const layerAddr = new Float64Array(src.kind === "layers" ? src.addresses.length + 1 : 1);
  const verify = src.kind === "layers" ? src.verify : undefined;
  const chunkState = verify ? new Uint8Array(verify.state) : undefined;
  const digests = verify ? new Uint8Array(verify.digests) : undefined;
  const layerBytes: Uint8Array[] = []; // views of the layers, for checksums (held)
  const layerExtents: Float64Array[] = [];
  if (src.kind === "layers") {
    table = new Uint8Array(src.table);
    for (let k = 0; k < src.addresses.length; k++) layerAddr[k + 1] = src.addresses[k];
    if (verify) {
      for (let k = 0; k < src.addresses.length; k++) {
        layerBytes.push(new Uint8Array(libc.view(src.addresses[k], verify.lengths[k])));
        layerExtents.push(new Float64Array(verify.extents[k]));
      }
    }
  } else if (src.kind === "bytes") {
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
  const zeroPagesMax = init.zeroLen / ps;
  const FROM_SOURCE = 0;
  const FROM_STAGING = 1;
  const FROM_ZERO = 2;
  /** FROM_LAYER + k: layer k of a layered source (k >= 1, as in the page table). */
  const FROM_LAYER = 2;
  /** A url source's cached chunk: page a is at cacheFrom + a * ps (set before the call). */
  const FROM_CACHE = -1;
  let cacheFrom = 0;
  /** Mode bits of the placement ioctls: DONTWAKE while the prefetcher installs pages. */
  let mode = 0;
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
    // The store takes v modulo 2^32 (ToUint32 of an integer below 2^53) and the high word is the
    // truncated quotient: no `%` of a double, which costs more in every runtime (bench/loop_cost.ts).
    w[i] = v;
    w[i + 1] = v / TWO32;
  }

  function recordError(message: string): void {
    stats[STAT.errors]++;
    const bytes = new TextEncoder().encode(message).subarray(0, errorBuf.length);
    errorBuf.set(bytes);
    Atomics.store(ctrl, CTRL.errorLen, bytes.length);
  }

  /** UFFDIO_WAKE of pages [a, a+n) (page indices, in the current region). */
  function wake(a: number, n: number): void {
    put(rw, 0, dbase + a * ps);
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
   * the same offset (FROM_SOURCE), the staging area (FROM_STAGING), the zero area
   * (FROM_ZERO), or layer k at the same offset (FROM_LAYER + k). Arguments are page indices
   * and small codes; addresses are formed here, so no double crosses a call.
   */
  function placeFrom(req: number, a: number, n: number, from: number): number {
    put(cpw, 0, dbase + a * ps);
    put(
      cpw,
      2,
      from === FROM_CACHE
        ? cacheFrom + a * ps
        : from === FROM_SOURCE
        ? srcBase + a * ps
        : from === FROM_STAGING
        ? staging
        : from === FROM_ZERO
        ? zeroArea
        : layerAddr[from - FROM_LAYER] + a * ps,
    );
    put(cpw, 4, n * ps);
    cpw[6] = mode;
    cpw[7] = 0;
    cpw[8] = 0;
    cpw[9] = 0;
    return result(libc.ioctl(fd, req, cpb), cps[8]);
  }

  /** ZEROPAGE / CONTINUE / POISON of pages [a, a+n) (page indices). */
  function rangeOp(req: number, a: number, n: number): number {
    put(zw, 0, dbase + a * ps);
    put(zw, 2, n * ps);
    zw[4] = mode;
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
    const r = zeroArea === 0
      ? rangeOp(ioctl.UFFDIO_ZEROPAGE, a, n)
      : placeFrom(ioctl.UFFDIO_COPY, a, Math.min(n, zeroPagesMax), FROM_ZERO);
    if (r > 0) stats[STAT.zeroPages] += r / ps;
    return r;
  }

  /**
   * Places pages [a, a+n) of a layered source: each run of pages from the same layer with one
   * COPY from that layer's mapping (the kernel copies from the page cache), each run of holes
   * with zeros. Bytes done (a partial count stops at the first short run) or -errno.
   */
  function placeLayers(a: number, n: number): number {
    const t = table!;
    const end = a + n;
    let done = 0;
    for (let i = a; i < end;) {
      const l = t[i];
      let j = i + 1;
      while (j < end && t[j] === l) j++;
      if (verify && l > 0) {
        // Only pages of chunks whose checksum holds are placed: never wrong bytes.
        const good = checkedUpTo(l, i, j);
        if (good === i) return done > 0 ? done : SOURCE_FAILED;
        j = good;
      }
      const r = l === 0 ? zeroFill(i, j - i) : placeFrom(ioctl.UFFDIO_COPY, i, j - i, FROM_LAYER + l);
      if (r <= 0) return done > 0 ? done : r;
      done += r;
      if (r < (j - i) * ps) return done;
      i = j;
    }
    return done;
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
        if (table) return placeLayers(a, n);
        // The kernel copies straight from the source, unless the last page reaches past it.
        if ((a + n) * ps <= srcLen) return placeFrom(ioctl.UFFDIO_COPY, a, n, FROM_SOURCE);
        stage(a, n);
        return placeFrom(ioctl.UFFDIO_COPY, a, n, FROM_STAGING);
      case "move":
        stage(a, n);
        return placeFrom(ioctl.UFFDIO_MOVE, a, n, FROM_STAGING);
    }
  }

  /**
   * Checks the chunks of layer l (1-based) that pages [i, j) come from, each once; returns the
   * first page whose chunk fails its checksum (recording why), or j when all hold.
   */
  function checkedUpTo(l: number, i: number, j: number): number {
    const v = verify!;
    const cs = v.chunkSize;
    const c0 = Math.floor((i * ps) / cs);
    const c1 = Math.floor((j * ps - 1) / cs);
    for (let c = c0; c <= c1; c++) {
      const k = (l - 1) * v.chunks + c;
      let st = chunkState![k];
      if (st === CHUNK.unchecked) {
        const d = chunkDigest(layerBytes[l - 1], layerExtents[l - 1], cs, c);
        st = CHUNK.good;
        if (d === undefined) st = CHUNK.bad;
        else for (let b = 0; b < 32; b++) if (d[b] !== digests![k * 32 + b]) st = CHUNK.bad;
        chunkState![k] = st;
      }
      if (st === CHUNK.bad || st === CHUNK.none) {
        recordError(
          `checksum mismatch: ${v.names[l - 1]} bytes [${c * cs}, ${
            (c + 1) * cs
          }) do not match the manifest; ` +
            "their pages are not served (the layer was changed or damaged after the snapshot)",
        );
        return Math.max(i, Math.floor((c * cs) / ps));
      }
    }
    return j;
  }

  /**
   * Copies the source bytes of pages [a, a+n) into the staging area, zero past the source's end.
   * The usual case is one copyInto from the source's address (libc's memcpy, or V8's memmove from a
   * non-shared view: not its word-by-word copy out of a SharedArrayBuffer view).
   */
  function stage(a: number, n: number): void {
    const st = stagingFor(n);
    const off = a * ps;
    const have = Math.min(n * ps, Math.max(0, srcLen - off));
    if (have === n * ps) return libc.copyInto(srcBase, srcLen, off, st);
    if (have > 0) st.set(srcView!.subarray(off, off + have));
    st.fill(0, have);
  }

  /**
   * Places pages [a, a+n) from a custom source, retrying per policy; bytes done or -errno. Counts
   * the pages (precount) once the source has filled them, before the ioctl; finish() settles.
   */
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
          precount(n);
          return placeFrom(ioctl.UFFDIO_MOVE, a, n, FROM_STAGING);
        }
        precount(n);
        if (!from) return placeFrom(ioctl.UFFDIO_COPY, a, n, FROM_STAGING);
        // A returned buffer: the kernel copies from it directly.
        put(cpw, 0, dbase + a * ps);
        put(cpw, 2, libc.addressOf(from));
        put(cpw, 4, n * ps);
        cpw.fill(0, 6);
        return result(libc.ioctl(fd, ioctl.UFFDIO_COPY, cpb), cps[8]);
      } catch (e) {
        if (attempt >= policy.retries) {
          recordError(`page source failed at offset ${off}: ${e instanceof Error ? e.message : String(e)}`);
          precount(n); // settled (taken back) by finish()
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
      a = minW === 1 ? p : Math.max(rLo, p - (p % minW)); // no division without readahead
      b = Math.min(a + minW, rHi);
    } else {
      // Sequential: right after the last window, or one or two pages after a placed page (another
      // thread's stream, or interleaved streams such as vCPUs taking alternate pages, whose faults
      // arrive together: without the second look each reset the other's window to one page).
      const seq = p === lastEnd || (p > rLo && pages[p - 1] === PAGE.placed) ||
        (p > rLo + 1 && pages[p - 2] === PAGE.placed); // two streams in step: the other's page is next
      window = seq ? Math.min(window * 2, maxW) : minW;
      stats[STAT.window] = window;
      a = p;
      b = Math.min(p + window, rHi);
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
    // A loop, not pages.fill(): the builtin call costs more than the stores of a window (1-64 pages).
    for (let k = a; k < a + n; k++) pages[k] = state;
  }

  // Working-set record: runs [first page, count] placed on demand, in first-touch order
  // (a fault's whole window: the pages it installed), coalesced when contiguous.
  const rec = init.record ? new Int32Array(init.record) : undefined;
  const recCap = rec ? rec.length >> 1 : 0;
  function record(a: number, n: number): void {
    if (rec === undefined) return;
    const k = stats[STAT.recordRuns];
    if (k > 0 && rec[2 * k - 2] + rec[2 * k - 1] === a) {
      rec[2 * k - 1] += n;
    } else if (k < recCap) {
      rec[2 * k] = a;
      rec[2 * k + 1] = n;
      stats[STAT.recordRuns] = k + 1;
    } else {
      stats[STAT.recordDropped] += n;
    }
  }

  /**
   * Resolves page p by the error policy; false when that must wait for the pending events (EAGAIN:
   * the page is then `failing`, and its fault is retried after them, without the source).
   */
  function fail(p: number): boolean {
    if (policy.then === "zero") {
      const r = zeroFill(p, 1);
      if (r === -EAGAIN) {
        pages[p] = PAGE.failing;
        stats[STAT.eagain]++;
        return false;
      }
      if (r > 0 || r === -EEXIST) pages[p] = PAGE.placed;
      if (r > 0) stats[STAT.zeroed]++;
      else if (r === -EEXIST) wake(p, 1);
    } else {
      const r = rangeOp(ioctl.UFFDIO_POISON, p, 1);
      if (r === -EAGAIN) {
        pages[p] = PAGE.failing;
        stats[STAT.eagain]++;
        return false;
      }
      if (r === -EEXIST) {
        pages[p] = PAGE.placed; // placed after all (a thread that ended just after its copy)
        wake(p, 1);
      } else if (r > 0) {
        pages[p] = PAGE.poisoned;
        stats[STAT.poisoned]++;
      } else {
        // No POISON on this descriptor (a VMM's, opened without it) or the range went away: the
        // faulter stays blocked. Counted, so a caller (the Firecracker session) can act on it.
        pages[p] = PAGE.poisoned;
        stats[STAT.unserved]++;
        recordError(`page ${p} (offset ${p * ps}) could not be served nor poisoned (errno ${-r})`);
      }
    }
    return true;
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
    if (state === PAGE.failing) return fail(p) ? HANDLED : RETRY; // the policy, after the events
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

  /**
   * Counts n pages as placed before the ioctl that places them wakes their faulters, so a
   * thread woken by its fault reads counters that include its own pages; {@link settle} takes
   * back what the ioctl did not place.
   */
  function precount(n: number): void {
    stats[STAT.pages] += n;
    stats[STAT.bytes] += n * ps;
  }

  /** After an ioctl counted by precount(n) returned r (bytes or -errno): uncounts what it did not place. */
  function settle(n: number, r: number): void {
    const got = r > 0 ? r : 0;
    if (got !== n * ps) {
      stats[STAT.pages] -= n - Math.floor(got / ps);
      stats[STAT.bytes] -= n * ps - got;
    }
  }

  /**
   * After placing window [a, b) (counted by precount(b - a)) with result r: DONE, DEFER (retry
   * after events) or SINGLE (then the caller places p alone: precount(1), finishSingle).
   */
  function finish(p: number, a: number, b: number, r: number): number {
    settle(b - a, r);
    if (r > 0) {
      const done = r * perPage;
      mark(a, done, PAGE.placed);
      if (rec !== undefined) record(a, done);
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
      if (a !== p) return SINGLE;
      precount(1); // finishSingle settles one page
      return finishSingle(p, r);
    }
    if (r === SOURCE_FAILED) return fail(p) ? DONE : DEFER; // the source failed after its retries
    // ENOENT/ESRCH: the mapping or the faulting process went away.
    recordError(`${placement} of pages [${a}, ${b}) failed: errno ${-r}`);
    if (r === -ERRNO.EFAULT && !fail(p)) return DEFER;
    return DONE;
  }

  /** After placing only the faulting page p (counted by precount(1)) with result r. */
  function finishSingle(p: number, r: number): number {
    settle(1, r);
    if (r > 0) {
      pages[p] = PAGE.placed;
      record(p, 1);
    } else if (r === -EEXIST) {
      pages[p] = PAGE.placed;
      wake(p, 1);
    } else if (r === -EAGAIN) {
      stats[STAT.eagain]++;
      return DEFER;
    } else if (r === SOURCE_FAILED) {
      if (!fail(p)) return DEFER;
    } else {
      recordError(`${placement} of page ${p} failed: errno ${-r}`);
      if (!fail(p)) return DEFER;
    }
    return DONE;
  }

  // ---- url source: chunks fetched by the fetcher thread into cache slots (see fetcher.ts) ----
  const urlChunk = urlSrc ? new Int32Array(urlSrc.state) : new Int32Array(0);
  const slotOfChunk = urlSrc ? new Int32Array(urlSrc.slotOf) : new Int32Array(0);
  const chunkBytes = urlSrc?.chunkSize ?? ps;
  const ppc = chunkBytes / ps; // pages per chunk
  const nChunks = urlSrc ? Math.ceil(urlSrc.length / chunkBytes) : 0;
  const nSlots = urlSrc?.slots ?? 0;
  const slotChunk = new Int32Array(nSlots).fill(-1);
  const slotStamp = new Float64Array(nSlots);
  const parkedOn = new Int32Array(nChunks); // faults parked on each chunk (it may not be evicted)
  const isWanted = new Uint8Array(nChunks);
  // Chunks evicted with no empty page left: readahead never fetches them again (a fault still does).
  const isSpent = new Uint8Array(nChunks);
  const wantedQ = new Int32Array(Math.max(1, nChunks));
  let nWanted = 0;
  const parked = new Float64Array(Math.max(64, init.batch * 8));
  let nParked = 0;
  let fetching = 0;
  let stamp = 0;
  const efdBuf = new Uint8Array(8);
  // The cache's address (the kernel copies from it; the view holds it).
  const cacheView = urlSrc
    ? new Uint8Array(urlSrc.cache, urlSrc.cacheOffset, nSlots * chunkBytes)
    : undefined;
  const cacheBase = cacheView ? libc.addressOf(cacheView) : 0;
  const seqAhead = urlSrc ? Math.max(1, Math.min(urlSrc.concurrency, nSlots >> 2)) : 1;
  const ring = urlSrc?.fetchPath === "raw" ? new Int32Array(urlSrc.ring) : undefined;
  const ringMask = ring ? ring.length - 3 : 0; // entries: a power of two
  const ringWake = new Uint8Array([1, 0, 0, 0, 0, 0, 0, 0]); // eventfd: add 1

  /** A free cache slot, or the least recently used one whose chunk is done and awaited by no fault. */
  function slotFor(): number {
    let best = -1;
    let free = -1;
    let spent = -1;
    for (let s = 0; s < nSlots; s++) {
      const c = slotChunk[s];
      if (c < 0) {
        if (free < 0) free = s;
        continue;
      }
      const st = Atomics.load(urlChunk, c);
      if (st === CHUNK_STATE.fetching || parkedOn[c] > 0) continue;
      if (best < 0 || slotStamp[s] < slotStamp[best]) best = s;
      // A chunk none of whose pages is still empty is needed no more: reuse its slot (memory
      // written before) rather than a never-used one (every first write there is a page fault).
      if (spent < 0 || slotStamp[s] < slotStamp[spent]) {
        const lo = c * ppc;
        const hi = Math.min(nPages, lo + ppc);
        let k = lo;
        while (k < hi && pages[k] !== PAGE.empty) k++;
        if (k === hi) spent = s;
      }
    }
    const pick = spent >= 0 ? spent : free >= 0 ? free : best;
    if (pick >= 0 && slotChunk[pick] >= 0) {
      const old = slotChunk[pick];
      if (pick === spent) isSpent[old] = 1;
      slotOfChunk[old] = -1;
      Atomics.store(urlChunk, old, CHUNK_STATE.absent);
    }
    return pick;
  }

  /** Readahead: asks for chunk c unless its slot went to another chunk because it was spent. */
  function readAhead(c: number): void {
    if (c < nChunks && isSpent[c] === 0) request(c);
  }

  /** Asks the fetcher for chunk c (once), into a slot; without a free slot it waits in wantedQ. */
  function request(c: number): void {
    if (c < 0 || c >= nChunks || Atomics.load(urlChunk, c) !== CHUNK_STATE.absent) return;
    const s = slotFor();
    if (s < 0) {
      if (isWanted[c] === 0) {
        isWanted[c] = 1;
        wantedQ[nWanted++] = c;
      }
      return;
    }
    isWanted[c] = 0;
    isSpent[c] = 0;
    slotChunk[s] = c;
    slotStamp[s] = ++stamp;
    slotOfChunk[c] = s;
    Atomics.store(urlChunk, c, CHUNK_STATE.fetching);
    fetching++;
    // One request per chunk (not per fault): into the ring (raw path) or a message.
    if (ring) {
      const i = Atomics.add(ring, 0, 1) & ringMask;
      Atomics.store(ring, 2 + i, c);
      libc.write(urlSrc!.reqFd, ringWake, 8);
    } else fetchPort!.postMessage(c);
  }

  /**
   * A fault on page p of a url source: placed from the cached chunk, or parked until the fetcher
   * has it (true: handled or parked; false: retry after events).
   */
  function resolveUrl(p: number): boolean {
    if (!regionOf(p)) return true;
    if (pages[p] !== PAGE.empty) {
      const w = begin(p);
      return w === HANDLED;
    }
    const c = Math.floor(p / ppc);
    const st = Atomics.load(urlChunk, c);
    if (st === CHUNK_STATE.failed) return fail(p); // after the fetcher's retries (the reason is in lastError)
    if (st !== CHUNK_STATE.ready) {
      if (st === CHUNK_STATE.absent) request(c);
      // Sequential faults: the chunk before this one is done, so ask for the next one too.
      if (c > 0 && Atomics.load(urlChunk, c - 1) === CHUNK_STATE.ready) readAhead(c + 1);
      parked[nParked++] = p;
      parkedOn[c]++;
      return true;
    }
    stats[STAT.memoryHits]++;
    begin(p); // the window
    const lo = c * ppc;
    const hi = lo + ppc;
    const a = winA < lo ? lo : winA;
    const b = winB > hi ? hi : winB;
    slotStamp[slotOfChunk[c]] = ++stamp;
    cacheFrom = cacheBase + slotOfChunk[c] * chunkBytes - lo * ps;
    // Reading into the second half of a chunk: the next one is probably wanted soon, and when the
    // chunk before is cached too (a sequential stream) several next ones, fetched in parallel.
    if (b > lo + (ppc >> 1)) {
      const ahead = c > 0 && Atomics.load(urlChunk, c - 1) === CHUNK_STATE.ready ? seqAhead : 1;
      for (let k = 1; k <= ahead; k++) readAhead(c + k);
    }
    precount(b - a);
    let k = finish(p, a, b, placeFrom(ioctl.UFFDIO_COPY, a, b - a, FROM_CACHE));
    if (k === SINGLE) {
      precount(1);
      k = finishSingle(p, placeFrom(ioctl.UFFDIO_COPY, p, 1, FROM_CACHE));
    }
    return k === DONE;
  }

  /** The fetcher finished chunks: resolve the faults parked on them, then serve waiting requests. */
  function fetchesDone(): void {
    libc.read(urlSrc!.doneFd, efdBuf, 8);
    const n = nParked;
    nParked = 0;
    for (let i = 0; i < n; i++) {
      const p = parked[i];
      const c = Math.floor(p / ppc);
      if (Atomics.load(urlChunk, c) === CHUNK_STATE.fetching) {
        parked[nParked++] = p;
        continue;
      }
      parkedOn[c]--;
      if (!resolveUrl(p)) deferred[nDeferred++] = p;
    }
    fetching = 0;
    for (let s = 0; s < nSlots; s++) {
      if (slotChunk[s] >= 0 && Atomics.load(urlChunk, slotChunk[s]) === CHUNK_STATE.fetching) fetching++;
    }
    const w = nWanted;
    nWanted = 0;
    for (let i = 0; i < w; i++) {
      const c = wantedQ[i];
      isWanted[c] = 0;
      if (Atomics.load(urlChunk, c) === CHUNK_STATE.absent) request(c);
    }
  }

  /** Resolves a fault on page p with a synchronous placement; false: retry after events. */
  function resolveSync(p: number): boolean {
    if (urlSrc) return resolveUrl(p);
    if (!regionOf(p)) return true;
    const w = begin(p);
    if (w !== PLACE) return w === HANDLED;
    const a = winA;
    const b = winB;
    precount(b - a);
    let k = finish(p, a, b, placeSync(a, b - a));
    if (k === SINGLE) {
      precount(1);
      k = finishSingle(p, placeSync(p, 1));
    }
    return k === DONE;
  }

  // The most common configurations, no readahead and COPY straight from the source's address (or
  // MOVE of the page staged from it), take a shorter path: resolveDirect does what resolveSync
  // does for them (window [p, p + 1), placeSync's copy from FROM_SOURCE or stage and move) without
  // the dispatch through begin, windowFor and placeSync, so less code runs per fault. Anything
  // else about the page (not empty, past the source's end) goes the general way.
  const direct = (placement === "copy" || placement === "move") && !table && !urlSrc && !fill &&
    srcView !== undefined && ra.mode === "fixed" && minW === 1;
  const directMove = placement === "move";

  /** resolveSync for the direct configuration. */
  function resolveDirect(p: number): boolean {
    if (!regionOf(p) || pages[p] !== PAGE.empty || (p + 1) * ps > srcLen) return resolveSync(p);
    winA = p;
    winB = lastEnd = p + 1;
    precount(1);
    let r: number;
    if (directMove) {
      stage(p, 1);
      r = placeFrom(ioctl.UFFDIO_MOVE, p, 1, FROM_STAGING);
    } else {
      r = placeFrom(ioctl.UFFDIO_COPY, p, 1, FROM_SOURCE);
    }
    let k = finish(p, p, p + 1, r);
    if (k === SINGLE) {
      precount(1);
      k = finishSingle(p, placeSync(p, 1));
    }
    return k === DONE;
  }

  /**
   * Resolves a fault on page p from the custom source; false: retry after events. While
   * the source runs, ctrl[CTRL.filling] names p, so that if the source ends this thread
   * (process.exit, a fatal error) the thread taking over counts that as a failed attempt
   * for p (see resolveCrashed).
   */
  async function resolveCustom(p: number): Promise<boolean> {
    if (!regionOf(p)) return true;
    const w = begin(p);
    if (w !== PLACE) return w === HANDLED;
    const a = winA;
    const b = winB;
    if (Atomics.load(ctrl, CTRL.filling) !== p + 1) {
      Atomics.store(ctrl, CTRL.crashes, 0);
      Atomics.store(ctrl, CTRL.filling, p + 1);
    }
    // placeCustom counts its pages itself, after the source ran: a source that ends this thread
    // leaves nothing counted.
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
    if (p >= nPages || pages[p] !== PAGE.empty || !regionOf(p)) {
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
      const p = pageAt(mw[w + 5] * TWO32 + mw[w + 4]);
      if (p < 0) stats[STAT.outside]++;
      return p;
    }
    otherEvent(w, code);
    return -1;
  }

  /**
   * Handles a message other than a page fault (at word w of the buffer). Apart from onEvent, so
   * that onEvent stays small enough for the compiler to inline it into readBatch.
   */
  function otherEvent(w: number, code: number): void {
    stats[STAT.events]++;
    const x = mw[w + 3] * TWO32 + mw[w + 2];
    const y = mw[w + 5] * TWO32 + mw[w + 4];
    if (code === UFFD_EVENT.REMOVE || code === UFFD_EVENT.UNMAP) {
      for (let r = 0; r < nRegions; r++) {
        const start = regions[r * REGION_WORDS];
        const first = regions[r * REGION_WORDS + 2];
        const n = regions[r * REGION_WORDS + 1] / ps;
        const s = Math.max(0, Math.floor((x - start) / ps));
        const e = Math.min(n, Math.ceil((y - start) / ps));
        if (e <= s) continue;
        dropped(first + s, first + e, code);
      }
    } else if (code === UFFD_EVENT.REMAP) {
      // A region moved: serve it at its new address.
      for (let r = 0; r < nRegions; r++) {
        if (regions[r * REGION_WORDS] === x) regions[r * REGION_WORDS] = y;
      }
      rHi = rLo; // the current region's address may have changed: look it up again
    }
  }

  /**
   * Pages [s, e) were dropped by madvise (REMOVE) or unmapped (UNMAP). Dropped pages read as
   * zeros afterwards, as madvise promises (never the source's bytes again, placed or not),
   * unless the caller chose `onRemove: "source"`; unmapped ones are never served again.
   */
  function dropped(s: number, e: number, code: number): void {
    if (code === UFFD_EVENT.UNMAP) {
      pages.fill(PAGE.gone, s, e);
      return;
    }
    stats[STAT.removed] += e - s;
    const zero = init.onRemove === "zero";
    for (let k = s; k < e; k++) {
      const st = pages[k];
      if (st === PAGE.placed || (zero && st === PAGE.empty)) pages[k] = zero ? PAGE.removed : PAGE.empty;
    }
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
      else if (!(direct ? resolveDirect(p) : resolveSync(p))) deferred[nDeferred++] = p;
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
  const mem = heapUsedOf();
  stats[STAT.heapNow] = mem ? mem().heapUsed : 0;
  if (stats[STAT.heapStart] === 0) stats[STAT.heapStart] = stats[STAT.heapNow]; // else sampled before ready

  // The prefetcher: installs a plan of pages (a recorded working set) right after the start, in
  // coalesced runs of up to `prefetchRun` pages placed with DONTWAKE, one poll(0) between runs so
  // demand faults go first, and one WAKE per region at the end. A page already placed (by a
  // demand fault) is skipped; a fault on a page the prefetcher placed meanwhile finds it placed
  // and is woken by begin(). Only address sources prefetch (checked by the FaultServer).
  const plan = init.prefetch ? new Int32Array(init.prefetch) : undefined;
  const planLen = plan?.length ?? 0;
  const planRun = Math.max(1, init.prefetchRun);
  let planNext = 0;
  let planScan = 0;
  let planStalled = false;
  let planAgain = 0;
  let prefetching = planLen > 0;
  const planStart = performance.now();

  /** Installs the next run of the plan; false once the plan is done. */
  function prefetchStep(): boolean {
    const t = plan!;
    while (
      planNext < planLen && (t[planNext] < 0 || t[planNext] >= nPages || pages[t[planNext]] !== PAGE.empty)
    ) {
      planNext++;
    }
    if (planNext >= planLen || !regionOf(t[planNext])) {
      if (planNext < planLen) {
        planNext++;
        return true;
      }
      for (let r = 0; r < nRegions; r++) {
        regionOf(regions[r * REGION_WORDS + 2]);
        wake(rLo, rHi - rLo);
      }
      stats[STAT.prefetchUs] = Math.max(1, (performance.now() - planStart) * 1000);
      return false;
    }
    const a = t[planNext];
    let n = 1;
    let lim = rHi;
    if (urlSrc) {
      // Keep the fetcher busy with the plan's next chunks (in parallel), then place what is cached.
      const ahead = Math.max(1, Math.min(urlSrc.concurrency * 2, nSlots >> 1));
      while (planScan < planLen && fetching < ahead) {
        const q = t[planScan++];
        if (q >= 0 && q < nPages && pages[q] === PAGE.empty) request(Math.floor(q / ppc));
      }
      const c = Math.floor(a / ppc);
      const st = Atomics.load(urlChunk, c);
      if (st === CHUNK_STATE.failed) {
        planNext++; // a demand fault, if any, resolves it by the policy
        return true;
      }
      if (st !== CHUNK_STATE.ready) {
        request(c);
        planStalled = true; // the loop blocks in poll() until the fetcher signals
        return true;
      }
      lim = Math.min(rHi, (c + 1) * ppc);
      cacheFrom = cacheBase + slotOfChunk[c] * chunkBytes - c * ppc * ps;
      slotStamp[slotOfChunk[c]] = ++stamp;
    }
    while (
      n < planRun && planNext + n < planLen && t[planNext + n] === a + n && a + n < lim &&
      pages[a + n] === PAGE.empty
    ) n++;
    mode = MODE_DONTWAKE;
    const r = urlSrc ? placeFrom(ioctl.UFFDIO_COPY, a, n, FROM_CACHE) : placeSync(a, n);
    mode = 0;
    if (r > 0) {
      const done = r / ps;
      mark(a, done, PAGE.placed);
      stats[STAT.pages] += done;
      stats[STAT.bytes] += r;
      stats[STAT.prefetched] += done;
      planNext += done;
      planAgain = 0;
    } else if (r === -EAGAIN && ++planAgain < 1000) {
      stats[STAT.eagain]++; // events are pending: the loop reads them, then this run is tried again
    } else {
      if (r === -EEXIST) pages[a] = PAGE.placed; // present already (placed behind the server's back)
      planNext++; // otherwise (the mapping went away): a demand fault, if any, resolves it
      planAgain = 0;
    }
    return true;
  }

  resolveCrashed();
  Atomics.store(ctrl, CTRL.state, STATE.running);
  Atomics.notify(ctrl, CTRL.state);
  const spinMs = init.busyPollUs / 1000;
  try {
    for (;;) {
      revents[3] = 0;
      revents[7] = 0;
      revents[11] = 0;
      let ready = 0;
      if (prefetching && !planStalled) {
        ready = libc.poll(pollfds, nfds, 0);
        if (ready === 0) {
          if (nDeferred > 0) retryDeferred();
          prefetching = prefetchStep();
          continue;
        }
      } else if (spinMs > 0 && nDeferred === 0) {
        const until = performance.now() + spinMs;
        do {
          ready = libc.poll(pollfds, nfds, 0);
        } while (ready === 0 && performance.now() < until);
        if (ready > 0) stats[STAT.spinHits]++;
      }
      if (ready === 0 && (!prefetching || planStalled)) {
        ready = libc.poll(pollfds, nfds, nDeferred > 0 ? 1 : -1);
      }
      if (ready < 0) {
        if (libc.errno() === EINTR) continue;
        throw new Error(`poll failed: errno ${libc.errno()}`);
      }
      if (revents[7] !== 0) break;
      if (urlSrc && revents[11] !== 0) {
        fetchesDone();
        planStalled = false;
      }
      if (revents[3] !== 0) readBatch();
      if (nDeferred > 0) retryDeferred();
      if (nPending > 0) await drainPending();
    }
    // Stop requested: serve what is already queued so no faulter is left waiting.
    // (Faults parked on a fetch wait for it, up to a few seconds.)
    for (let tries = 0; tries < (urlSrc ? 5000 : 1000); tries++) {
      revents[3] = 0;
      revents[11] = 0;
      const waitMs = nDeferred > 0 || nParked > 0 ? 1 : 0;
      const r = libc.poll(pollfds, urlSrc ? 3 : 1, waitMs);
      if (urlSrc && r > 0 && revents[11] !== 0) fetchesDone();
      const more = r > 0 && revents[3] !== 0 && readBatch();
      if (nDeferred > 0) retryDeferred();
      if (nPending > 0) await drainPending();
      if (!more && nDeferred === 0 && nParked === 0) break;
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
    void cacheView;
  }
}
