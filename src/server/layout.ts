/**
 * Shared memory between a {@link FaultServer} and its Worker: counters, control
 * words, a per-page state map, and the init message. Everything crosses as numbers
 * and SharedArrayBuffers.
 * @module
 */

/** Index of each counter in the Float64Array of statistics. */
export const STAT = {
  faults: 0,
  pages: 1,
  bytes: 2,
  eexist: 3,
  eagain: 4,
  errors: 5,
  maxLatencyUs: 6,
  events: 7,
  wakes: 8,
  window: 9,
  poisoned: 10,
  zeroed: 11,
  retries: 12,
  spinHits: 13,
  totalLatencyUs: 14,
  reads: 15,
  removed: 16,
  heapStart: 17,
  heapNow: 18,
  takeovers: 19,
  /** Unused (the regions' current starts live in the region table). */
  base: 20,
  sampledFaults: 21,
  /** Pages installed by the prefetcher. */
  prefetched: 22,
  /** Microseconds from the loop's start until the prefetch plan was installed (0 while running). */
  prefetchUs: 23,
  /** Pages placed as zeros (holes in every layer, removed pages, a zero source). */
  zeroPages: 24,
  /** Runs of pages recorded in the working-set buffer. */
  recordRuns: 25,
  /** Recorded runs dropped because the record buffer was full. */
  recordDropped: 26,
  /** Faults outside every served region (not resolved here). */
  outside: 27,
  /** Pages whose fault could be neither served nor poisoned (the faulter stays blocked). */
  unserved: 28,
  /** url source: bytes fetched over HTTP. */
  fetchBytes: 29,
  /** url source: HTTP requests made (retries included). */
  fetchRequests: 30,
  /** url source: chunks found in the cache directory. */
  cacheHits: 31,
  /** url source: requests retried. */
  fetchRetries: 32,
  /** url source: total microseconds of successful fetches. */
  fetchUs: 33,
  /** url source: successful fetches. */
  fetchCount: 34,
  /** url source: the slowest successful fetch, microseconds. */
  fetchMaxUs: 35,
  /** url source: chunks that failed (after retries). */
  fetchErrors: 36,
  /** url source: faults that found their chunk in the memory cache. */
  memoryHits: 37,
  /** url source: how the fetcher makes its requests now, a {@link FETCH_PATH} value (0 before it starts). */
  fetchPath: 38,
} as const;
/** Number of counters. */
export const STAT_COUNT = 39;

/**
 * How a url source's fetcher makes its requests (`STAT.fetchPath`): `raw`, range requests over
 * libc sockets read with recv(2) straight into the cache (`http://`); `fetch`, the runtime's
 * `fetch()` (`https://`, a proxy, or after the raw path met an answer it does not handle).
 */
export const FETCH_PATH = { none: 0, fetch: 1, raw: 2 } as const;

/** Index of each control word in the Int32Array of control. */
export const CTRL = {
  state: 0,
  /** Thread id of the thread serving now (the standby watches it). */
  tid: 1,
  errorLen: 2,
  /** 1 + the page whose fault a custom source is filling now, 0 when none. */
  filling: 3,
  /** Bumped each time a standby starts watching the serving thread. */
  watching: 4,
  /** Serving threads that ended while the source filled the `filling` page. */
  crashes: 5,
} as const;
/** Number of control words. */
export const CTRL_COUNT = 6;
/** Bytes of the UTF-8 last-error message buffer. */
export const ERROR_BYTES = 512;

/** Life cycle of the serving Worker, in `ctrl[CTRL.state]`. */
export const STATE = {
  starting: 0,
  running: 1,
  stopped: 2,
  failed: 3,
} as const;

