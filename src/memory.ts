/**
 * Memory the library creates (anonymous, memfd/shmem, hugetlb, file) and a
 * registry of live mappings used to reject ranges outside them before any syscall.
 * @module
 */
import { libc } from "../ffi/mod.ts";
import { mm } from "./abi.ts";
import { checkBoolean, checkOptions, describeValue } from "./checks.ts";
import { ERRNO, invalid, UffdError } from "./errors.ts";

const _SC_PAGESIZE = 30;

/** The system page size in bytes (4096 on x86-64). */
export const pageSize: number = libc.sysconf(_SC_PAGESIZE);

/** Reads a small file through libc (no runtime file permission needed). */
export function readTextFile(path: string): string | undefined {
  const fd = libc.open(cstring(path), 0, 0);
  if (fd < 0) return undefined;
  const buf = new Uint8Array(65536);
  let n = 0;
  for (;;) {
    const r = libc.read(fd, buf.subarray(n), buf.length - n);
    if (r <= 0) break;
    n += r;
  }
  libc.close(fd);
  return new TextDecoder().decode(buf.subarray(0, n));
}

/** A NUL-terminated UTF-8 copy of a string, for C. */
export function cstring(s: string): Uint8Array {
  const b = new TextEncoder().encode(s + "\0");
  return b;
}

/** The default huge page size in bytes, or 0 when the kernel has no hugetlb support. */
export function hugePageSize(): number {
  const m = readTextFile("/proc/meminfo")?.match(/Hugepagesize:\s+(\d+) kB/);
  return m ? Number(m[1]) * 1024 : 0;
}

/** Free huge pages of the default size (`HugePages_Free` in /proc/meminfo). */
export function freeHugePages(): number {
  const m = readTextFile("/proc/meminfo")?.match(/HugePages_Free:\s+(\d+)/);
  return m ? Number(m[1]) : 0;
}

/**
 * `length` bytes of a new SharedArrayBuffer whose first byte sits at an `alignment`-aligned
 * address (default: the page size), as a Uint8Array view. Use it for a FaultServer `bytes`
 * source: Deno places a SharedArrayBuffer's bytes 16 bytes past a page boundary, and the
 * kernel copies from a misaligned source about 5% slower (measured with readahead windows
 * of 16-64 pages). Bun's buffers are page-aligned already; the view costs one extra
 * `alignment` of memory at most. The view's `buffer` and `byteOffset` are what a Worker
 * needs to share it.
 *
 * @example
 * ```ts
 * import { alignedSharedBytes, FaultServer } from "@uffd/userfaultfd";
 * const data = alignedSharedBytes(1 << 20);
 * data.fill(7);
 * await using server = await FaultServer.start({ source: { kind: "bytes", data } });
 * ```
 */
export function alignedSharedBytes(length: number, alignment: number = pageSize): Uint8Array {
  if (!Number.isSafeInteger(length) || length <= 0) {
    throw invalid("alignedSharedBytes", `length must be a positive integer (got ${describeValue(length)})`);
  }
  if (!Number.isSafeInteger(alignment) || alignment <= 0 || (alignment & (alignment - 1)) !== 0) {
    throw invalid("alignedSharedBytes", `alignment must be a power of two (got ${describeValue(alignment)})`);
  }
  const sab = new SharedArrayBuffer(length + alignment - 1);
  const address = libc.addressOf(new Uint8Array(sab, 0, 1));
  return new Uint8Array(sab, (alignment - (address % alignment)) % alignment, length);
}

/** What backs a {@link Mapping}. */
export type MappingKind = "anonymous" | "shmem" | "hugetlb" | "file" | "adopted";

const live = new Set<Mapping>();

/**
 * The last mappings closed on this thread, as `[start, end]` pairs (a bounded ring), so a range
 * in one of them is reported as closed rather than as never created by this library.
 */
const recentlyClosed: [number, number][] = [];
const RECENTLY_CLOSED = 64;

