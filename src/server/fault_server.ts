/**
 * Memory that fills itself: a region, a page source and a Worker that resolves the
 * faults. The caller reads and writes the memory from its own thread (or Workers);
 * counters live in shared memory and can be read at any time without messaging.
 * @module
 */
import { MessageChannel, type MessagePort, Worker } from "node:worker_threads";
import { libc } from "../../ffi/mod.ts";
import { mm } from "../abi.ts";
import { invalid, UffdError } from "../errors.ts";
import { describeValue, showValue } from "../checks.ts";
import { EventFd } from "../eventfd.ts";
import { Mapping, pageSize as systemPageSize } from "../memory.ts";
import { Userfaultfd } from "../userfaultfd.ts";
import {
  CTRL,
  CTRL_COUNT,
  ERROR_BYTES,
  type ErrorPolicy,
  FETCH_PATH,
  PAGE,
  type Placement,
  REGION_WORDS,
  type ServerInit,
  STAT,
  STAT_COUNT,
  STATE,
} from "./layout.ts";
import { isAddressSource, openSource, type PageSource, SOURCE_KINDS } from "./sources.ts";
import { checkWorkingSet, planOf, type WorkingSet } from "./working_set.ts";

export type { ErrorPolicy, Placement } from "./layout.ts";
export type { FillFunction } from "./loop.ts";
export type { PageSource } from "./sources.ts";

/**
 * One region of another process's memory and where its pages are in the source: the page at
 * `start + i` is the source's byte `offset + i` (Firecracker's `base_host_virt_addr`, `size`,
 * `offset`).
 */
export interface RemoteRegion {
  /** Start address in that process. */
  start: number;
  /** Length in bytes. */
  length: number;
  /** Offset of the region's first byte in the source (default 0). */
  offset?: number;
}

/**
 * Another process's registered memory, served through its descriptor (see
 * {@link FaultServerOptions.remote}): one range (`start`, `length`, served from the source's
 * start) or several `regions` on the same descriptor, each at its own source offset.
 */
export interface RemoteRange {
  /** The descriptor, received from the process that registered the range (`remote: true`). */
  uffd: Userfaultfd;
  /** Start address of the range in that process (with `length`; or give `regions`). */
  start?: number;
  /** Length of the range in bytes. */
  length?: number;
  /** Several regions of that process on this one descriptor, each with its offset in the source. */
  regions?: RemoteRegion[];
  /** Page size of the range there (the huge page size for hugetlb memory); default the system page size. */
  pageSize?: number;
}

/** Options of {@link FaultServer}. */
export interface FaultServerOptions {
  /** The page source. */
  source: PageSource;
  /**
   * Serve this caller-owned mapping instead of creating one (not for `memfd`): anonymous
   * private memory, or hugetlb memory (`Mapping.hugetlb()`, `Mapping.memfd({ hugetlb: true })`),
   * served a whole huge page per page with COPY (zero pages too: hugetlb has no ZEROPAGE;
   * no `move`). close() leaves it mapped and poisons the pages never placed, so a later touch
   * raises SIGBUS instead of silently reading zeros (unless `onClose: "zero"`).
   */
  mapping?: Mapping;
  /**
   * Serve another process's memory instead: a descriptor received from it (`recvFd` then
   * `Userfaultfd.fromFd(fd, features, { remote: true })`) whose range that process has
   * registered (MISSING), as a VMM does for a snapshot-restore handler. The server owns the
   * descriptor from then on and closes it at close(). Pages are placed with COPY (or ZEROPAGE)
   * from this process's source into that process's memory; no `move` (the kernel moves no
   * pages across processes), no `memfd` source, no `bytes()` view.
   */
  remote?: RemoteRange;
  /** For a caller-owned `mapping` or a `remote` range: what never-placed pages become at close (default `"poison"`). */
  onClose?: "poison" | "zero";
  /** How to place pages (default: copy; zeropage for `zero`, continue for `memfd`). `move` stages then UFFDIO_MOVE. */
  placement?: Placement;
  /**
   * Readahead: a number of pages per fault (aligned window, default 1), or `"adaptive"`
   * (doubles on sequential faults up to 64 pages, back to 1 on random ones), or bounds.
   */
  readahead?: number | "adaptive" | { min?: number; max?: number };
  /** Source failures: retries (default 2), then `"poison"` (default: the toucher gets SIGBUS) or `"zero"`. */
  onError?: Partial<ErrorPolicy>;
  /**
   * Spin with poll(0) this many microseconds before blocking, to skip the cross-CPU
   * wake-up (~25 us on a VM). Costs a busy CPU while idle within the window. Default 0.
   */
  busyPollUs?: number;
  /** Messages read per read() (default 32). */
  batch?: number;
  /**
   * Time one batch of faults in this many for the latency counters (default 16; 1 times
   * every batch). A clock read costs 35-85 ns against ~7 us per fault; custom sources are
   * always timed.
   */
  latencyEvery?: number;
  /**
   * Pages the caller drops with madvise (a REMOVE event): `"zero"` serves zeros next time,
   * as Firecracker does and as madvise promises (default); `"source"` serves the source again.
   */
  onRemove?: "zero" | "source";
  /**
   * A working set to install right after the start (record it with `record: true` and
   * {@link FaultServer.workingSet}): pages in its order, in coalesced runs of up to
   * `prefetchRun` pages, each one COPY with DONTWAKE, demand faults served first between runs,
   * one WAKE per region at the end. Pages outside it are served on demand. Address sources only
   * (bytes, file, snapshot, zero).
   */
  prefetch?: WorkingSet;
  /** Largest prefetch run in pages (default 2 MiB worth of pages). */
  prefetchRun?: number;
  /** Record the pages installed on demand, in first-touch order, for {@link FaultServer.workingSet}. */
  record?: boolean;
  /** Stops the server when aborted. */
  signal?: AbortSignal;
  /** How long close() waits for the Worker to drain, in ms (default 5000). */
  closeTimeoutMs?: number;
  /**
   * Whether faults the kernel takes while it accesses the served memory on the program's behalf
   * (`write(2)`, `send(2)`, `crypto`, `fs` given a view of it) are left undelivered. Default: they
   * are served whenever this process may open such a descriptor (`/dev/userfaultfd` is open to it,
   * or it has CAP_SYS_PTRACE, or `vm.unprivileged_userfaultfd` is 1); otherwise the descriptor is
   * user-mode-only and such a call fails with EFAULT on a page not yet touched (touch it first).
   * {@link FaultServer.kernelFaults} says which. `true` asks for user-mode-only always; `false`
   * requires kernel-mode faults and throws EPERM where they cannot be had. Ignored for `remote`.
   */
  userModeOnly?: boolean;
  /**
   * Read a `file` or `snapshot` source's files into memory ahead of the faults, from the start
   * on: the main thread asks the kernel to populate this process's mappings of them
   * (`MADV_POPULATE_READ`, 2 MiB at a time, at most ~5 ms per event-loop turn) while the
   * serving thread serves. A cold page cache is then read sequentially, in large requests,
   * instead of one page per fault at random; a warm one saves each fault's COPY a page-table
   * miss on the source. Firecracker's example handler does the same with `MAP_POPULATE`. Costs
   * page cache for the whole file (data extents only: holes are skipped). Default false;
   * {@link FaultServer.populated} counts the bytes done.
   *
   * `"sync"`: all of it at once, before {@link FaultServer.start} resolves (the serving thread
   * already serves meanwhile), as `MAP_POPULATE` does at mmap: Firecracker's example handler's
   * exact design, for a like-for-like comparison; the background read is the better default.
   */
  populate?: boolean | "sync";
}