/** Per-page state, one byte per page of the region. */
export const PAGE = {
  /** Never placed: serve from the source. */
  empty: 0,
  /** Placed. */
  placed: 1,
  /** Dropped by madvise (REMOVE event): serve zeros next time, like Firecracker. */
  removed: 2,
  /** Poisoned after a source failure. */
  poisoned: 3,
  /** Unmapped (UNMAP event): never serve again. */
  gone: 4,
  /**
   * The source failed and the policy's POISON (or zero page) met EAGAIN (a REMOVE, UNMAP or REMAP
   * event pending): resolved by the policy once the events are read, without asking the source again.
   */
  failing: 5,
} as const;

/** How pages are placed. */
export type Placement = "copy" | "move" | "continue" | "zeropage";

/**
 * What the Worker needs to know about the source. Two families: address sources (`bytes`,
 * `address`, `layers`, `zero`: the kernel copies straight from an address in this process,
 * or places zeros) and fill sources (`module`: something must produce the bytes first).
 * `memfd` pages are already in the page cache and only mapped (CONTINUE).
 */
export type SourceInit =
  | { kind: "bytes"; data: SharedArrayBuffer; offset: number; length: number }
  | { kind: "address"; address: number; length: number }
  | {
    kind: "layers";
    /** Base address of each layer's read-only mapping, bottom (the base file) first. */
    addresses: number[];
    /** One byte per page: 0 = a hole in every layer (zeros), k = layer k - 1 holds it (topmost wins). */
    table: SharedArrayBuffer;
    /** Chunk checksums checked before a chunk's first page is placed, or undefined. */
    verify?: VerifyInit;
  }
  | UrlInit
  | { kind: "zero" }
  | { kind: "memfd" }
  | { kind: "module"; url: string; options: unknown; length: number };

/**
 * Lazy integrity checks of a layered source (see src/snapshot/digest.ts): each (layer, chunk)
 * with data has a SHA-256, checked by the serving thread the first time a page comes from it.
 */
export interface VerifyInit {
  /** Chunk size in bytes (a multiple of the system page size). */
  chunkSize: number;
  /** Chunks per layer (the memory file's length in chunks). */
  chunks: number;
  /** 32 bytes per (layer, chunk), layer-major (bottom layer first). */
  digests: SharedArrayBuffer;
  /** One byte per (layer, chunk): 0 no data, 1 not checked yet, 2 good, 3 mismatch. */
  state: SharedArrayBuffer;
  /** Per layer: its data extents as [start, end) byte pairs (Float64Array). */
  extents: SharedArrayBuffer[];
  /** Per layer: its file length in bytes. */
  lengths: number[];
  /** Per layer: its file name, for messages. */
  names: string[];
}

/** Chunk states of {@link VerifyInit.state}. */
export const CHUNK = { none: 0, unchecked: 1, good: 2, bad: 3 } as const;

/** A url source: chunks fetched over HTTP into a cache of slots (see fetcher.ts). */
export interface UrlInit {
  kind: "url";
  /** The object. */
  url: string;
  /** Its length in bytes (from the opening request). */
  length: number;
  /** Its ETag when opened, or null when the server sends none. */
  etag: string | null;
  /** Bytes per chunk (a multiple of the page size). */
  chunkSize: number;
  /**
   * The memory cache, `slots` chunks: shared memory (not a mapping the server unmaps), so a fetch
   * still writing into it while the server closes can never touch unmapped memory.
   */
  cache: SharedArrayBuffer;
  /** Offset of the (page-aligned) cache in `cache`. */
  cacheOffset: number;
  /** Chunks the memory cache holds. */
  slots: number;
  /** A directory whose chunk files a later restore reuses, or null. */
  cacheDir: string | null;
  /** Fetches in flight at most. */
  concurrency: number;
  /** Per-request timeout, ms. */
  timeoutMs: number;
  /** Retries of a failed request. */
  retries: number;
  /** Hex SHA-256 per chunk, or null. */
  sha256: (string | null)[] | null;
  /** Extra request headers. */
  headers: Record<string, string>;
  /** Int32Array per chunk: CHUNK_STATE. */
  state: SharedArrayBuffer;
  /** Int32Array per chunk: its cache slot, or -1. */
  slotOf: SharedArrayBuffer;
  /** eventfd the fetcher signals when a chunk is ready or failed. */
  doneFd: number;
  /**
   * How the serving thread hands chunk requests to the fetcher: `raw`, through `ring` and `reqFd`
   * (the fetcher then polls its sockets and `reqFd` in one synchronous loop); `fetch`, a message
   * on the fetcher's MessagePort.
   */
  fetchPath: "raw" | "fetch";
  /**
   * The request ring of the `raw` path (Int32Array): word 0 counts the entries pushed (producers
   * reserve one with Atomics.add), word 1 those taken (the fetcher alone), then a power-of-two
   * number of entries, each a chunk index or -1 (empty or not yet written). It holds at least one
   * entry per cache slot: every request not taken yet holds a slot in the FETCHING state.
   */
  ring: SharedArrayBuffer;
  /** eventfd a serving thread signals after pushing into `ring`. */
  reqFd: number;
}

