/**
 * Memory that fills itself: a region, a page source and a Worker that resolves the
 * faults. The caller reads and writes the memory from its own thread (or Workers);
 * counters live in shared memory and can be read at any time without messaging.
 * @module
 */
import { Worker } from "node:worker_threads";
import { invalid, UffdError } from "../errors.ts";
import { EventFd } from "../eventfd.ts";
import { alignedSharedBytes, Mapping, pageSize as systemPageSize } from "../memory.ts";
import { Userfaultfd } from "../userfaultfd.ts";
import {
  CTRL,
  CTRL_COUNT,
  ERROR_BYTES,
  type ErrorPolicy,
  PAGE,
  type Placement,
  type ServerInit,
  type SourceInit,
  STAT,
  STAT_COUNT,
  STATE,
} from "./layout.ts";

export type { ErrorPolicy, Placement } from "./layout.ts";
export type { FillFunction } from "./loop.ts";

/**
 * Where pages come from.
 * - `bytes`: a buffer; a SharedArrayBuffer (or a view on one) is read in place, any other
 *   buffer is copied once into page-aligned shared memory. For the fastest COPY give a
 *   page-aligned view ({@link alignedSharedBytes}): Deno's SharedArrayBuffers are not.
 * - `file`: a file mapped read-only; the kernel copies straight from the page cache.
 * - `zero`: zero pages (UFFDIO_ZEROPAGE), `length` bytes.
 * - `memfd`: a memfd {@link Mapping} (shmem or hugetlb) whose pages are populated out of band
 *   (through it or an alias); the server maps the same pages and resolves minor faults with
 *   UFFDIO_CONTINUE.
 * - `module`: a module URL exporting `fill(offset, dest)` (sync or async) that fills `dest`
 *   with the bytes at `offset` or returns a Uint8Array holding them; optional `init(options)`.
 */
export type PageSource =
  | { kind: "bytes"; data: SharedArrayBuffer | ArrayBufferView | ArrayBuffer }
  | { kind: "file"; path: string }
  | { kind: "zero"; length: number }
  | { kind: "memfd"; mapping: Mapping }
  | { kind: "module"; url: string | URL; length: number; options?: unknown };

/** Another process's registered range, served through its descriptor (see {@link FaultServerOptions.remote}). */
export interface RemoteRange {
  /** The descriptor, received from the process that registered the range (`remote: true`). */
  uffd: Userfaultfd;
  /** Start address of the range in that process. */
  start: number;
  /** Length of the range in bytes. */
  length: number;
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
  /** Stops the server when aborted. */
  signal?: AbortSignal;
  /** How long close() waits for the Worker to drain, in ms (default 5000). */
  closeTimeoutMs?: number;
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
  /** JS heap of the Worker when it started, bytes (0 where the runtime does not report it). */
  heapStart: number;
  /** JS heap of the Worker at the last sample (every 65536 faults and at stop), bytes. */
  heapNow: number;
}

/** Life cycle of a {@link FaultServer}'s Worker. */
export type FaultServerState = "starting" | "running" | "stopped" | "failed";