/** A snapshot of the server's counters. */
export interface FaultServerStats {
  /** Page-fault messages read. */
  faults: number;
  /** Pages placed. */
  pages: number;
  /** Bytes placed. */
  bytes: number;
  /** EEXIST answers (page already present). */
  eexist: number;
  /** EAGAIN answers (address space changing, retried). */
  eagain: number;
  /** Source or placement errors. */
  errors: number;
  /**
   * Worst time to resolve one batch of faults (one read()), microseconds, over the timed
   * batches (see `latencyEvery`): it bounds the worst fault of those batches.
   */
  maxLatencyUs: number;
  /** Mean time to resolve one fault over the timed batches, microseconds. */
  meanLatencyUs: number;
  /** Non-fault events (REMOVE, UNMAP, REMAP). */
  events: number;
  /** UFFDIO_WAKE calls. */
  wakes: number;
  /** Current readahead window, pages. */
  window: number;
  /** Pages poisoned after a source failure. */
  poisoned: number;
  /** Pages zero-filled after a source failure (policy `zero`). */
  zeroed: number;
  /** Source retries. */
  retries: number;
  /** Times a standby thread took over from a serving thread that ended unexpectedly. */
  takeovers: number;
  /** Batches found while busy-polling. */
  spinHits: number;
  /** read() calls that returned messages. */
  reads: number;
  /** Pages dropped by madvise. */
  removed: number;
  /**
   * JS heap of the serving thread itself (not the process) when the server became ready, bytes
   * (0 where the runtime does not report it).
   */
  heapStart: number;
  /** JS heap of the Worker at the last sample (every 65536 faults and at stop), bytes. */
  heapNow: number;
  /** Pages installed by the prefetcher. */
  prefetched: number;
  /** Milliseconds from the start until the prefetch plan was installed (0: none, or not yet done). */
  prefetchMs: number;
  /** Pages placed as zeros (holes of a snapshot, pages dropped by madvise, a zero source). */
  zeroPages: number;
  /** Faults at addresses outside every served region (not resolved by this server). */
  outside: number;
  /**
   * Pages whose fault could be neither served nor poisoned (a source failure on a descriptor
   * without UFFD_FEATURE_POISON, such as a VMM's): their faulters stay blocked until close().
   */
  unserved: number;
  /** url source: bytes fetched over HTTP. */
  fetchedBytes: number;
  /** url source: range requests made (retries included). */
  requests: number;
  /** url source: chunks read from the cache directory instead of the network. */
  cacheHits: number;
  /** url source: faults whose chunk was already in the memory cache. */
  memoryHits: number;
  /** url source: requests retried (timeouts, failed connections, short bodies). */
  fetchRetries: number;
  /** url source: chunks that failed after their retries (their pages resolved by `onError`). */
  fetchErrors: number;
  /** url source: mean time of a successful range request, ms. */
  fetchMeanMs: number;
  /** url source: the slowest successful range request, ms. */
  fetchMaxMs: number;
  /**
   * url source: how the fetcher makes its requests now. `"raw"`: over libc sockets, each body read
   * with recv(2) straight into the chunk cache (`http://` URLs without a proxy variable set);
   * `"fetch"`: the runtime's `fetch()` (`https://`, a proxy, or after the raw path met a redirect
   * or a chunked or encoded body, from then on); `"none"`: no fetcher (another source), or not
   * started yet.
   */
  fetchPath: "raw" | "fetch" | "none";
}

/** Life cycle of a {@link FaultServer}'s Worker. */
export type FaultServerState = "starting" | "running" | "stopped" | "failed";

const MAX_ADAPTIVE = 64;
/** The most messages one read() of the serving thread takes (an EventBuffer's capacity at most). */
const MAX_BATCH = 1 << 20;

/**
 * Serves page faults of a region from a {@link PageSource} in a Worker.
 *
 * @example
 * ```ts
 * const data = alignedSharedBytes(1 << 20);
 * await using server = await FaultServer.start({ source: { kind: "bytes", data }, readahead: "adaptive" });
 * const mem = server.bytes(); // fills itself on first touch
 * console.log(mem[12345], server.stats.faults);
 * ```
 */