/** States of a url source's chunk. */
export const CHUNK_STATE = { absent: 0, fetching: 1, ready: 2, failed: 3 } as const;

/** Entries of the region table (Float64Array): start address, length in bytes, first page index. */
export const REGION_WORDS = 3;

/** What to do when the source fails for a page. */
export interface ErrorPolicy {
  /** Attempts after the first failure (default 2). */
  retries: number;
  /** After the last retry: poison the page (the toucher gets SIGBUS), or zero-fill it. */
  then: "poison" | "zero";
}

/** The message that starts the Worker. */
export interface ServerInit {
  /** userfaultfd descriptor number. */
  fd: number;
  /** eventfd that stops the loop. */
  stopFd: number;
  /**
   * The served regions (Float64Array of REGION_WORDS per region: start, length, first page).
   * Page indices count in the source's pages: page p of the source is served at
   * `start + (p - first) * pageSize` of the region holding it. The loop updates a start when
   * mremap moves its region (REMAP), so a standby resumes at the current address.
   */
  regions: SharedArrayBuffer;
  /** Page size of the region. */
  pageSize: number;
  /** Placement strategy. */
  placement: Placement;
  /** Source description. */
  source: SourceInit;
  /** Readahead: fixed pages (1 = none) or adaptive bounds. */
  readahead: { mode: "fixed"; pages: number } | { mode: "adaptive"; min: number; max: number };
  /** Failure policy. */
  onError: ErrorPolicy;
  /** Spin this many microseconds with poll(0) before blocking (0 = off). */
  busyPollUs: number;
  /** Messages read per read(). */
  batch: number;
  /** Time one batch in this many (1 = every batch). */
  latencyEvery: number;
  /** Pages dropped by madvise: serve zeros (Firecracker) or the source again. */
  onRemove: "zero" | "source";
  /** Address of a page-aligned staging area of `maxWindow` pages (copy/move from module sources). */
  staging: number;
  /** Staging length in bytes. */
  stagingLen: number;
  /** Address of `maxWindow` pages never written (read as zeros) to COPY zero pages from on hugetlb, else 0. */
  zeroArea: number;
  /** Length of the zero area in bytes (0 without one). */
  zeroLen: number;
  /** Statistics (Float64Array). */
  stats: SharedArrayBuffer;
  /** Control words (Int32Array). */
  ctrl: SharedArrayBuffer;
  /** Per-page state (Uint8Array), one byte per source page. */
  pages: SharedArrayBuffer;
  /** Pages to install right after the start (Int32Array of page indices, in order), or undefined. */
  prefetch: SharedArrayBuffer | undefined;
  /** Largest run the prefetcher places with one ioctl, in pages. */
  prefetchRun: number;
  /** Record buffer (Int32Array of [first page, count] runs placed on demand, in order), or undefined. */
  record: SharedArrayBuffer | undefined;
  /** Last error message (UTF-8). */
  error: SharedArrayBuffer;
}
