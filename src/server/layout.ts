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
  base: 20,
  sampledFaults: 21,
} as const;
/** Number of counters. */
export const STAT_COUNT = 22;

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
} as const;

/** How pages are placed. */
export type Placement = "copy" | "move" | "continue" | "zeropage";

/** What the Worker needs to know about the source. */
export type SourceInit =
  | { kind: "bytes"; data: SharedArrayBuffer; offset: number; length: number }
  | { kind: "address"; address: number; length: number }
  | { kind: "zero" }
  | { kind: "memfd" }
  | { kind: "module"; url: string; options: unknown; length: number };

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
  /** Registered region. */
  start: number;
  /** Registered length. */
  len: number;
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
  /** Statistics (Float64Array). */
  stats: SharedArrayBuffer;
  /** Control words (Int32Array). */
  ctrl: SharedArrayBuffer;
  /** Per-page state (Uint8Array). */
  pages: SharedArrayBuffer;
  /** Last error message (UTF-8). */
  error: SharedArrayBuffer;
}