export class FaultServer {
  /** The kind of the page source. */
  readonly source: PageSource["kind"];
  /** Resolves when the Worker serves faults; rejects if it could not start. */
  readonly ready: Promise<void>;
  /** The descriptor. */
  readonly uffd: Userfaultfd;
  /**
   * Whether faults taken in kernel mode (a syscall reading or writing the served memory) are
   * served: false when the descriptor is user-mode-only (see {@link FaultServerOptions.userModeOnly}),
   * and then such a syscall on a page not yet touched fails with EFAULT. False for `remote` (the
   * other process opened that descriptor and chose).
   */
  readonly kernelFaults: boolean;
  /** The served regions (Float64Array of start, length, first page), shared with the Worker. */
  readonly #regions: Float64Array;
  readonly #pageSize: number;
  readonly #mapping: Mapping | undefined;
  readonly #stats: Float64Array;
  readonly #ctrl: Int32Array;
  readonly #pages: Uint8Array;
  readonly #error: Uint8Array;
  readonly #record: Int32Array | undefined;
  /** Created once the options are checked (a rejected server must leave no descriptor behind). */
  readonly #stop: EventFd;
  readonly #threads: Worker[] = [];
  readonly #owned: Mapping[] = [];
  readonly #hold: unknown[] = [];
  readonly #releases: (() => void)[] = [];
  readonly #fetcherResources: (() => void)[] = [];
  #fetcher = false;
  #fetcherAlive = false;
  readonly #closeTimeoutMs: number;
  #closed = false;
  #toPopulate: Array<[number, number]> = [];
  #populated = 0;
  #exited: Promise<void>;
  #onClose: "poison" | "zero" | undefined;

