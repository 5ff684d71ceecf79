/**
 * Dirty tracking with `PAGEMAP_SCAN` on /proc/self/pagemap (Linux 6.7+), used with
 * `UFFD_FEATURE_WP_ASYNC`: the kernel clears write protection itself on a write and
 * the scan reports which pages were written, optionally re-protecting them.
 * @module
 */
import { libc } from "../ffi/mod.ts";
import { ioctl, O_CLOEXEC } from "./abi.ts";
import { checkBoolean, checkInteger, checkOptions, checkRangeObject, describeValue } from "./checks.ts";
import { ERRNO, invalid, UffdError } from "./errors.ts";
import { checkNotClosed, checkRange, cstring, pageSize } from "./memory.ts";
import { pm_scan_arg } from "./structs.ts";

/** The most regions one scanner holds per PAGEMAP_SCAN call (24 MiB of page_region). */
const MAX_REGIONS = 1 << 20;
const SCAN_KEYS = ["required", "anyOf", "excluded", "report", "reprotect", "checkWpAsync", "maxPages"];

/** `PAGE_IS_*` categories of PAGEMAP_SCAN. */
export const PAGE_IS = {
  WPALLOWED: 1 << 0,
  WRITTEN: 1 << 1,
  FILE: 1 << 2,
  PRESENT: 1 << 3,
  SWAPPED: 1 << 4,
  PFNZERO: 1 << 5,
  HUGE: 1 << 6,
  SOFT_DIRTY: 1 << 7,
} as const;

/** `PM_SCAN_WP_MATCHING`: write-protect the matching pages in the same walk. */
export const PM_SCAN_WP_MATCHING = 1;
/** `PM_SCAN_CHECK_WPASYNC`: fail unless the range is registered with WP_ASYNC. */
export const PM_SCAN_CHECK_WPASYNC = 2;

/** One `struct page_region`: `[start, end)` with its categories. */
export interface PageRegion {
  /** First address. */
  start: number;
  /** One past the last address. */
  end: number;
  /** `PAGE_IS_*` bits. */
  categories: number;
}

/** One /proc/self/pagemap entry, decoded (see the kernel's Documentation/admin-guide/mm/pagemap.rst). */
export interface PagemapEntry {
  /** Bit 63: the page is present in RAM. */
  present: boolean;
  /** Bit 62: the page is swapped out. */
  swapped: boolean;
  /** Bit 61: a file page or shared anonymous page. */
  file: boolean;
  /** Bit 57: the PTE is userfaultfd write-protected (uffd-wp). */
  uffdWp: boolean;
  /** Bit 56: the page is mapped exclusively. */
  exclusive: boolean;
  /** Bit 55: the PTE is soft-dirty. */
  softDirty: boolean;
}

/** Options of {@link PagemapScanner.scan}. */
export interface ScanOptions {
  /** Categories that must all be set (default WRITTEN). */
  required?: number;
  /** Categories of which at least one must be set (default none). */
  anyOf?: number;
  /** Categories that must be clear (inverted in the mask). */
  excluded?: number;
  /** Categories to report (default WRITTEN). */
  report?: number;
  /** Re-write-protect the matched pages in the same call (PM_SCAN_WP_MATCHING). */
  reprotect?: boolean;
  /** Fail (EPERM) unless the range is WP_ASYNC registered (PM_SCAN_CHECK_WPASYNC). */
  checkWpAsync?: boolean;
  /** Stop after this many pages (0: no limit). */
  maxPages?: number;
}

/**
 * A scanner over /proc/self/pagemap with a reusable region buffer.
 *
 * @example
 * ```ts
 * import { Mapping, PagemapScanner, pageSize, Userfaultfd } from "@uffd/userfaultfd";
 * using uffd = Userfaultfd.open({ features: ["WP_ASYNC"] });
 * using mem = Mapping.anonymous(16 * pageSize);
 * uffd.trackWrites(mem); // register { wp: true } and write-protect
 * using scan = new PagemapScanner();
 * mem.bytes()[2 * pageSize] = 1;
 * const written = scan.scan(mem, { reprotect: true }); // [{ start: mem.page(2), end: mem.page(3), ... }]
 * ```
 */
export class PagemapScanner {
  #fd: number;
  #arg = pm_scan_arg();
  #vec: Uint32Array;
  #capacity: number;
  #entry = new Uint32Array(2);