const MAX_ADAPTIVE = 64;

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
  /** Resolves when the Worker serves faults; rejects if it could not start. */
  readonly ready: Promise<void>;
  /** The descriptor. */
  readonly uffd: Userfaultfd;
  /** The served range: start, length and page size (here, or in the remote process). */
  readonly #region: { start: number; length: number; pageSize: number };
  readonly #mapping: Mapping | undefined;
  readonly #stats: Float64Array;
  readonly #ctrl: Int32Array;
  readonly #pages: Uint8Array;
  readonly #error: Uint8Array;
  readonly #stop = new EventFd();
  readonly #threads: Worker[] = [];
  readonly #owned: Mapping[] = [];
  readonly #hold: unknown[] = [];
  readonly #closeTimeoutMs: number;
  #closed = false;
  #exited: Promise<void>;
  #onClose: "poison" | "zero" | undefined;

  /** Creates the descriptor and mapping and starts the Worker; await {@link ready} (or use {@link start}). */
  constructor(options: FaultServerOptions) {
    const src = options.source;
    const { placement, readahead, maxWindow, batch, latencyEvery, busyPollUs, onError } = resolveOptions(
      options,
    );
    this.#closeTimeoutMs = options.closeTimeoutMs ?? 5000;

    const remote = options.remote;
    if (remote) checkRemote(remote, options, placement);
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
    this.uffd = remote
      ? remote.uffd
      : Userfaultfd.open({ features: [...features, ...extra], nonBlocking: true });
    let init: ServerInit;
    let region: { start: number; length: number; pageSize: number } | undefined;
    try {
      const { source, length } = this.#prepareSource(src);
      if (remote) {
        // Registered by the other process; nothing is mapped or registered here.
        if (remote.length < length && src.kind !== "zero") {
          throw invalid("FaultServer", `the remote range holds ${remote.length} bytes, the source ${length}`);
        }
        region = {
          start: remote.start,
          length: remote.length,
          pageSize: remote.pageSize ?? systemPageSize,
        };
        this.#onClose = options.onClose ?? "poison";
      } else if (options.mapping) {
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
          throw invalid("FaultServer", `mapping holds ${options.mapping.length} bytes, the source ${length}`);
        }
        this.#mapping = options.mapping;
        this.#onClose = options.onClose ?? "poison";
      } else {
        this.#mapping = src.kind === "memfd" ? src.mapping.alias() : Mapping.anonymous(roundUp(length));
        this.#owned.push(this.#mapping);
      }
      if (this.#mapping) {
        const m = this.#mapping;
        region = { start: m.start, length: m.length, pageSize: m.pageSize };
        this.uffd.register(m, placement === "continue" ? { minor: true, missing: true } : { missing: true });
      }
      this.#region = region!;
      const ps = region!.pageSize;
      const staging = Mapping.anonymous(maxWindow * ps);
      this.#owned.push(staging);
      // hugetlb has no UFFDIO_ZEROPAGE: zero pages are copied from memory never written.
      const zeroArea = huge ? Mapping.anonymous(maxWindow * ps) : undefined;
      if (zeroArea) this.#owned.push(zeroArea);
      this.#stats = new Float64Array(new SharedArrayBuffer(STAT_COUNT * 8));
      this.#ctrl = new Int32Array(new SharedArrayBuffer(CTRL_COUNT * 4));
      this.#pages = new Uint8Array(new SharedArrayBuffer(region!.length / ps));
      this.#error = new Uint8Array(new SharedArrayBuffer(ERROR_BYTES));
      init = {
        fd: this.uffd.fd,
        stopFd: this.#stop.fd,
        start: region!.start,
        len: region!.length,
        pageSize: ps,
        placement,
        source,
        readahead,
        onError,
        busyPollUs,
        batch,
        latencyEvery,
        onRemove: options.onRemove ?? "zero",
        staging: staging.start,
        stagingLen: staging.length,
        zeroArea: zeroArea?.start ?? 0,
        stats: this.#stats.buffer as SharedArrayBuffer,
        ctrl: this.#ctrl.buffer as SharedArrayBuffer,
        pages: this.#pages.buffer as SharedArrayBuffer,
        error: this.#error.buffer as SharedArrayBuffer,
      };
    } catch (e) {
      this.#release();
      throw e;
    }
    let readyResolve!: () => void;
    let readyReject!: (e: Error) => void;
    this.ready = new Promise((res, rej) => {
      readyResolve = res;
      readyReject = rej;
    });
    this.ready.catch(() => {});
    let exitedResolve!: () => void;
    this.#exited = new Promise((res) => (exitedResolve = res));
    const url = new URL("./worker.ts", import.meta.url);
    const failed = (detail: string): void => {
      readyReject(new UffdError("FaultServer", 5, { source: "library", detail }));
    };
    let alive = 0;
    const spawn = (role: "primary" | "standby"): void => {
      // unref: a server that was never closed must not keep the process alive.
      const w = new Worker(url, { workerData: { role, init } });
      alive++;
      w.unref();
      w.on("message", (m: { type: string; message?: string }) => {
        w.unref(); // again: Bun refs a thread that starts after an early unref()
        if (m.type === "ready") readyResolve();
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
    options.signal?.addEventListener("abort", () => this.close(), { once: true });
  }

  /** Creates a server and waits until its Worker serves faults. */
  static async start(options: FaultServerOptions): Promise<FaultServer> {
    const s = new FaultServer(options);
    try {
      await s.ready;
    } catch (e) {
      s.close();
      throw e;
    }
    return s;
  }

  #prepareSource(src: PageSource): { source: SourceInit; length: number } {
    switch (src.kind) {
      case "bytes": {
        const { data, offset, length } = sharedBytes(src.data);
        this.#hold.push(data);
        return { source: { kind: "bytes", data, offset, length }, length };
      }
      case "file": {
        const m = Mapping.file(src.path);
        this.#owned.push(m);
        return { source: { kind: "address", address: m.start, length: m.length }, length: m.length };
      }
      case "zero":
        checkLength(src.length);
        return { source: { kind: "zero" }, length: src.length };
      case "memfd":
        if ((src.mapping.kind !== "shmem" && src.mapping.kind !== "hugetlb") || src.mapping.fd < 0) {
          throw invalid("FaultServer", "a memfd source needs a Mapping.memfd() mapping (shmem or hugetlb)");
        }
        return { source: { kind: "memfd" }, length: src.mapping.length };
      case "module":
        checkLength(src.length);
        return {
          source: { kind: "module", url: String(src.url), options: src.options, length: src.length },
          length: src.length,
        };
    }
  }

  /**
   * Where the served region is now: its start address, or where mremap() moved it
   * (the server follows REMAP events; make new views from this address).
   */
  get address(): number {
    return this.#stats[STAT.base] || this.#region.start;
  }

  /** Length of the served range in bytes. */
  get length(): number {
    return this.#region.length;
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
    for (const p of this.#pages) if (p === PAGE.empty) n++;
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
    for (const w of this.#threads) void w.terminate();
    // A remote descriptor opened without POISON cannot: the other process then reads never-placed
    // pages as zeros once the descriptor is closed (keep the server running while it runs).
    if (this.#onClose === "poison" && this.uffd.has("POISON")) this.#poisonEmpty();
    this.#release();
  }

  /** Poisons every never-placed page of a caller-owned mapping (runs of pages, one ioctl each). */
  #poisonEmpty(): void {
    const ps = this.#region.pageSize;
    const n = this.#pages.length;
    const mark = (a: number, count: number): void => {
      this.#pages.fill(PAGE.poisoned, a, a + count);
      this.#stats[STAT.poisoned] += count;
    };
    for (let p = 0; p < n;) {
      if (this.#pages[p] !== PAGE.empty) {
        p++;
        continue;
      }
      let q = p + 1;
      while (q < n && this.#pages[q] === PAGE.empty) q++;
      for (let a = p; a < q;) {
        try {
          const done = this.uffd.poison({ start: this.address + a * ps, len: (q - a) * ps }) / ps;
          mark(a, done);
          a += done;
        } catch (e) {
          // EEXIST: the page at a + done is present (populated behind the server's back): keep it.
          // EAGAIN: the address space is changing and no thread reads events any more: skip it.
          if (!(e instanceof UffdError) || (e.code !== "EEXIST" && e.code !== "EAGAIN")) throw e;
          const done = e.done / ps;
          mark(a, done);
          a += done + 1;
        }
      }
      p = q;
    }
  }

  #release(): void {
    this.uffd?.close();
    for (const m of this.#owned) m.close();
    this.#stop.close();
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
  const src = options.source;
  if (!src || typeof src !== "object") throw bad('source is required, e.g. { kind: "bytes", data }');
  const placement: Placement = options.placement ??
    (src.kind === "zero" ? "zeropage" : src.kind === "memfd" ? "continue" : "copy");
  checkCombination(src, placement);
  const ra = options.readahead ?? 1;
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
    throw bad(`readahead must be whole pages >= 1, min <= max (got ${JSON.stringify(ra)})`);
  }
  const batch = options.batch ?? 32;
  if (!Number.isInteger(batch) || batch < 1) throw bad(`batch must be a whole number >= 1 (got ${batch})`);
  const latencyEvery = options.latencyEvery ?? 16;
  if (!Number.isInteger(latencyEvery) || latencyEvery < 1) {
    throw bad(`latencyEvery must be a whole number >= 1 (got ${latencyEvery})`);
  }
  const busyPollUs = options.busyPollUs ?? 0;
  if (!(busyPollUs >= 0)) throw bad(`busyPollUs must be >= 0 (got ${busyPollUs})`);
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

function checkLength(n: number): void {
  if (!Number.isSafeInteger(n) || n <= 0) {
    throw invalid("FaultServer", `length must be a positive integer (got ${n})`);
  }
}

function checkRemote(remote: RemoteRange, options: FaultServerOptions, placement: Placement): void {
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
      "a memfd source is mapped in this process; serve a remote range from bytes, file, zero or module",
    );
  }
  const ps = remote.pageSize ?? systemPageSize;
  if (!Number.isSafeInteger(ps) || ps < systemPageSize || (ps & (ps - 1)) !== 0) {
    throw bad(`remote.pageSize must be a power of two >= ${systemPageSize} (got ${ps})`);
  }
  if (!Number.isSafeInteger(remote.start) || !Number.isSafeInteger(remote.length) || remote.length <= 0) {
    throw bad(
      `remote.start and remote.length must be integers, the length positive (got ${remote.start}, ${remote.length})`,
    );
  }
  if (remote.start % ps !== 0 || remote.length % ps !== 0) {
    throw bad(
      `remote range 0x${remote.start.toString(16)}+${remote.length} is not aligned to its ${ps}-byte pages`,
    );
  }
}

function checkCombination(src: PageSource, placement: Placement): void {
  const ok: Record<PageSource["kind"], Placement[]> = {
    bytes: ["copy", "move"],
    file: ["copy", "move"],
    zero: ["zeropage"],
    memfd: ["continue"],
    module: ["copy", "move"],
  };
  if (!ok[src.kind]) throw invalid("FaultServer", `unknown source kind ${(src as { kind: string }).kind}`);
  if (!ok[src.kind].includes(placement)) {
    throw invalid(
      "FaultServer",
      `placement "${placement}" does not fit a ${src.kind} source; use ${ok[src.kind].join(" or ")}`,
    );
  }
}

/** A SharedArrayBuffer holding the bytes (the same one when already shared). */
function sharedBytes(
  data: SharedArrayBuffer | ArrayBufferView | ArrayBuffer,
): { data: SharedArrayBuffer; offset: number; length: number } {
  if (data instanceof SharedArrayBuffer) return { data, offset: 0, length: data.byteLength };
  if (ArrayBuffer.isView(data) && data.buffer instanceof SharedArrayBuffer) {
    return { data: data.buffer, offset: data.byteOffset, length: data.byteLength };
  }
  const bytes = ArrayBuffer.isView(data)
    ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
    : new Uint8Array(data);
  checkLength(bytes.byteLength);
  const shared = alignedSharedBytes(bytes.byteLength); // page-aligned: the kernel copies faster
  shared.set(bytes);
  return { data: shared.buffer as SharedArrayBuffer, offset: shared.byteOffset, length: bytes.byteLength };
}