  /** Creates the descriptor and mapping and starts the Worker; await {@link ready} (or use {@link start}). */
  constructor(options: FaultServerOptions) {
    const src = options.source;
    this.source = src?.kind;
    const { placement, readahead, maxWindow, batch, latencyEvery, busyPollUs, onError } = resolveOptions(
      options,
    );
    this.#closeTimeoutMs = options.closeTimeoutMs ?? 5000;

    const remote = options.remote;
    const remoteRegions = remote ? checkRemote(remote, options, placement) : undefined;
    // hugetlb: a caller's Mapping.hugetlb()/memfd({ hugetlb: true }) mapping, a hugetlb memfd
    // source, or a remote range of huge pages.
    const huge = options.mapping?.kind === "hugetlb" ||
      (src.kind === "memfd" && src.mapping?.kind === "hugetlb") ||
      (remote !== undefined && (remote.pageSize ?? systemPageSize) > systemPageSize);
    if (huge && placement === "move") {
      throw invalid(
        "FaultServer",
        'UFFDIO_MOVE works on private anonymous memory only; use placement "copy" on hugetlb',
      );
    }
    if ((options.prefetch || options.record) && !isAddressSource(src)) {
      throw invalid(
        "FaultServer",
        `prefetch and record need an address source (bytes, file, snapshot, zero), not ${src.kind}`,
      );
    }
    const prefetch = options.prefetch === undefined ? undefined : checkWorkingSet(options.prefetch);
    const features = ["EVENT_REMOVE", "EVENT_UNMAP", "EVENT_REMAP"] as const;
    const extra = [
      ...(onError.then === "poison" || placement === "continue" || options.mapping
        ? ["POISON" as const]
        : []),
      ...(placement === "move" ? ["MOVE" as const] : []),
      ...(huge ? ["MISSING_HUGETLBFS" as const] : []),
      ...(placement === "continue"
        ? huge ? ["MINOR_HUGETLBFS" as const] : ["MINOR_SHMEM" as const, "MISSING_SHMEM" as const]
        : []),
    ];
    // O_NONBLOCK: poll(2) on a blocking userfaultfd always reports POLLERR.
    let kernelFaults = false;
    if (remote) this.uffd = remote.uffd;
    else {
      const open = (userModeOnly: boolean): Userfaultfd =>
        Userfaultfd.open({ features: [...features, ...extra], nonBlocking: true, userModeOnly });
      if (options.userModeOnly === true) this.uffd = open(true);
      else {
        try {
          this.uffd = open(false);
          kernelFaults = true;
        } catch (e) {
          // Without /dev/userfaultfd, CAP_SYS_PTRACE or the sysctl, the kernel allows only a
          // user-mode-only descriptor (EPERM otherwise): take that unless the caller required more.
          if (options.userModeOnly === false || !(e instanceof UffdError) || e.code !== "EPERM") throw e;
          this.uffd = open(true);
        }
      }
    }
    this.kernelFaults = kernelFaults;
    let init: ServerInit;
    try {
      this.#stop = new EventFd();
      const opened = openSource(src);
      this.#hold.push(...opened.hold);
      if (options.populate) this.#toPopulate = opened.populate ?? [];
      this.#fetcher = opened.fetcher ?? false;
      if (this.#fetcher) {
        // The fetcher thread writes into the cache and signals the eventfd: both are released
        // once it has exited, never under a fetch in flight (see #releaseFetcher).
        this.#fetcherResources.push(() => opened.owned.forEach((m) => m.close()));
        if (opened.release) this.#fetcherResources.push(opened.release);
      } else {
        this.#owned.push(...opened.owned);
        if (opened.release) this.#releases.push(opened.release);
      }
      const length = opened.length;
      let list: Array<{ start: number; length: number; first: number }>;
      let ps: number;
      if (remoteRegions) {
        // Registered by the other process; nothing is mapped or registered here.
        ps = remote!.pageSize ?? systemPageSize;
        for (const r of remoteRegions) {
          if (r.offset + r.length > length && src.kind !== "zero") {
            throw invalid(
              "FaultServer",
              `the remote region 0x${r.start.toString(16)}+${r.length} at source offset ${r.offset} ` +
                `reaches past the source's ${length} bytes`,
            );
          }
        }
        list = remoteRegions.map((r) => ({ start: r.start, length: r.length, first: r.offset / ps }));
        this.#onClose = options.onClose ?? "poison";
      } else {
        if (options.mapping) {
          if (src.kind === "memfd") {
            throw invalid("FaultServer", "a memfd source maps its own pages; drop `mapping`");
          }
          const kind = options.mapping.kind;
          if (kind !== "anonymous" && kind !== "adopted" && kind !== "hugetlb") {
            throw invalid(
              "FaultServer",
              `mapping must be anonymous private memory or hugetlb memory (got ${kind})`,
            );
          }
          if (options.mapping.length < roundUp(length) && src.kind !== "zero") {
            throw invalid(
              "FaultServer",
              `mapping holds ${options.mapping.length} bytes, the source ${length}`,
            );
          }
          this.#mapping = options.mapping;
          this.#onClose = options.onClose ?? "poison";
        } else {
          this.#mapping = src.kind === "memfd" ? src.mapping.alias() : Mapping.anonymous(roundUp(length));
          this.#owned.push(this.#mapping);
        }
        const m = this.#mapping;
        ps = m.pageSize;
        list = [{ start: m.start, length: m.length, first: 0 }];
        this.uffd.register(m, placement === "continue" ? { minor: true, missing: true } : { missing: true });
      }
      this.#pageSize = ps;
      const nPages = Math.max(...list.map((r) => r.first + r.length / ps));
      this.#regions = new Float64Array(new SharedArrayBuffer(list.length * REGION_WORDS * 8));
      list.forEach((r, i) => this.#regions.set([r.start, r.length, r.first], i * REGION_WORDS));
      const prefetchRun = options.prefetchRun ?? Math.max(1, (2 << 20) / ps);
      const plan = prefetch ? planOf(prefetch, ps, nPages) : undefined;
      // Staging and zero areas hold a whole window, or a whole prefetch run.
      const areaPages = Math.max(maxWindow, plan ? prefetchRun : 0);
      const staging = Mapping.anonymous(areaPages * ps);
      this.#owned.push(staging);
      // hugetlb has no UFFDIO_ZEROPAGE: zero pages are copied from memory never written.
      const zeroArea = huge ? Mapping.anonymous(areaPages * ps) : undefined;
      if (zeroArea) this.#owned.push(zeroArea);
      this.#stats = new Float64Array(new SharedArrayBuffer(STAT_COUNT * 8));
      this.#ctrl = new Int32Array(new SharedArrayBuffer(CTRL_COUNT * 4));
      this.#pages = new Uint8Array(new SharedArrayBuffer(nPages));
      this.#error = new Uint8Array(new SharedArrayBuffer(ERROR_BYTES));
      this.#record = options.record ? new Int32Array(new SharedArrayBuffer((nPages + 64) * 8)) : undefined;
      init = {
        fd: this.uffd.fd,
        stopFd: this.#stop.fd,
        regions: this.#regions.buffer as SharedArrayBuffer,
        pageSize: ps,
        placement,
        source: opened.init(nPages, ps),
        readahead,
        onError,
        busyPollUs,
        batch,
        latencyEvery,
        onRemove: options.onRemove ?? "zero",
        staging: staging.start,
        stagingLen: staging.length,
        zeroArea: zeroArea?.start ?? 0,
        zeroLen: zeroArea?.length ?? 0,
        stats: this.#stats.buffer as SharedArrayBuffer,
        ctrl: this.#ctrl.buffer as SharedArrayBuffer,
        pages: this.#pages.buffer as SharedArrayBuffer,
        prefetch: plan && plan.length > 0 ? plan.buffer as SharedArrayBuffer : undefined,
        prefetchRun,
        record: this.#record?.buffer as SharedArrayBuffer | undefined,
        error: this.#error.buffer as SharedArrayBuffer,
      };
      if (init.source.kind === "layers") this.#hold.push(init.source.table);
    } catch (e) {
      this.#release(remote === undefined); // a remote descriptor stays the caller's when nothing started
      throw e;
    }
    let readyResolve!: () => void;
    let readyReject!: (e: Error) => void;
    this.ready = new Promise((res, rej) => {
      readyResolve = res;
      readyReject = rej;
    });
    this.ready.catch(() => {});
    if (NODE) {
      // Node: the threads are unref'd, so `await server.ready` after `new FaultServer()` would see an
      // empty event loop (the process ends, the promise still pending): keep the loop alive until then.
      const keep = setInterval(() => {}, 1 << 30);
      this.ready.then(() => clearInterval(keep), () => clearInterval(keep));
    }
    let exitedResolve!: () => void;
    this.#exited = new Promise((res) => (exitedResolve = res));
    const url = new URL("./worker.ts", import.meta.url);
    const failed = (detail: string): void => {
      readyReject(new UffdError("FaultServer", 5, { source: "library", detail }));
    };
    let alive = 0;
    // Ready once the serving thread serves and, for a url source, the fetcher listens (Deno hands a
    // transferred port over through the main thread: it must not be blocked on a fault by then).
    let notReady = this.#fetcher ? 2 : 1;
    const oneReady = (): void => {
      if (--notReady === 0) readyResolve();
    };
    // A url source's fetcher takes requests from whichever thread serves: one channel each.
    const fetchPorts: MessagePort[] = [];
    const spawn = (role: "primary" | "standby"): void => {
      // A warm thread of this role if there is one (its modules are loaded), else a new one.
      // unref: a server that was never closed must not keep the process alive.
      const ch = this.#fetcher ? new MessageChannel() : undefined;
      if (ch) fetchPorts.push(ch.port2);
      const port = ch?.port1;
      const warm = takeWarm(role);
      const w = warm ??
        new Worker(url, { workerData: { role, init, port }, transferList: port ? [port] : [] });
      if (warm) w.postMessage({ type: "init", init, port }, port ? [port] : []);
      alive++;
      w.unref();
      w.on("message", (m: { type: string; message?: string }) => {
        loaded.add(w);
        if (m.type === "warm") return; // a warm thread has loaded (see endThread): keep it referenced
        w.unref(); // again: Bun refs a thread that starts after an early unref()
        if (m.type === "ready") oneReady();
        else if (m.type === "error") failed(`${role} thread failed: ${m.message}`);
        else if (m.type === "takeover" && !this.#closed) spawn("standby"); // a standby for the new serving thread
      });
      w.on("error", (e: Error) => failed(`${role} thread crashed: ${e.message}`));
      w.on("exit", () => {
        if (--alive === 0) exitedResolve();
      });
      this.#threads.push(w);
    };
    spawn("primary");
    spawn("standby");
    if (this.#fetcher) {
      // The url source's fetcher: range requests into the chunk cache (see fetcher.ts).
      const warm = takeWarm("fetcher");
      const f = warm ??
        new Worker(url, {
          workerData: { role: "fetcher", init, ports: fetchPorts },
          transferList: fetchPorts,
        });
      if (warm) f.postMessage({ type: "init", init, ports: fetchPorts }, fetchPorts);
      f.on("message", (m: { type: string }) => {
        loaded.add(f);
        if (m.type === "ready") oneReady();
      });
      f.unref();
      f.on("error", (e: Error) => failed(`fetcher thread crashed: ${e.message}`));
      this.#fetcherAlive = true;
      f.on("exit", () => {
        this.#fetcherAlive = false;
        if (this.#closed) this.#releaseFetcher();
      });
      this.#threads.push(f);
    }
    options.signal?.addEventListener("abort", () => this.close(), { once: true });
  }

  /**
   * Starts `count` pairs of server threads (serving and standby) ahead of time, so a server
   * created later starts serving at once instead of after a thread's start-up (tens to hundreds
   * of milliseconds: the runtime and the modules load). A restore handler calls it while it waits
   * for its VMM. `fetcher: true` also starts the fetcher thread of a `url` source. Idle warm
   * threads do not keep the process alive.
   */
  static warm(count = 1, options: { fetcher?: boolean } = {}): void {
    const url = new URL("./worker.ts", import.meta.url);
    for (let i = 0; i < count; i++) {
      const roles: ("primary" | "standby" | "fetcher")[] = ["primary", "standby"];
      if (options.fetcher) roles.push("fetcher");
      for (const role of roles) {
        const w = new Worker(url, { workerData: { role } });
        const onLoad = (): void => void loaded.add(w);
        if (NODE) w.once("message", onLoad); // before unref(): a first 'message' listener refs the thread
        w.unref();
        w.on("error", () => {
          const k = warmPool.indexOf(entry);
          if (k >= 0) warmPool.splice(k, 1);
        });
        const entry = { role, worker: w, onLoad };
        warmPool.push(entry);
      }
    }
  }

  /** Warm server threads waiting for a server (see {@link warm}). */
  static get warmThreads(): number {
    return warmPool.length;
  }

  /** Ends the warm threads nobody took. */
  static coolDown(): void {
    for (const e of warmPool.splice(0)) endThread(e.worker);
  }

  /** Creates a server and waits until its Worker serves faults. */
  static async start(options: FaultServerOptions): Promise<FaultServer> {
    const s = new FaultServer(options);
    // Node: the threads are unref'd, and the serving thread's "ready" unrefs it again, so while a
    // url source's fetcher is still starting nothing would keep the event loop (and this await) alive.
    const keepAlive = NODE ? setInterval(() => {}, 1 << 30) : undefined;
    try {
      await s.ready;
    } catch (e) {
      s.close();
      throw e;
    } finally {
      clearInterval(keepAlive);
    }
    if (s.#toPopulate.length > 0) s.#populate(options.populate === "sync");
    return s;
  }

  /**
   * Bytes of the source's files read ahead so far (`populate`); when it equals
   * {@link populateBytes} the whole file is in memory.
   */
  get populated(): number {
    return this.#populated;
  }

  /** Bytes `populate` reads in all (0 without it, or for a source without files). */
  get populateBytes(): number {
    return this.#toPopulate.reduce((n, [, len]) => n + len, 0);
  }

  /**
   * The `populate` loop: 2 MiB per madvise, ~5 ms per turn of the event loop, until done or
   * closed; `now`: every range in this call.
   */
  #populate(now: boolean): void {
    const STEP = 2 << 20;
    const ranges = this.#toPopulate;
    let i = 0;
    let off = 0;
    const turn = (): void => {
      const t0 = performance.now();
      while (!this.#closed && i < ranges.length && (now || performance.now() - t0 < 5)) {
        const [a, len] = ranges[i];
        const n = Math.min(STEP, len - off);
        // An error (EFAULT past a file truncated meanwhile, ENOMEM) only ends the read-ahead
        // of this range: the fault path reads every page it places anyway, and reports its errors.
        const ok = libc.madvise(a + off, n, mm.MADV_POPULATE_READ) === 0;
        if (ok) this.#populated += n;
        off += n;
        if (!ok || off >= len) {
          i++;
          off = 0;
        }
      }
      if (!this.#closed && i < ranges.length) {
        const t = setTimeout(turn, 0) as unknown as { unref?: () => void };
        t.unref?.(); // Node and Bun: a forgotten server's read-ahead does not keep the process alive
      }
    };
    turn();
  }

  /**
   * Where the served region is now: its start address, or where mremap() moved it
   * (the server follows REMAP events; make new views from this address).
   */
  get address(): number {
    return this.#regions[0];
  }

  /** Length of the served range in bytes (of all regions together for several). */
  get length(): number {
    let n = 0;
    for (let i = 1; i < this.#regions.length; i += REGION_WORDS) n += this.#regions[i];
    return n;
  }

  /** The served regions now (start addresses follow mremap): start, length and source offset of each. */
  get regions(): Array<{ start: number; length: number; offset: number }> {
    const out = [];
    for (let i = 0; i < this.#regions.length; i += REGION_WORDS) {
      out.push({
        start: this.#regions[i],
        length: this.#regions[i + 1],
        offset: this.#regions[i + 2] * this.#pageSize,
      });
    }
    return out;
  }

  /**
   * The pages installed on demand so far, in first-touch order (a fault's whole readahead
   * window counts: the pages it installed), for a later restore's `prefetch`. Needs
   * `record: true`. With readahead 1 it is exactly the pages that faulted.
   */
  workingSet(): WorkingSet {
    if (!this.#record) {
      throw invalid("FaultServer", "start the server with record: true to record its working set");
    }
    const n = this.#stats[STAT.recordRuns];
    const runs: Array<[number, number]> = [];
    for (let k = 0; k < n; k++) runs.push([this.#record[2 * k], this.#record[2 * k + 1]]);
    return { pageSize: this.#pageSize, runs };
  }

  /** The served memory (not for a `remote` range, which is another process's). */
  get mapping(): Mapping {
    if (!this.#mapping) {
      throw invalid(
        "FaultServer",
        "a remote range is another process's memory: there is no Mapping of it here",
      );
    }
    return this.#mapping;
  }

  /** The served memory as bytes (no copy). Do not use it after {@link close} or a move. */
  bytes(): Uint8Array {
    return this.mapping.bytes();
  }

  /** A snapshot of the live counters (read from shared memory, no messaging). */
  get stats(): FaultServerStats {
    const s = this.#stats;
    return {
      faults: s[STAT.faults],
      pages: s[STAT.pages],
      bytes: s[STAT.bytes],
      eexist: s[STAT.eexist],
      eagain: s[STAT.eagain],
      errors: s[STAT.errors],
      maxLatencyUs: s[STAT.maxLatencyUs],
      meanLatencyUs: s[STAT.sampledFaults] > 0 ? s[STAT.totalLatencyUs] / s[STAT.sampledFaults] : 0,
      events: s[STAT.events],
      wakes: s[STAT.wakes],
      window: s[STAT.window],
      poisoned: s[STAT.poisoned],
      zeroed: s[STAT.zeroed],
      retries: s[STAT.retries],
      takeovers: s[STAT.takeovers],
      spinHits: s[STAT.spinHits],
      reads: s[STAT.reads],
      removed: s[STAT.removed],
      heapStart: s[STAT.heapStart],
      heapNow: s[STAT.heapNow],
      prefetched: s[STAT.prefetched],
      prefetchMs: s[STAT.prefetchUs] / 1000,
      zeroPages: s[STAT.zeroPages],
      outside: s[STAT.outside],
      unserved: s[STAT.unserved],
      fetchedBytes: s[STAT.fetchBytes],
      requests: s[STAT.fetchRequests],
      cacheHits: s[STAT.cacheHits],
      memoryHits: s[STAT.memoryHits],
      fetchRetries: s[STAT.fetchRetries],
      fetchErrors: s[STAT.fetchErrors],
      fetchMeanMs: s[STAT.fetchCount] > 0 ? s[STAT.fetchUs] / s[STAT.fetchCount] / 1000 : 0,
      fetchMaxMs: s[STAT.fetchMaxUs] / 1000,
      fetchPath: s[STAT.fetchPath] === FETCH_PATH.raw
        ? "raw"
        : s[STAT.fetchPath] === FETCH_PATH.fetch
        ? "fetch"
        : "none",
    };
  }

  /** The last error the Worker recorded (source failure, failed placement), if any. */
  get lastError(): string | undefined {
    const n = Atomics.load(this.#ctrl, CTRL.errorLen);
    return n > 0 ? new TextDecoder().decode(this.#error.slice(0, n)) : undefined;
  }

  /** Life cycle of the serving Worker. */
  get state(): FaultServerState {
    const v = Atomics.load(this.#ctrl, CTRL.state);
    return (Object.keys(STATE) as FaultServerState[]).find((k) => STATE[k] === v)!;
  }

  /** Pages never placed (still served from the source on first touch). */
  get emptyPages(): number {
    let n = 0;
    for (const p of this.#pages) if (p === PAGE.empty || p === PAGE.failing) n++;
    return n;
  }

  /**
   * Stops the Worker after it has served every fault already queued, then closes the
   * descriptor and unmaps the memory. Safe to call twice. Touching the memory after
   * close is a use-after-unmap (SIGSEGV).
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#stop.signal();
    const deadline = Date.now() + this.#closeTimeoutMs;
    for (;;) {
      const st = Atomics.load(this.#ctrl, CTRL.state);
      if (st === STATE.stopped || st === STATE.failed) break;
      const left = deadline - Date.now();
      if (left <= 0) break;
      Atomics.wait(this.#ctrl, CTRL.state, st, Math.min(left, 50));
    }
    for (const w of this.#threads) endThread(w);
    if (NODE) {
      // The threads are unref'd, and a terminate() in flight holds no handle: without one, Node
      // could find the event loop empty while `exited` is awaited and end the process.
      const keep = setInterval(() => {}, 1 << 30);
      void this.#exited.then(() => clearInterval(keep));
    }
    try {
      // A remote descriptor opened without POISON cannot: the other process then reads never-placed
      // pages as zeros once the descriptor is closed (keep the server running while it runs).
      if (this.#onClose === "poison" && this.uffd.has("POISON")) this.#poisonEmpty();
    } finally {
      // Released even when poisoning failed: a descriptor left open with no thread reading its
      // events would block the next munmap of the range (UNMAP waits for its reader) forever.
      this.#release();
    }
  }

  /** Poisons every never-placed page of a caller-owned mapping or remote regions (runs of pages, one ioctl each). */
  #poisonEmpty(): void {
    const ps = this.#pageSize;
    const mark = (a: number, count: number): void => {
      this.#pages.fill(PAGE.poisoned, a, a + count);
      this.#stats[STAT.poisoned] += count;
    };
    for (let i = 0; i < this.#regions.length; i += REGION_WORDS) {
      const start = this.#regions[i];
      const first = this.#regions[i + 2];
      const n = first + this.#regions[i + 1] / ps;
      for (let p = first; p < n;) {
        const unplaced = (k: number): boolean =>
          this.#pages[k] === PAGE.empty || this.#pages[k] === PAGE.failing;
        if (!unplaced(p)) {
          p++;
          continue;
        }
        let q = p + 1;
        while (q < n && unplaced(q)) q++;
        for (let a = p; a < q;) {
          try {
            const done = this.uffd.poison({ start: start + (a - first) * ps, len: (q - a) * ps }) / ps;
            mark(a, done);
            a += done;
          } catch (e) {
            // EEXIST: the page at a + done is present (populated behind the server's back): keep it.
            // EAGAIN: the address space is changing and no thread reads events any more: skip it.
            // ENOENT: the range is no longer mapped there (unmapped, or moved by an mremap whose
            // REMAP event no thread read): nothing of it is left to poison here.
            if (
              !(e instanceof UffdError) || (e.code !== "EEXIST" && e.code !== "EAGAIN" && e.code !== "ENOENT")
            ) {
              throw e;
            }
            if (e.code === "ENOENT") {
              a = q;
              break;
            }
            const done = e.done / ps;
            mark(a, done);
            a += done + 1;
          }
        }
        p = q;
      }
    }
  }

  #release(closeUffd = true): void {
    if (closeUffd) this.uffd?.close();
    for (const r of this.#releases.splice(0)) r();
    for (const m of this.#owned) m.close();
    this.#stop?.close();
    if (!this.#fetcherAlive) this.#releaseFetcher();
  }

  /** Unmaps a url source's cache and closes its eventfd: only once its fetcher thread has exited. */
  #releaseFetcher(): void {
    for (const r of this.#fetcherResources.splice(0)) r();
  }

  /** Resolves once every server thread (serving and standby) has exited (after {@link close}). */
  get exited(): Promise<void> {
    return this.#exited;
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** Same as {@link close}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    this.close();
    return Promise.resolve();
  }
}

/** Threads started by FaultServer.warm(), waiting for their init message. */
const warmPool: { role: "primary" | "standby" | "fetcher"; worker: Worker; onLoad: () => void }[] = [];

// Node: a thread terminated while it initializes koffi's native module (its FFI) aborts the whole
// process ("FATAL ERROR: Error::ThrowAsJavaScriptException napi_throw"). Every server thread posts
// a message once its modules are loaded (a warm one "warm"); one that has not yet is terminated
// when it does (after a stop it would end by itself anyway).
const NODE = !("Deno" in globalThis) && !("Bun" in globalThis);
const loaded = new WeakSet<Worker>();

function endThread(w: Worker): void {
  if (!NODE || loaded.has(w)) {
    void w.terminate();
  } else {
    w.ref(); // until then: whoever awaits `exited` must not see an empty event loop
    w.once("message", () => void w.terminate());
  }
}

function takeWarm(role: "primary" | "standby" | "fetcher"): Worker | undefined {
  const i = warmPool.findIndex((e) => e.role === role);
  if (i < 0) return undefined;
  const { worker, onLoad } = warmPool.splice(i, 1)[0];
  worker.off("message", onLoad); // the server's own listener sees its first message (and refs it)
  return worker;
}

const OPTION_KEYS: readonly (keyof FaultServerOptions)[] = [
  "source",
  "mapping",
  "remote",
  "onClose",
  "placement",
  "readahead",
  "onError",
  "busyPollUs",
  "batch",
  "latencyEvery",
  "onRemove",
  "signal",
  "closeTimeoutMs",
  "prefetch",
  "prefetchRun",
  "record",
  "userModeOnly",
  "populate",
];

/** Validates the options (before anything is created) and fills in the defaults. */
function resolveOptions(options: FaultServerOptions): {
  placement: Placement;
  readahead: ServerInit["readahead"];
  maxWindow: number;
  batch: number;
  latencyEvery: number;
  busyPollUs: number;
  onError: ErrorPolicy;
} {
  const bad = (detail: string): UffdError => invalid("FaultServer", detail);
  for (const k of Object.keys(options)) {
    if (!OPTION_KEYS.includes(k as keyof FaultServerOptions)) {
      throw bad(`unknown option "${k}"; known: ${OPTION_KEYS.join(", ")}`);
    }
  }
  if (options.userModeOnly !== undefined && typeof options.userModeOnly !== "boolean") {
    throw bad(`userModeOnly must be a boolean (got ${JSON.stringify(options.userModeOnly)})`);
  }
  if (
    options.populate !== undefined && typeof options.populate !== "boolean" && options.populate !== "sync"
  ) {
    throw bad(`populate must be a boolean or "sync" (got ${JSON.stringify(options.populate)})`);
  }
  const src = options.source;
  if (!src || typeof src !== "object") throw bad('source is required, e.g. { kind: "bytes", data }');
  if (
    options.prefetchRun !== undefined && (!Number.isInteger(options.prefetchRun) || options.prefetchRun < 1)
  ) {
    throw bad(`prefetchRun must be a whole number of pages >= 1 (got ${options.prefetchRun})`);
  }
  const placement: Placement = options.placement ??
    (src.kind === "zero" ? "zeropage" : src.kind === "memfd" ? "continue" : "copy");
  checkCombination(src, placement);
  const ra = options.readahead ?? 1;
  if (
    ra !== "adaptive" && typeof ra !== "number" &&
    (ra === null || typeof ra !== "object" || Array.isArray(ra) ||
      Object.keys(ra).some((k) => k !== "min" && k !== "max"))
  ) {
    throw bad(
      `readahead must be a number of pages, "adaptive", or { min, max } (got ${showValue(ra)})`,
    );
  }
  const readahead: ServerInit["readahead"] = ra === "adaptive"
    ? { mode: "adaptive", min: 1, max: MAX_ADAPTIVE }
    : typeof ra === "number"
    ? { mode: "fixed", pages: ra }
    : { mode: "adaptive", min: ra.min ?? 1, max: ra.max ?? MAX_ADAPTIVE };
  const maxWindow = readahead.mode === "fixed" ? readahead.pages : readahead.max;
  const minWindow = readahead.mode === "fixed" ? readahead.pages : readahead.min;
  if (
    !Number.isInteger(maxWindow) || !Number.isInteger(minWindow) || minWindow < 1 || minWindow > maxWindow
  ) {
    throw bad(`readahead must be whole pages >= 1, min <= max (got ${showValue(ra)})`);
  }
  const batch = options.batch ?? 32;
  if (!Number.isInteger(batch) || batch < 1) throw bad(`batch must be a whole number >= 1 (got ${batch})`);
  const latencyEvery = options.latencyEvery ?? 16;
  if (!Number.isInteger(latencyEvery) || latencyEvery < 1) {
    throw bad(`latencyEvery must be a whole number >= 1 (got ${latencyEvery})`);
  }
  const busyPollUs = options.busyPollUs ?? 0;
  if (typeof busyPollUs !== "number" || !(busyPollUs >= 0) || !Number.isFinite(busyPollUs)) {
    throw bad(`busyPollUs must be a finite number of microseconds >= 0 (got ${describeValue(busyPollUs)})`);
  }
  if (batch > MAX_BATCH) throw bad(`batch must be at most ${MAX_BATCH} messages (got ${batch})`);
  const ct = options.closeTimeoutMs;
  if (ct !== undefined && (typeof ct !== "number" || !Number.isFinite(ct) || ct < 0)) {
    throw bad(`closeTimeoutMs must be a finite number of milliseconds >= 0 (got ${describeValue(ct)})`);
  }
  if (options.record !== undefined && typeof options.record !== "boolean") {
    throw bad(`record must be a boolean, true or false (got ${describeValue(options.record)})`);
  }
  if (options.signal !== undefined && !(options.signal instanceof AbortSignal)) {
    throw bad(`signal must be an AbortSignal (got ${describeValue(options.signal)})`);
  }
  if (
    options.onError !== undefined &&
    (options.onError === null || typeof options.onError !== "object" || Array.isArray(options.onError) ||
      Object.keys(options.onError).some((k) => k !== "retries" && k !== "then"))
  ) {
    throw bad(`onError must be an object { retries, then } (got ${describeValue(options.onError)})`);
  }
  const onError: ErrorPolicy = {
    retries: options.onError?.retries ?? 2,
    then: options.onError?.then ?? "poison",
  };
  if (onError.then !== "poison" && onError.then !== "zero") {
    throw bad(`onError.then must be "poison" or "zero" (got ${onError.then})`);
  }
  if (!Number.isInteger(onError.retries) || onError.retries < 0) {
    throw bad(`onError.retries must be a whole number >= 0 (got ${onError.retries})`);
  }
  if (options.onRemove !== undefined && options.onRemove !== "zero" && options.onRemove !== "source") {
    throw bad(`onRemove must be "zero" or "source" (got ${options.onRemove})`);
  }
  if (options.onClose !== undefined && options.onClose !== "poison" && options.onClose !== "zero") {
    throw bad(`onClose must be "poison" or "zero" (got ${options.onClose})`);
  }
  return { placement, readahead, maxWindow, batch, latencyEvery, busyPollUs, onError };
}

function roundUp(n: number): number {
  return Math.ceil(n / systemPageSize) * systemPageSize;
}

/** Checks a remote range and returns its regions, each with its source offset. */
function checkRemote(
  remote: RemoteRange,
  options: FaultServerOptions,
  placement: Placement,
): Array<{ start: number; length: number; offset: number }> {
  const bad = (detail: string): UffdError => invalid("FaultServer", detail);
  if (options.mapping) throw bad("give `mapping` (memory of this process) or `remote` (another's), not both");
  if (!(remote.uffd instanceof Userfaultfd) || !remote.uffd.remote || remote.uffd.closed) {
    throw bad(
      "remote.uffd must be an open descriptor from the process that registered the range: " +
        "Userfaultfd.fromFd(recvFd(socket), features, { remote: true })",
    );
  }
  if (placement === "move") throw bad('the kernel moves no pages across processes: use placement "copy"');
  if (options.source.kind === "memfd") {
    throw bad(
      "a memfd source is mapped in this process; serve a remote range from bytes, file, snapshot, zero or module",
    );
  }
  const ps = remote.pageSize ?? systemPageSize;
  if (!Number.isSafeInteger(ps) || ps < systemPageSize || (ps & (ps - 1)) !== 0) {
    throw bad(`remote.pageSize must be a power of two >= ${systemPageSize} (got ${ps})`);
  }
  const single = remote.start !== undefined || remote.length !== undefined;
  if (single === (remote.regions !== undefined)) {
    throw bad("give remote.start and remote.length (one range) or remote.regions (several), not both");
  }
  if (!single && (!Array.isArray(remote.regions) || remote.regions.length === 0)) {
    throw bad("remote.regions must be a non-empty array of { start, length, offset }");
  }
  const list = single
    ? [{ start: remote.start!, length: remote.length!, offset: 0 }]
    : remote.regions!.map((r) => ({ start: r?.start, length: r?.length, offset: r?.offset ?? 0 }));
  for (const [i, r] of list.entries()) {
    const what = single ? "remote range" : `remote.regions[${i}]`;
    if (
      !Number.isSafeInteger(r.start) || !Number.isSafeInteger(r.length) || !Number.isSafeInteger(r.offset) ||
      r.length <= 0 || r.start < 0 || r.offset < 0
    ) {
      throw bad(
        `${what}: start, length and offset must be integers, the length positive ` +
          `(got ${r.start}, ${r.length}, ${r.offset})`,
      );
    }
    if (r.start % ps !== 0 || r.length % ps !== 0 || r.offset % ps !== 0) {
      throw bad(
        `${what} 0x${
          r.start.toString(16)
        }+${r.length} at offset ${r.offset} is not aligned to its ${ps}-byte pages`,
      );
    }
  }
  const sorted = [...list].sort((x, y) => x.start - y.start);
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i].start < sorted[i - 1].start + sorted[i - 1].length) {
      throw bad(
        `remote regions 0x${sorted[i - 1].start.toString(16)} and 0x${sorted[i].start.toString(16)} overlap`,
      );
    }
  }
  const byOffset = [...list].sort((x, y) => x.offset - y.offset);
  for (let i = 1; i < byOffset.length; i++) {
    if (byOffset[i].offset < byOffset[i - 1].offset + byOffset[i - 1].length) {
      throw bad(
        `remote regions at source offsets ${byOffset[i - 1].offset} and ${
          byOffset[i].offset
        } overlap in the source`,
      );
    }
  }
  return list;
}

function checkCombination(src: PageSource, placement: Placement): void {
  const ok: Record<PageSource["kind"], Placement[]> = {
    bytes: ["copy", "move"],
    file: ["copy", "move"],
    snapshot: ["copy"],
    url: ["copy"],
    zero: ["zeropage"],
    memfd: ["continue"],
    module: ["copy", "move"],
  };
  if (!ok[src.kind]) {
    throw invalid(
      "FaultServer",
      `unknown source kind ${showValue((src as { kind: unknown }).kind)}; valid kinds: ${
        SOURCE_KINDS.join(", ")
      }`,
    );
  }
  if (!ok[src.kind].includes(placement)) {
    throw invalid(
      "FaultServer",
      `placement "${placement}" does not fit a ${src.kind} source; use ${ok[src.kind].join(" or ")}`,
    );
  }
}