  /** Opens /proc/self/pagemap with room for `capacity` regions per PAGEMAP_SCAN call. */
  constructor(capacity = 1024) {
    checkInteger("PagemapScanner", "capacity", capacity, 1);
    if (capacity > MAX_REGIONS) {
      throw invalid("PagemapScanner", `capacity must be at most ${MAX_REGIONS} regions (got ${capacity})`);
    }
    this.#fd = libc.open(cstring("/proc/self/pagemap"), O_CLOEXEC, 0);
    if (this.#fd < 0) throw new UffdError("open /proc/self/pagemap", libc.errno());
    this.#capacity = capacity;
    this.#vec = new Uint32Array(capacity * 6);
  }

  /** Scans `[start, start+len)` and returns the matching regions (merged runs of pages). */
  scan(range: { start: number; len: number }, options: ScanOptions = {}): PageRegion[] {
    const op = "PAGEMAP_SCAN";
    if (this.#fd < 0) throw invalid(op, "the scanner is closed", "EBADF");
    checkRangeObject(op, range);
    checkOptions(op, options, SCAN_KEYS);
    for (const k of ["required", "anyOf", "excluded", "report"] as const) {
      checkInteger(op, `${k} (PAGE_IS.* bits)`, options[k]);
    }
    checkInteger(op, "maxPages", options.maxPages);
    checkBoolean(op, "reprotect", options.reprotect);
    checkBoolean(op, "checkWpAsync", options.checkWpAsync);
    checkNotClosed(op, range);
    checkRange(op, range.start, range.len); // pagemap scans this process only
    const required = options.required ?? PAGE_IS.WRITTEN;
    const anyOf = options.anyOf ?? 0;
    const excluded = options.excluded ?? 0;
    const flags = (options.reprotect ? PM_SCAN_WP_MATCHING : 0) |
      (options.checkWpAsync ? PM_SCAN_CHECK_WPASYNC : 0);
    const out: PageRegion[] = [];
    let start = range.start;
    const end = range.start + range.len;
    while (start < end) {
      this.#arg.clear()
        .set("size", 96).set("flags", flags).set("start", start).set("end", end)
        .set("vec", libc.addressOf(this.#vec)).set("vec_len", this.#capacity)
        .set("max_pages", options.maxPages ?? 0)
        .set("category_inverted", excluded).set("category_mask", required | excluded)
        .set("category_anyof_mask", anyOf).set("return_mask", options.report ?? (required | anyOf));
      const n = libc.ioctl(this.#fd, ioctl.PAGEMAP_SCAN, this.#arg.bytes);
      if (n < 0) throw new UffdError(op, libc.errno());
      for (let i = 0; i < n; i++) {
        const w = i * 6;
        out.push({
          start: this.#vec[w + 1] * 4294967296 + this.#vec[w],
          end: this.#vec[w + 3] * 4294967296 + this.#vec[w + 2],
          categories: this.#vec[w + 4],
        });
      }
      const walkEnd = this.#arg.get("walk_end");
      if (walkEnd >= end || n < this.#capacity || walkEnd <= start) break;
      if (options.maxPages) break;
      start = walkEnd;
    }
    return out;
  }

  /** Reads the pagemap entry of the page holding `addr` (one 8-byte pread, no range check). */
  entry(addr: number): PagemapEntry {
    if (this.#fd < 0) throw invalid("pagemap", "the scanner is closed", "EBADF");
    if (typeof addr !== "number" || !Number.isSafeInteger(addr) || addr < 0) {
      throw invalid("pagemap", `addr must be an address, an integer >= 0 (got ${describeValue(addr)})`);
    }
    const n = libc.preadAddr(this.#fd, libc.addressOf(this.#entry), 8, Math.floor(addr / pageSize) * 8);
    if (n !== 8) throw new UffdError("pread /proc/self/pagemap", n < 0 ? libc.errno() : ERRNO.EIO);
    const hi = this.#entry[1];
    return {
      present: ((hi >>> 31) & 1) === 1,
      swapped: ((hi >>> 30) & 1) === 1,
      file: ((hi >>> 29) & 1) === 1,
      uffdWp: ((hi >>> 25) & 1) === 1,
      exclusive: ((hi >>> 24) & 1) === 1,
      softDirty: ((hi >>> 23) & 1) === 1,
    };
  }

  /** Closes the pagemap descriptor; safe twice. */
  close(): void {
    if (this.#fd < 0) return;
    libc.close(this.#fd);
    this.#fd = -1;
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