/** Told when a library mapping is unmapped or remapped, e.g. to forget what was registered there. */
export interface MappingWatcher {
  /** `[start, start+len)` was unmapped (close() of a mapping the library owns). */
  unmapped(start: number, len: number): void;
  /** `[start, start+len)` was mremap()ed (moved, grown or shrunk). */
  remapped(start: number, len: number): void;
}

const watchers = new Set<MappingWatcher>();

/** Starts telling `w` about unmaps and remaps of library mappings on this thread; returns the stop function. */
export function watchMappings(w: MappingWatcher): () => void {
  watchers.add(w);
  return () => watchers.delete(w);
}

/** The error for a Mapping used after close(): it names the mapping and says it was closed. */
function closedError(op: string, start: number, len: number, what: string): UffdError {
  return invalid(
    op,
    `${what} 0x${start.toString(16)}+${len} is in a Mapping that was closed (close() ran, or its ` +
      "`using` block ended): its memory is unmapped, and views from its bytes() are invalid; " +
      "create a new Mapping (or, for memory mapped there since by other code, Mapping.adopt() it)",
    NO_MAPPING_ERRNO[op] ?? "EINVAL",
  );
}

/** Rejects a {@link Mapping} passed as a range after its close(), before anything else is checked. */
export function checkNotClosed(op: string, range: unknown, what = "range"): void {
  if (range instanceof Mapping && range.closed) throw closedError(op, range.address, range.length, what);
}

/** The live mapping (created or adopted by this library, on this thread) holding `[start, start+len)`. */
export function findMapping(start: number, len: number): Mapping | undefined {
  for (const m of live) {
    if (start >= m.address && start + len <= m.address + m.length) return m;
  }
  return undefined;
}

/**
 * What the kernel answers for a range with no mapping at all: the resolving ioctls look the
 * VMA up and say ENOENT; REGISTER and UNREGISTER say EINVAL. The library gives the same.
 */
const NO_MAPPING_ERRNO: Readonly<Record<string, string>> = {
  UFFDIO_COPY: "ENOENT",
  UFFDIO_ZEROPAGE: "ENOENT",
  UFFDIO_WRITEPROTECT: "ENOENT",
  UFFDIO_CONTINUE: "ENOENT",
  UFFDIO_POISON: "ENOENT",
  UFFDIO_MOVE: "ENOENT",
};

/**
 * Checks that `[start, start+len)` is non-empty, aligned to `align` and inside a
 * live mapping, throwing a library {@link UffdError} otherwise. The checks run in
 * the kernel's order (base-page alignment and length, then the mapping, then the
 * mapping's own page size) and give the errno the kernel would give. With `remote`
 * (a descriptor serving another process) only the integer and alignment checks run.
 */
export function checkRange(
  op: string,
  start: number,
  len: number,
  what = "range",
  remote = false,
): Mapping | undefined {
  if (typeof start !== "number" || typeof len !== "number") {
    throw invalid(
      op,
      `${what} start and length must be numbers: a page-aligned address and a byte count ` +
        `(got ${describeValue(start)}, ${describeValue(len)})`,
    );
  }
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(len) || start < 0) {
    throw invalid(op, `${what} start and length must be non-negative integers (got ${start}, ${len})`);
  }
  if (len <= 0) throw invalid(op, `${what} length must be positive (got ${len})`);
  if (start % pageSize !== 0 || len % pageSize !== 0) {
    throw invalid(
      op,
      `${what} 0x${start.toString(16)}+${len} is not aligned to the ${pageSize}-byte page size`,
    );
  }
  if (remote) return undefined; // another process's memory: only the kernel knows its mappings
  const m = findMapping(start, len);
  if (!m) {
    for (const [s, e] of recentlyClosed) {
      if (start >= s && start < e) throw closedError(op, start, len, what);
    }
    throw invalid(
      op,
      `${what} 0x${start.toString(16)}+${len} is not inside a mapping created by this library; ` +
        "create it with Mapping.anonymous()/memfd()/hugetlb() or declare it with Mapping.adopt()",
      NO_MAPPING_ERRNO[op] ?? "EINVAL",
    );
  }
  if (start % m.pageSize !== 0 || len % m.pageSize !== 0) {
    throw invalid(
      op,
      `${what} 0x${
        start.toString(16)
      }+${len} is not aligned to the ${m.pageSize}-byte page size of its mapping`,
    );
  }
  return m;
}

/** An argument the kernel takes as a C int: an integer from 0 to 2^31 - 1. */
function checkInt32(op: string, name: string, v: unknown): void {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0 || v > 0x7fffffff) {
    throw invalid(op, `${name} must be an integer from 0 to ${0x7fffffff} (got ${describeValue(v)})`);
  }
}

function fail(op: string): never {
  throw new UffdError(op, libc.errno());
}

/** Options of {@link Mapping.anonymous}. */
export interface AnonymousOptions {
  /** `MADV_NOHUGEPAGE` so transparent huge pages never back it (default true: faults stay 4 KiB). */
  noHugepage?: boolean;
}

/** Options of {@link Mapping.memfd}. */
export interface MemfdOptions {
  /** Name shown in /proc/self/maps (default `"uffd"`). */
  name?: string;
  /** Back the memfd with huge pages (`MFD_HUGETLB`). */
  hugetlb?: boolean;
  /**
   * Map the memfd `MAP_PRIVATE` instead of `MAP_SHARED` (the kernel selftests' `shmem-private` and
   * `hugetlb-private` memory types): writes through this mapping are copy-on-write, private to it;
   * an {@link Mapping.alias} is still a shared mapping of the memfd's own pages. Default false.
   */
  private?: boolean;
}

/**
 * A memory mapping owned by this library: anonymous private memory, a memfd (shmem)
 * mapping with optional aliases, hugetlb, a read-only file, or adopted foreign memory.
 * Closing unmaps it; a view obtained from {@link bytes} must not be used after that.
 *
 * @example
 * ```ts
 * import { Mapping, pageSize } from "@uffd/userfaultfd";
 * using m = Mapping.anonymous(16 * pageSize);
 * m.bytes()[0] = 1;
 * ```
 */
export class Mapping {
  /** Start address. */
  readonly address: number;
  /** Length in bytes. */
  readonly length: number;
  /** What backs it. */
  readonly kind: MappingKind;
  /** Page size of the mapping (huge page size for hugetlb). */
  readonly pageSize: number;
  /** The memfd or file descriptor behind a shared mapping, or -1. */
  readonly fd: number;
  #view: Uint8Array | undefined;
  #owned: boolean;
  #ownsFd: boolean;
  #closed = false;
  #private = false;

  private constructor(
    address: number,
    length: number,
    kind: MappingKind,
    pageSz: number,
    fd: number,
    owned: boolean,
    ownsFd: boolean,
  ) {
    this.address = address;
    this.length = length;
    this.kind = kind;
    this.pageSize = pageSz;
    this.fd = fd;
    this.#owned = owned;
    this.#ownsFd = ownsFd;
    live.add(this);
    for (let i = recentlyClosed.length - 1; i >= 0; i--) {
      const [s, e] = recentlyClosed[i];
      if (s < address + length && e > address) recentlyClosed.splice(i, 1); // the address is in use again
    }
  }

  static #checkLength(op: string, length: number, align: number): void {
    if (typeof length !== "number" || !Number.isSafeInteger(length) || length <= 0 || length % align !== 0) {
      throw invalid(
        op,
        `length must be a positive multiple of ${align} bytes (got ${describeValue(length)})`,
      );
    }
  }

  /** Anonymous private memory (`MAP_PRIVATE | MAP_ANONYMOUS`), not populated. */
  static anonymous(length: number, options: AnonymousOptions = {}): Mapping {
    Mapping.#checkLength("mmap", length, pageSize);
    checkOptions("mmap", options, ["noHugepage"]);
    checkBoolean("mmap", "noHugepage", options.noHugepage);
    const a = libc.mmap(0, length, mm.PROT_READ | mm.PROT_WRITE, mm.MAP_PRIVATE | mm.MAP_ANONYMOUS, -1, 0);
    if (a === -1) fail("mmap");
    if (options.noHugepage ?? true) libc.madvise(a, length, mm.MADV_NOHUGEPAGE);
    return new Mapping(a, length, "anonymous", pageSize, -1, true, false);
  }

  /** Anonymous hugetlb memory (`MAP_HUGETLB`); throws ENOMEM when no huge pages are reserved. */
  static hugetlb(length: number): Mapping {
    const hp = hugePageSize();
    if (hp === 0) throw invalid("mmap", "this kernel has no hugetlb support", "EOPNOTSUPP");
    Mapping.#checkLength("mmap", length, hp);
    const a = libc.mmap(
      0,
      length,
      mm.PROT_READ | mm.PROT_WRITE,
      mm.MAP_PRIVATE | mm.MAP_ANONYMOUS | mm.MAP_HUGETLB | mm.MAP_NORESERVE,
      -1,
      0,
    );
    if (a === -1) fail("mmap");
    return new Mapping(a, length, "hugetlb", hp, -1, true, false);
  }

  /**
   * A memfd of `length` bytes mapped shared (or private with `options.private`). Use {@link alias}
   * for a second, shared mapping of the same pages (to fill them out of band, for MINOR/CONTINUE).
   */
  static memfd(length: number, options: MemfdOptions = {}): Mapping {
    checkOptions("memfd_create", options, ["name", "hugetlb", "private"]);
    checkBoolean("memfd_create", "hugetlb", options.hugetlb);
    checkBoolean("memfd_create", "private", options.private);
    if (options.name !== undefined && typeof options.name !== "string") {
      throw invalid("memfd_create", `name must be a string (got ${describeValue(options.name)})`);
    }
    const huge = options.hugetlb ?? false;
    const ps = huge ? hugePageSize() : pageSize;
    if (huge && ps === 0) throw invalid("memfd_create", "this kernel has no hugetlb support", "EOPNOTSUPP");
    Mapping.#checkLength("memfd_create", length, ps);
    const fd = libc.memfd_create(
      cstring(options.name ?? "uffd"),
      mm.MFD_CLOEXEC | (huge ? mm.MFD_HUGETLB : 0),
    );
    if (fd < 0) fail("memfd_create");
    if (libc.ftruncate(fd, length) !== 0) {
      const e = libc.errno();
      libc.close(fd);
      throw new UffdError("ftruncate", e);
    }
    const share = options.private ? mm.MAP_PRIVATE : mm.MAP_SHARED;
    const a = libc.mmap(0, length, mm.PROT_READ | mm.PROT_WRITE, share, fd, 0);
    if (a === -1) {
      const e = libc.errno();
      libc.close(fd);
      throw new UffdError("mmap", e);
    }
    const m = new Mapping(a, length, huge ? "hugetlb" : "shmem", ps, fd, true, true);
    m.#private = options.private ?? false;
    return m;
  }

  /**
   * A read-only private mapping of the file at `path` (the kernel can copy straight from it),
   * `length` bytes (default: the file's size) rounded up to whole pages. Errors name the path
   * (`op` is `open <path>` or `mmap <path>`) and give open(2)'s or mmap(2)'s reason.
   */
  static file(path: string, length?: number): Mapping {
    if (typeof path !== "string" || path === "") {
      throw invalid("open", `path must be a non-empty string (got ${describeValue(path)})`);
    }
    if (length !== undefined && (!Number.isSafeInteger(length) || length <= 0)) {
      throw invalid(`mmap ${path}`, `length must be a positive integer (got ${describeValue(length)})`);
    }
    const fd = libc.open(cstring(path), 0 /* O_RDONLY */ | 0o2000000, 0);
    if (fd < 0) throw new UffdError(`open ${path}`, libc.errno());
    // open(2) of a directory succeeds read-only; reading it says EISDIR (mmap would say ENOMEM).
    if (libc.preadAddr(fd, libc.addressOf(scratch), 1, 0) < 0 && libc.errno() === ERRNO.EISDIR) {
      libc.close(fd);
      throw new UffdError(`open ${path}`, ERRNO.EISDIR);
    }
    const len = length ?? fileSize(fd);
    if (len <= 0) {
      const e = libc.errno();
      libc.close(fd);
      if (len < 0) throw new UffdError(`lseek ${path}`, e);
      throw invalid(`mmap ${path}`, `file ${path} is empty`);
    }
    const rounded = Math.ceil(len / pageSize) * pageSize;
    const a = libc.mmap(0, rounded, mm.PROT_READ, mm.MAP_PRIVATE, fd, 0);
    if (a === -1) {
      const e = libc.errno();
      libc.close(fd);
      throw new UffdError(`mmap ${path}`, e);
    }
    return new Mapping(a, rounded, "file", pageSize, fd, true, true);
  }

  /** Declares memory this library did not create (it will not be unmapped by close). */
  static adopt(address: number, length: number, pageSz: number = pageSize): Mapping {
    if (
      typeof pageSz !== "number" || !Number.isSafeInteger(pageSz) || pageSz < pageSize ||
      (pageSz & (pageSz - 1))
    ) {
      throw invalid("adopt", `pageSize must be a power of two >= ${pageSize} (got ${describeValue(pageSz)})`);
    }
    if (
      typeof address !== "number" || !Number.isSafeInteger(address) || address <= 0 || address % pageSz !== 0
    ) {
      throw invalid("adopt", `address must be a ${pageSz}-aligned address (got ${describeValue(address)})`);
    }
    Mapping.#checkLength("adopt", length, pageSz);
    return new Mapping(address, length, "adopted", pageSz, -1, false, false);
  }

  /** A second shared mapping of the same memfd pages (shmem/hugetlb memfd only). */
  alias(): Mapping {
    this.#check("alias");
    if (this.fd < 0 || (this.kind !== "shmem" && this.kind !== "hugetlb")) {
      throw invalid("alias", "only a memfd mapping has an alias");
    }
    const a = libc.mmap(0, this.length, mm.PROT_READ | mm.PROT_WRITE, mm.MAP_SHARED, this.fd, 0);
    if (a === -1) fail("mmap");
    return new Mapping(a, this.length, this.kind, this.pageSize, this.fd, true, false);
  }

  /**
   * Whether a memfd mapping is `MAP_PRIVATE` (`Mapping.memfd(n, { private: true })`): its
   * writes are copy-on-write, not seen through the memfd or an alias. False for every other kind.
   */
  get isPrivate(): boolean {
    return this.#private;
  }

  /** Whether {@link close} has run. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Same as {@link address}, so a Mapping is a `Range`. */
  get start(): number {
    return this.address;
  }

  /** Same as {@link length}, so a Mapping is a `Range`. */
  get len(): number {
    return this.length;
  }

  /** Address of page `i` (`i` up to the page count: `page(count)` is the mapping's end). */
  page(i: number): number {
    if (typeof i !== "number" || !Number.isSafeInteger(i) || i < 0 || i * this.pageSize > this.length) {
      throw invalid(
        "page",
        `page index must be an integer from 0 to ${this.length / this.pageSize} (got ${describeValue(i)})`,
      );
    }
    return this.address + i * this.pageSize;
  }

  /** A Uint8Array over the whole mapping (no copy). Do not use it after {@link close}. */
  bytes(): Uint8Array {
    this.#check("bytes");
    this.#view ??= new Uint8Array(libc.view(this.address, this.length));
    return this.#view;
  }

  #check(op: string): void {
    if (this.#closed) {
      throw invalid(
        op,
        `the Mapping 0x${this.address.toString(16)}+${this.length} was closed (close() ran, or its ` +
          "`using` block ended): its memory is unmapped; create a new Mapping",
        "EBADF",
      );
    }
  }

  #sub(op: string, offset: number, length: number): number {
    this.#check(op);
    if (typeof offset !== "number" || typeof length !== "number") {
      throw invalid(
        op,
        `offset and length must be numbers (got ${describeValue(offset)}, ${describeValue(length)})`,
      );
    }
    if (offset % this.pageSize !== 0 || length % this.pageSize !== 0 || length <= 0) {
      throw invalid(op, `offset and length must be positive multiples of ${this.pageSize}`);
    }
    if (offset < 0 || offset + length > this.length) {
      throw invalid(op, `[${offset}, ${offset + length}) lies outside the ${this.length}-byte mapping`);
    }
    return this.address + offset;
  }

  /** `madvise(advice)` on a page-aligned part of the mapping. */
  madvise(advice: number, offset = 0, length: number = this.length - offset): void {
    const a = this.#sub("madvise", offset, length);
    checkInt32("madvise", "advice (an MADV_* number)", advice);
    if (libc.madvise(a, length, advice) !== 0) fail("madvise");
  }

  /** `MADV_DONTNEED`: drop pages (anonymous memory reads as missing again). */
  dontneed(offset = 0, length: number = this.length - offset): void {
    this.madvise(mm.MADV_DONTNEED, offset, length);
  }

  /** `MADV_REMOVE`: free the backing pages of a shared mapping (punch a hole). */
  remove(offset = 0, length: number = this.length - offset): void {
    this.madvise(mm.MADV_REMOVE, offset, length);
  }

  /** `mprotect` on a page-aligned part of the mapping. */
  protect(prot: number, offset = 0, length: number = this.length - offset): void {
    const a = this.#sub("mprotect", offset, length);
    checkInt32("mprotect", "prot (PROT_* bits)", prot);
    if (libc.mprotect(a, length, prot) !== 0) fail("mprotect");
  }

  /**
   * `mremap` the whole mapping to `newLength` (may move; `to` moves it to that address with
   * MREMAP_FIXED, replacing whatever was mapped there); returns a new Mapping that owns the
   * memory and closes this one without unmapping.
   */
  remap(newLength: number, options: { dontUnmap?: boolean; to?: number } = {}): Mapping {
    this.#check("mremap");
    Mapping.#checkLength("mremap", newLength, this.pageSize);
    checkOptions("mremap", options, ["dontUnmap", "to"]);
    checkBoolean("mremap", "dontUnmap", options.dontUnmap);
    const to = options.to;
    if (
      to !== undefined &&
      (typeof to !== "number" || !Number.isSafeInteger(to) || to <= 0 || to % this.pageSize !== 0)
    ) {
      throw invalid("mremap", `to must be a ${this.pageSize}-aligned address (got ${describeValue(to)})`);
    }
    const flags = mm.MREMAP_MAYMOVE | (options.dontUnmap ? mm.MREMAP_DONTUNMAP : 0) |
      (options.to !== undefined ? mm.MREMAP_FIXED : 0);
    const a = libc.mremap(this.address, this.length, newLength, flags, options.to ?? 0);
    if (a === -1) fail("mremap");
    for (const w of watchers) w.remapped(this.address, this.length);
    const next = new Mapping(a, newLength, this.kind, this.pageSize, this.fd, true, this.#ownsFd);
    if (!options.dontUnmap) {
      this.#owned = false;
      this.#ownsFd = false;
      this.close();
    }
    return next;
  }

  /** Unmaps (and closes the memfd it owns). Safe to call twice. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    live.delete(this);
    this.#view = undefined;
    recentlyClosed.push([this.address, this.address + this.length]);
    if (recentlyClosed.length > RECENTLY_CLOSED) recentlyClosed.shift();
    if (this.#owned) {
      libc.munmap(this.address, this.length);
      for (const w of watchers) w.unmapped(this.address, this.length);
    }
    if (this.#ownsFd) libc.close(this.fd);
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

const scratch = new Uint8Array(8);

function fileSize(fd: number): number {
  // lseek(fd, 0, SEEK_END) through syscall 8
  const n = libc.syscall(8, fd, 0, 2);
  libc.syscall(8, fd, 0, 0);
  return n;
}
