/**
 * The `Userfaultfd` descriptor: open, API handshake, register, resolve, events.
 * @module
 */
import { libc } from "../ffi/mod.ts";
import {
  FEATURE_NAMES,
  featureBit,
  type FeatureName,
  featureNames,
  ioctl,
  type IoctlName,
  ioctlNames,
  NR_userfaultfd,
  O_CLOEXEC,
  O_NONBLOCK,
  O_RDWR,
  UFFD_API,
  UFFD_EVENT,
  UFFD_USER_MODE_ONLY,
  UFFDIO_CONTINUE_MODE_DONTWAKE,
  UFFDIO_CONTINUE_MODE_WP,
  UFFDIO_COPY_MODE_DONTWAKE,
  UFFDIO_COPY_MODE_WP,
  UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES,
  UFFDIO_MOVE_MODE_DONTWAKE,
  UFFDIO_POISON_MODE_DONTWAKE,
  UFFDIO_REGISTER_MODE_MINOR,
  UFFDIO_REGISTER_MODE_MISSING,
  UFFDIO_REGISTER_MODE_WP,
  UFFDIO_WRITEPROTECT_MODE_DONTWAKE,
  UFFDIO_WRITEPROTECT_MODE_WP,
  UFFDIO_ZEROPAGE_MODE_DONTWAKE,
} from "./abi.ts";
import {
  checkBoolean,
  checkInteger,
  checkNameList,
  checkOneOf,
  checkOptions,
  checkRangeObject,
  checkTimeout,
  describeValue,
} from "./checks.ts";
import { ERRNO, invalid, UffdError } from "./errors.ts";
import { EventBuffer, type UffdEvent } from "./events.ts";
import { FdWatcher } from "./fd_watcher.ts";
import {
  checkNotClosed,
  checkRange,
  cstring,
  findMapping,
  type MappingWatcher,
  watchMappings,
} from "./memory.ts";
import { POLLIN } from "./eventfd.ts";
import {
  type U64Struct,
  uffdio_api,
  uffdio_continue,
  uffdio_copy,
  uffdio_move,
  uffdio_poison,
  uffdio_range,
  uffdio_register,
  uffdio_writeprotect,
  uffdio_zeropage,
} from "./structs.ts";

/** A byte range `[start, start + len)`; a {@link Mapping} is one. */
export interface Range {
  /** First address (page-aligned). */
  readonly start: number;
  /** Length in bytes (page multiple). */
  readonly len: number;
}

/** How to obtain the descriptor. */
export type OpenVia = "auto" | "syscall" | "device";

/** Options of {@link Userfaultfd.open}. */
export interface OpenOptions {
  /** Features to enable in the API handshake, by name. Unsupported ones throw before the handshake. */
  features?: readonly FeatureName[];
  /**
   * `O_NONBLOCK` (default true): reads without a timeout return no event instead of
   * blocking. poll(2) on a blocking userfaultfd always reports POLLERR, so read timeouts
   * and {@link Userfaultfd.events} need it; `false` gives plain blocking reads.
   */
  nonBlocking?: boolean;
  /** `O_CLOEXEC` (default true). */
  closeOnExec?: boolean;
  /** `UFFD_USER_MODE_ONLY`: faults taken in kernel mode are not delivered (default true). */
  userModeOnly?: boolean;
  /** The `userfaultfd` syscall, `/dev/userfaultfd`, or the syscall then the device (default). */
  via?: OpenVia;
  /** Perform the `UFFDIO_API` handshake now (default true). */
  handshake?: boolean;
}

/** Register modes. */
export interface RegisterOptions {
  /** `UFFDIO_REGISTER_MODE_MISSING` (default when no mode is given). */
  missing?: boolean;
  /** `UFFDIO_REGISTER_MODE_WP`. */
  wp?: boolean;
  /** `UFFDIO_REGISTER_MODE_MINOR`. */
  minor?: boolean;
}

/** What `UFFDIO_REGISTER` reports: the ioctls usable on the range. */
export interface RegisterResult {
  /** The ioctls available on the registered range, by name. */
  ioctls: IoctlName[];
  /** The low 32 bits of the raw `ioctls` mask. */
  ioctlBits: number;
}

/** What the kernel supports, from a throwaway descriptor. */
export interface ProbeResult {
  /** Supported features by name. */
  features: FeatureName[];
  /** The raw feature mask. */
  featureBits: number;
  /** Feature bits this library has no name for (kept, not rejected). */
  unknownFeatureBits: number;
  /** ioctls available on the descriptor after the handshake, by name. */
  ioctls: IoctlName[];
  /** The raw ioctl mask, bits 0..52 (bit 63, `_UFFDIO_API`, shows in {@link ProbeResult.ioctls}). */
  ioctlBits: number;
  /** How the probe descriptor was opened. */
  openedVia: "syscall" | "device";
}

/** Options of {@link Userfaultfd.copy}. */
export interface CopyOptions extends Range {
  /** Source: an address inside a library mapping, or bytes (any alignment; read in place). */
  src: number | ArrayBufferView;
  /** `UFFDIO_COPY_MODE_DONTWAKE`. */
  dontwake?: boolean;
  /** `UFFDIO_COPY_MODE_WP`: map the page write-protected. */
  wp?: boolean;
}

/** Options of {@link Userfaultfd.move}. */
export interface MoveOptions extends Range {
  /** Source address (page-aligned, inside a library mapping). */
  src: number;
  /** `UFFDIO_MOVE_MODE_DONTWAKE`. */
  dontwake?: boolean;
  /** `UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES`. */
  allowSrcHoles?: boolean;
}

/** A range plus `dontwake`. */
export interface DontwakeRange extends Range {
  /** Do not wake the faulting threads. */
  dontwake?: boolean;
}

/** Options of {@link Userfaultfd.writeprotect}. */
export interface WriteprotectOptions extends DontwakeRange {
  /** true to write-protect, false to remove protection (and wake). */
  wp: boolean;
}

/** Options of {@link Userfaultfd.continue}. */
export interface ContinueOptions extends DontwakeRange {
  /** `UFFDIO_CONTINUE_MODE_WP`: map the page write-protected. */
  wp?: boolean;
}

/** Options of {@link Userfaultfd.fromFd}. */
export interface FromFdOptions {
  /** The descriptor serves another process's memory: check ranges for alignment only. */
  remote?: boolean;
}

/** Options of {@link Userfaultfd.readEvents}. */
export interface ReadOptions {
  /** Wait at most this many milliseconds (0: do not wait); omitted: block (unless non-blocking). */
  timeout?: number;
}

let probed: ProbeResult | undefined;
const OPEN_KEYS = ["features", "nonBlocking", "closeOnExec", "userModeOnly", "via", "handshake"] as const;
const NR_fcntl = 72;
const NR_gettid = 186;
const F_GETFL = 3;

function checkFeatureNames(op: string, features: unknown): asserts features is readonly FeatureName[] {
  checkNameList(op, "features", features, FEATURE_NAMES);
}

function openFd(op: string, flags: number, via: OpenVia): { fd: number; via: "syscall" | "device" } {
  let sysErrno = 0;
  if (via !== "device") {
    const fd = libc.syscall(NR_userfaultfd, flags);
    if (fd >= 0) return { fd, via: "syscall" };
    sysErrno = libc.errno();
    if (via === "syscall") throw new UffdError(op, sysErrno);
  }
  let devErrno: number;
  const dev = libc.open(cstring("/dev/userfaultfd"), O_RDWR | O_CLOEXEC, 0);
  if (dev < 0) devErrno = libc.errno();
  else {
    const fd = libc.syscall(16, /* ioctl */ dev, ioctl.USERFAULTFD_IOC_NEW, flags);
    devErrno = libc.errno();
    libc.close(dev);
    if (fd >= 0) return { fd, via: "device" };
  }
  if (via === "device") throw new UffdError("open /dev/userfaultfd", devErrno);
  // Both ways failed: report both, the syscall's errno first.
  const sys = new UffdError(op, sysErrno);
  const device = new UffdError("open /dev/userfaultfd", devErrno);
  throw new UffdError(op, sysErrno, {
    detail: `the userfaultfd syscall failed with ${sys.code} (${sys.hint}); ` +
      `/dev/userfaultfd failed with ${device.code} (${device.hint})`,
  });
}

/**
 * A userfaultfd descriptor. Methods are named after the ioctls; every method that
 * places pages returns the bytes done and throws {@link UffdError} with the partial
 * progress and the signed result field on failure.
 *
 * A fault blocks the faulting thread until the fault is resolved, so **the thread that serves
 * the faults (reads events, copies pages) must never touch the memory it serves**: it would
 * wait for itself forever. Raise faults from Workers or child processes, or serve them on one
 * (a FaultServer serves from its own threads, so any thread may touch its memory). With
 * `THREAD_ID`, {@link Userfaultfd.events} detects that hang and ends the process with an
 * explanation; readEvent()/readEvents() on a thread that then blocks cannot.
 *
 * @example
 * ```ts
 * import { Mapping, pageSize, Userfaultfd } from "@uffd/userfaultfd";
 * using uffd = Userfaultfd.open({ features: ["THREAD_ID"] });
 * using mem = Mapping.anonymous(4 * pageSize);
 * uffd.register(mem, { missing: true });
 * ```
 */
export class Userfaultfd {
  #fd: number;
  #features = 0;
  #ioctls: IoctlName[] = [];
  #handshaken = false;
  #watchers = new Set<FdWatcher>();
  #nonBlocking: boolean;
  #remote = false;
  /**
   * What this descriptor registered, sorted by start and not overlapping (`mode`: the
   * UFFDIO_REGISTER_MODE_* bits), kept by register() and unregister() and trimmed when a
   * library mapping is unmapped.
   */
  #regs: { start: number; end: number; mode: number }[] = [];
  /**
   * Whether #regs is every registration of the descriptor, so a range outside it can be
   * rejected before the syscall: true for a descriptor opened here; false for one received
   * (fromFd: registered elsewhere), and from the first mremap of a library mapping over a
   * registered range (the kernel may move or grow a registration).
   */
  #knowsRegs = false;
  #stopWatching: (() => void) | undefined;
  readonly #api = uffdio_api();
  readonly #reg = uffdio_register();
  readonly #range = uffdio_range();
  readonly #copy = uffdio_copy();
  readonly #zero = uffdio_zeropage();
  readonly #move = uffdio_move();
  readonly #wp = uffdio_writeprotect();
  readonly #cont = uffdio_continue();
  readonly #poison = uffdio_poison();
  readonly #pollfd = new Int32Array(2);

  private constructor(fd: number, nonBlocking: boolean) {
    this.#fd = fd;
    this.#nonBlocking = nonBlocking;
  }

  /** Opens a descriptor and (by default) performs the API handshake with the requested features. */
  static open(options: OpenOptions = {}): Userfaultfd {
    checkOptions("open", options, OPEN_KEYS);
    checkOneOf("open", "via", options.via, ["auto", "syscall", "device"]);
    for (const k of ["nonBlocking", "closeOnExec", "userModeOnly", "handshake"] as const) {
      checkBoolean("open", k, options[k]);
    }
    const via = options.via ?? "auto";
    const features = options.features === undefined ? [] : options.features;
    checkFeatureNames("open", features);
    if (features.length > 0) {
      const missing = features.filter((f) => !Userfaultfd.probe().features.includes(f));
      if (missing.length > 0) {
        throw invalid("UFFDIO_API", `this kernel does not support ${missing.join(", ")}`, "EOPNOTSUPP");
      }
    }
    const nonBlocking = options.nonBlocking ?? true;
    const flags = ((options.closeOnExec ?? true) ? O_CLOEXEC : 0) |
      (nonBlocking ? O_NONBLOCK : 0) |
      ((options.userModeOnly ?? true) ? UFFD_USER_MODE_ONLY : 0);
    const { fd } = openFd("open", flags, via);
    const u = new Userfaultfd(fd, nonBlocking);
    u.#knowsRegs = true; // a new descriptor: every registration goes through register()
    if (options.handshake ?? true) {
      try {
        u.api(features);
      } catch (e) {
        u.close();
        throw e;
      }
    }
    return u;
  }

  /**
   * Wraps a descriptor that already did its handshake (a fork event's `ufd`, or one
   * received over a socket). `features` are those it was created with; whether it is
   * non-blocking is read from the descriptor (`fcntl(F_GETFL)`). The wrapper owns the
   * descriptor: its close() closes it.
   *
   * With `remote: true` the descriptor serves another process's memory (a forked child,
   * or a process that sent it): ranges are checked for alignment only, not against
   * this process's mappings.
   */
  static fromFd(
    fd: number,
    features: readonly FeatureName[] | number = 0,
    options: FromFdOptions = {},
  ): Userfaultfd {
    if (!Number.isInteger(fd) || fd < 0) {
      throw invalid("fromFd", `fd must be a descriptor number >= 0 (got ${describeValue(fd)})`, "EBADF");
    }
    if (typeof features !== "number") checkFeatureNames("fromFd", features);
    else checkInteger("fromFd", "features (a mask)", features);
    checkOptions("fromFd", options, ["remote"]);
    checkBoolean("fromFd", "remote", options.remote);
    const fl = libc.syscall(NR_fcntl, fd, F_GETFL);
    if (fl < 0) throw new UffdError("fromFd", libc.errno());
    const u = new Userfaultfd(fd, (fl & O_NONBLOCK) !== 0);
    u.#features = typeof features === "number" ? features : features.reduce((m, f) => m + featureBit(f), 0);
    u.#handshaken = true;
    u.#remote = options.remote ?? false;
    return u;
  }

  /**
   * Reports what the kernel supports, using a throwaway descriptor (a real one can
   * do the handshake only once). The result is cached for the process.
   */
  static probe(options: { refresh?: boolean } = {}): ProbeResult {
    checkOptions("probe", options, ["refresh"]);
    checkBoolean("probe", "refresh", options.refresh);
    if (probed && !options.refresh) return probed;
    const { fd, via } = openFd("probe", O_CLOEXEC | UFFD_USER_MODE_ONLY, "auto");
    try {
      const api = uffdio_api().set("api", UFFD_API).set("features", 0);
      if (libc.ioctl(fd, ioctl.UFFDIO_API, api.bytes) !== 0) throw new UffdError("UFFDIO_API", libc.errno());
      // features is a u64; this kernel's bits fit in 53. The top bit on older kernels
      // (UFFD_API_FEATURES with bit 63 set) is not a feature.
      const bits = api.words[2] + (api.words[3] & 0x1fffff) * 4294967296;
      const { names, unknown } = featureNames(bits);
      const ioctlBits = api.words[4] + (api.words[5] & 0x1fffff) * 4294967296;
      const ioctls = ioctlNames(api.words[4], api.words[5]);
      probed = {
        features: names,
        featureBits: bits,
        unknownFeatureBits: unknown,
        ioctls,
        ioctlBits,
        openedVia: via,
      };
      return probed;
    } finally {
      libc.close(fd);
    }
  }

  /** The descriptor number (-1 after close). */
  get fd(): number {
    return this.#fd;
  }

  /** Whether {@link close} has run. */
  get closed(): boolean {
    return this.#fd < 0;
  }

  /** Feature names enabled on this descriptor. */
  get features(): FeatureName[] {
    return featureNames(this.#features).names;
  }

  /** The raw enabled feature mask. */
  get featureBits(): number {
    return this.#features;
  }

  /** ioctls the handshake reported, by name. */
  get ioctls(): IoctlName[] {
    return [...this.#ioctls];
  }

  /** Whether a feature is enabled on this descriptor. */
  has(feature: FeatureName): boolean {
    return Math.floor(this.#features / featureBit(feature)) % 2 === 1;
  }

  #checkOpen(op: string): void {
    if (this.#fd < 0) {
      throw invalid(op, "the userfaultfd is closed; open a new one with Userfaultfd.open()", "EBADF");
    }
  }

  /** Range checks before any syscall; a remote descriptor's ranges are another process's memory. */
  #checkRange(op: string, start: number, len: number, what = "range"): void {
    checkRange(op, start, len, what, this.#remote);
  }

  #need(op: string, feature: FeatureName): void {
    if (!this.has(feature)) {
      throw invalid(op, `needs feature ${feature}: open with { features: ["${feature}"] }`);
    }
  }

  /** Records `[start, end)` as registered in `mode` (0: unregistered), replacing what overlapped. */
  #record(start: number, end: number, mode: number): void {
    const next: { start: number; end: number; mode: number }[] = [];
    for (const r of this.#regs) {
      if (r.end <= start || r.start >= end) {
        next.push(r);
        continue;
      }
      if (r.start < start) next.push({ start: r.start, end: start, mode: r.mode });
      if (r.end > end) next.push({ start: end, end: r.end, mode: r.mode });
    }
    if (mode !== 0) next.push({ start, end, mode });
    next.sort((a, b) => a.start - b.start);
    this.#regs = next;
    if (next.length > 0 && !this.#stopWatching) {
      const watcher: MappingWatcher = {
        unmapped: (s, len) => this.#record(s, s + len, 0),
        remapped: (s, len) => {
          if (this.#overlapsRegs(s, s + len)) this.#knowsRegs = false;
        },
      };
      this.#stopWatching = watchMappings(watcher);
    }
  }

  #overlapsRegs(start: number, end: number): boolean {
    for (const r of this.#regs) if (r.start < end && r.end > start) return true;
    return false;
  }

  /** The modes registered over all of `[start, end)` (their intersection), or -1 if a part is not registered. */
  #registeredMode(start: number, end: number): number {
    let pos = start;
    let mode = 7;
    for (const r of this.#regs) {
      if (r.end <= pos) continue;
      if (r.start > pos) return -1;
      mode &= r.mode;
      pos = r.end;
      if (pos >= end) return mode;
    }
    return -1;
  }

  /** Whether `[start, end)` overlaps registrations of different modes (separate VMAs in the kernel). */
  #mixedModes(start: number, end: number): boolean {
    let mode = -1;
    for (const r of this.#regs) {
      if (r.end <= start || r.start >= end) continue;
      if (mode >= 0 && r.mode !== mode) return true;
      mode = r.mode;
    }
    return false;
  }

  /**
   * Rejects, before the syscall, a range this descriptor did not register (ENOENT, as the
   * kernel; EINVAL for MOVE, as the kernel), or registered without the `need`ed mode. Only when the descriptor knows all its
   * registrations: not for a received or remote one, nor with EVENT_REMAP (an mremap elsewhere
   * moves a registration without telling this object); there the kernel checks.
   */
  #checkRegistered(op: string, start: number, len: number, need = 0, what = "range"): void {
    if (!this.#knowsRegs || this.#remote || this.has("EVENT_REMAP")) return;
    const mode = this.#registeredMode(start, start + len);
    const where = `${what} 0x${start.toString(16)}+${len}`;
    if (mode < 0) {
      throw invalid(
        op,
        `${where} is not registered with this userfaultfd: register() it first ` +
          "(unregister() and unmapping end a registration; another descriptor's range is not this one's)",
        op === "UFFDIO_MOVE" ? "EINVAL" : "ENOENT", // the kernel's errno for each
      );
    }
    if ((mode & need) !== need) {
      throw op === "UFFDIO_WRITEPROTECT"
        ? invalid(op, `${where} is registered without wp mode: register(range, { wp: true })`, "ENOENT")
        : invalid(op, `wp: true needs ${where} registered with { wp: true }`);
    }
  }

  /**
   * Runs a resolving ioctl on `[start, start+len)`. A kernel ENOENT on a range this descriptor
   * knows it registered means the mapping changed under the operation; say so.
   */
  #runOn<F extends string>(
    op: string,
    req: number,
    s: U64Struct<F>,
    result: F,
    start: number,
    len: number,
  ): number {
    try {
      return this.#run(op, req, s, result);
    } catch (e) {
      if (
        e instanceof UffdError && e.code === "ENOENT" && op !== "UFFDIO_MOVE" && this.#knowsRegs &&
        this.#registeredMode(start, start + len) >= 0
      ) {
        throw new UffdError(op, e.errno, {
          result: e.result,
          done: e.done,
          detail: this.#mixedModes(start, start + len)
            ? "the range spans registrations of different modes, which the kernel keeps as separate " +
              "mappings, and one call resolves pages of one mapping only: split the call where the mode changes"
            : "the range is registered with this userfaultfd, but its mapping changed under the " +
              "operation (unmapped or remapped): stop serving it",
        });
      }
      throw e;
    }
  }

  /** Runs an ioctl on the descriptor; throws UffdError with the signed result field. */
  #run<F extends string>(op: string, req: number, s: U64Struct<F>, result?: F): number {
    if (libc.ioctl(this.#fd, req, s.bytes) === 0) return result ? s.getSigned(result) : 0;
    let errno = libc.errno();
    if (result === undefined) throw new UffdError(op, errno);
    const r = s.getSigned(result);
    if (r < 0) errno = -r; // more reliable than errno across threads
    throw new UffdError(op, errno, { result: r, done: r > 0 ? r : 0 });
  }

  /**
   * `UFFDIO_API`: the handshake, enabling `features`. Only once per descriptor
   * (the kernel answers EINVAL to a second one).
   */
  api(features: readonly FeatureName[] = []): { features: FeatureName[]; ioctls: IoctlName[] } {
    this.#checkOpen("UFFDIO_API");
    if (this.#handshaken) {
      throw invalid(
        "UFFDIO_API",
        "the handshake was already done on this descriptor (the kernel allows one)",
      );
    }
    checkFeatureNames("UFFDIO_API", features);
    let mask = 0;
    for (const f of features) mask += featureBit(f);
    this.#api.clear().set("api", UFFD_API).set("features", mask);
    this.#run("UFFDIO_API", ioctl.UFFDIO_API, this.#api);
    this.#handshaken = true;
    this.#features = mask;
    this.#ioctls = ioctlNames(this.#api.words[4], this.#api.words[5]);
    return { features: this.features, ioctls: this.ioctls };
  }

  #handshakeDone(op: string): void {
    this.#checkOpen(op);
    if (!this.#handshaken) throw invalid(op, "do the UFFDIO_API handshake first (api())");
  }

  /** `UFFDIO_REGISTER`: start handling faults of `range` in the given modes. */
  register(range: Range, options: RegisterOptions = {}): RegisterResult {
    const op = "UFFDIO_REGISTER";
    this.#handshakeDone(op);
    checkRangeObject(op, range);
    checkOptions(op, options, ["missing", "wp", "minor"]);
    checkBoolean(op, "missing", options.missing);
    checkBoolean(op, "wp", options.wp);
    checkBoolean(op, "minor", options.minor);
    checkNotClosed(op, range);
    this.#checkRange(op, range.start, range.len);
    const given = options.missing !== undefined || options.wp !== undefined || options.minor !== undefined;
    const mode =
      (given ? (options.missing ? UFFDIO_REGISTER_MODE_MISSING : 0) : UFFDIO_REGISTER_MODE_MISSING) |
      (options.wp ? UFFDIO_REGISTER_MODE_WP : 0) |
      (options.minor ? UFFDIO_REGISTER_MODE_MINOR : 0);
    if (mode === 0) throw invalid(op, "no mode chosen: set at least one of missing, wp, minor to true");
    this.#reg.clear().set("start", range.start).set("len", range.len).set("mode", mode);
    this.#run(op, ioctl.UFFDIO_REGISTER, this.#reg);
    this.#record(range.start, range.start + range.len, mode);
    return { ioctls: ioctlNames(this.#reg.words[6], this.#reg.words[7]), ioctlBits: this.#reg.words[6] };
  }

  /**
   * Arms write tracking on `range` (dirty tracking): registers it in wp mode (and missing mode
   * too with `{ missing: true }`) and write-protects all of it (`UFFDIO_WRITEPROTECT` with
   * mode WP), so that `new PagemapScanner().scan(range, { reprotect: true })` then lists exactly
   * the pages written since, and re-protects them for the next scan. Needs a descriptor opened
   * with `WP_ASYNC`: the kernel lifts the protection of a page itself on its first write (no
   * event, no handler thread), and the scan sees which pages it lifted. Registering alone is
   * not enough: a page not write-protected yet (every page of a fresh range) scans as written.
   * Returns what {@link register} returns.
   *
   * @example
   * ```ts
   * import { Mapping, PagemapScanner, pageSize, Userfaultfd } from "@uffd/userfaultfd";
   * using uffd = Userfaultfd.open({ features: ["WP_ASYNC"] });
   * using mem = Mapping.anonymous(64 * pageSize);
   * uffd.trackWrites(mem);
   * using scanner = new PagemapScanner();
   * mem.bytes()[5 * pageSize] = 1; // WP_ASYNC: the kernel handles the write, no thread blocks
   * const written = scanner.scan(mem, { reprotect: true }); // [{ start: mem.page(5), end: mem.page(6), ... }]
   * if (written.length !== 1 || written[0].start !== mem.page(5)) throw new Error("unexpected scan");
   * ```
   */
  trackWrites(range: Range, options: { missing?: boolean } = {}): RegisterResult {
    const op = "trackWrites";
    this.#handshakeDone(op);
    checkRangeObject(op, range);
    checkOptions(op, options, ["missing"]);
    checkBoolean(op, "missing", options.missing);
    if (!this.has("WP_ASYNC")) {
      throw invalid(
        op,
        'needs feature WP_ASYNC: open with { features: ["WP_ASYNC"] } (the kernel then lifts write ' +
          "protection itself on a write, and PAGEMAP_SCAN reports the pages it lifted)",
      );
    }
    const result = this.register(range, { wp: true, missing: options.missing ?? false });
    this.writeprotect({ start: range.start, len: range.len, wp: true });
    return result;
  }

  #rangeOp(op: string, req: number, range: Range): void {
    this.#handshakeDone(op);
    checkRangeObject(op, range);
    checkNotClosed(op, range);
    this.#checkRange(op, range.start, range.len);
    this.#range.set("start", range.start).set("len", range.len);
    this.#run(op, req, this.#range);
  }

  /** `UFFDIO_UNREGISTER`: stop handling faults of `range` (blocked faulters are woken). */
  unregister(range: Range): void {
    this.#rangeOp("UFFDIO_UNREGISTER", ioctl.UFFDIO_UNREGISTER, range);
    this.#record(range.start, range.start + range.len, 0);
  }

  /** `UFFDIO_WAKE`: wake threads waiting on faults in `range`. */
  wake(range: Range): void {
    this.#rangeOp("UFFDIO_WAKE", ioctl.UFFDIO_WAKE, range);
  }

  /** `UFFDIO_COPY`: atomically copy `len` bytes from `src` into the missing pages at `start`. */
  copy(options: CopyOptions): number {
    const op = "UFFDIO_COPY";
    this.#handshakeDone(op);
    checkOptions(op, options, ["start", "len", "src", "dontwake", "wp"]);
    checkBoolean(op, "dontwake", options.dontwake);
    checkBoolean(op, "wp", options.wp);
    if (typeof options.src !== "number" && !ArrayBuffer.isView(options.src)) {
      throw invalid(
        op,
        "src must be an address (a number inside a library mapping) or the bytes to copy " +
          `(a Uint8Array or another ArrayBufferView) (got ${describeValue(options.src)})`,
      );
    }
    checkNotClosed(op, options, "dst");
    this.#checkRange(op, options.start, options.len, "dst");
    this.#checkRegistered(op, options.start, options.len, options.wp ? UFFDIO_REGISTER_MODE_WP : 0, "dst");
    let src: number;
    if (typeof options.src === "number") {
      if (!this.#remote && !findMapping(options.src, options.len)) {
        throw invalid(op, `src 0x${options.src.toString(16)}+${options.len} is not inside a library mapping`);
      }
      src = options.src;
    } else {
      if (options.src.byteLength < options.len) {
        throw invalid(op, `src holds ${options.src.byteLength} bytes, len is ${options.len}`);
      }
      src = libc.addressOf(options.src); // the kernel accepts an unaligned source
    }
    const mode = (options.dontwake ? UFFDIO_COPY_MODE_DONTWAKE : 0) | (options.wp ? UFFDIO_COPY_MODE_WP : 0);
    this.#copy.set("dst", options.start).set("src", src).set("len", options.len).set("mode", mode).set(
      "copy",
      0,
    );
    const held = options.src; // keep the source referenced until the kernel has read it
    const n = this.#runOn(op, ioctl.UFFDIO_COPY, this.#copy, "copy", options.start, options.len);
    void held;
    return n;
  }

  /** `UFFDIO_ZEROPAGE`: map zero pages over `range`. */
  zeropage(options: DontwakeRange): number {
    const op = "UFFDIO_ZEROPAGE";
    this.#handshakeDone(op);
    checkOptions(op, options, ["start", "len", "dontwake"]);
    checkBoolean(op, "dontwake", options.dontwake);
    checkNotClosed(op, options);
    this.#checkRange(op, options.start, options.len);
    this.#checkRegistered(op, options.start, options.len);
    this.#zero.set("start", options.start).set("len", options.len)
      .set("mode", options.dontwake ? UFFDIO_ZEROPAGE_MODE_DONTWAKE : 0).set("zeropage", 0);
    return this.#runOn(op, ioctl.UFFDIO_ZEROPAGE, this.#zero, "zeropage", options.start, options.len);
  }

  /** `UFFDIO_WRITEPROTECT`: set (`wp: true`) or clear write protection on `range`. */
  writeprotect(options: WriteprotectOptions): void {
    const op = "UFFDIO_WRITEPROTECT";
    this.#handshakeDone(op);
    checkOptions(op, options, ["start", "len", "wp", "dontwake"]);
    if (typeof options.wp !== "boolean") {
      throw invalid(
        op,
        `wp must be a boolean, true (protect) or false (unprotect) (got ${describeValue(options.wp)})`,
      );
    }
    checkBoolean(op, "dontwake", options.dontwake);
    checkNotClosed(op, options);
    this.#checkRange(op, options.start, options.len);
    this.#checkRegistered(op, options.start, options.len, UFFDIO_REGISTER_MODE_WP);
    const mode = (options.wp ? UFFDIO_WRITEPROTECT_MODE_WP : 0) |
      (options.dontwake ? UFFDIO_WRITEPROTECT_MODE_DONTWAKE : 0);
    this.#wp.set("start", options.start).set("len", options.len).set("mode", mode);
    this.#run(op, ioctl.UFFDIO_WRITEPROTECT, this.#wp);
  }

  /** `UFFDIO_CONTINUE`: map the page-cache pages already present for a minor fault. */
  continue(options: ContinueOptions): number {
    const op = "UFFDIO_CONTINUE";
    this.#handshakeDone(op);
    checkOptions(op, options, ["start", "len", "dontwake", "wp"]);
    checkBoolean(op, "dontwake", options.dontwake);
    checkBoolean(op, "wp", options.wp);
    checkNotClosed(op, options);
    this.#checkRange(op, options.start, options.len);
    this.#checkRegistered(op, options.start, options.len, options.wp ? UFFDIO_REGISTER_MODE_WP : 0);
    const mode = (options.dontwake ? UFFDIO_CONTINUE_MODE_DONTWAKE : 0) |
      (options.wp ? UFFDIO_CONTINUE_MODE_WP : 0);
    this.#cont.set("start", options.start).set("len", options.len).set("mode", mode).set("mapped", 0);
    return this.#runOn(op, ioctl.UFFDIO_CONTINUE, this.#cont, "mapped", options.start, options.len);
  }

  /** `UFFDIO_POISON`: mark `range` poisoned; touching it raises SIGBUS. Needs feature POISON. */
  poison(options: DontwakeRange): number {
    const op = "UFFDIO_POISON";
    this.#handshakeDone(op);
    checkOptions(op, options, ["start", "len", "dontwake"]);
    checkBoolean(op, "dontwake", options.dontwake);
    this.#need(op, "POISON");
    checkNotClosed(op, options);
    this.#checkRange(op, options.start, options.len);
    this.#checkRegistered(op, options.start, options.len);
    this.#poison.set("start", options.start).set("len", options.len)
      .set("mode", options.dontwake ? UFFDIO_POISON_MODE_DONTWAKE : 0).set("updated", 0);
    return this.#runOn(op, ioctl.UFFDIO_POISON, this.#poison, "updated", options.start, options.len);
  }

  /** `UFFDIO_MOVE`: remap pages from `src` to `start` without copying. Needs feature MOVE. */
  move(options: MoveOptions): number {
    const op = "UFFDIO_MOVE";
    this.#handshakeDone(op);
    checkOptions(op, options, ["start", "len", "src", "dontwake", "allowSrcHoles"]);
    checkBoolean(op, "dontwake", options.dontwake);
    checkBoolean(op, "allowSrcHoles", options.allowSrcHoles);
    this.#need(op, "MOVE");
    if (this.#remote) {
      throw invalid(
        op,
        "the kernel moves no pages of another process (no cross-mm UFFDIO_MOVE): " +
          "call move() in the process that owns the memory, or use copy()",
      );
    }
    checkNotClosed(op, options, "dst");
    this.#checkRange(op, options.start, options.len, "dst");
    this.#checkRange(op, options.src, options.len, "src");
    this.#checkRegistered(op, options.start, options.len, 0, "dst");
    const mode = (options.dontwake ? UFFDIO_MOVE_MODE_DONTWAKE : 0) |
      (options.allowSrcHoles ? UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES : 0);
    this.#move.set("dst", options.start).set("src", options.src).set("len", options.len).set("mode", mode)
      .set("move", 0);
    return this.#run(op, ioctl.UFFDIO_MOVE, this.#move, "move");
  }

  /** Waits up to `timeout` ms for the descriptor to be readable. */
  #waitReadable(timeout: number): boolean {
    this.#pollfd[0] = this.#fd;
    this.#pollfd[1] = POLLIN;
    for (;;) {
      const r = libc.poll(this.#pollfd, 1, timeout);
      // A blocking (or not yet handshaken) userfaultfd always polls as POLLERR (8), so poll
      // cannot wait on it and a read would block regardless of the timeout.
      if (r > 0 && (this.#pollfd[1] >>> 16) & 8) {
        throw invalid(
          "read",
          "poll(2) cannot wait on a blocking userfaultfd (it always reports POLLERR): " +
            "open with { nonBlocking: true } to read with a timeout or iterate events()",
        );
      }
      if (r >= 0) return r > 0;
      const e = libc.errno();
      if (e !== ERRNO.EINTR) throw new UffdError("poll", e);
    }
  }

  /**
   * Reads up to `buf.capacity` messages with one `read()`. Returns how many were
   * read (0 on timeout, or when non-blocking and none are pending).
   *
   * The thread that reads must not touch the registered memory itself: its fault would wait
   * for a read that only it would do, and it hangs forever (the library cannot see it happen
   * from a blocked thread; {@link events} on a `THREAD_ID` descriptor can). Touch the memory
   * from a Worker or another process, or read in a Worker.
   */
  readEvents(buf: EventBuffer, options: ReadOptions = {}): number {
    this.#checkOpen("read");
    if (!(buf instanceof EventBuffer)) {
      throw invalid("read", `buf must be an EventBuffer (new EventBuffer(16)) (got ${describeValue(buf)})`);
    }
    checkOptions("read", options, ["timeout"]);
    checkTimeout("read", "timeout", options.timeout, "omit it to block");
    buf.count = 0;
    if (options.timeout !== undefined && !this.#waitReadable(Math.ceil(options.timeout))) return 0;
    for (;;) {
      const n = libc.read(this.#fd, buf.bytes, buf.bytes.byteLength);
      if (n >= 0) return this.#took(buf, Math.floor(n / 32));
      const e = libc.errno();
      if (e === ERRNO.EAGAIN) return 0;
      if (e !== ERRNO.EINTR) throw new UffdError("read", e);
    }
  }

  /** Sets `buf.count` to the `n` messages now in it and wraps fork events' child descriptors. */
  #took(buf: EventBuffer, n: number): number {
    buf.count = n;
    if (buf.forks.length !== 0) buf.forks.length = 0; // a store to length is a runtime call in V8
    for (let i = 0; i < n; i++) {
      if (buf.bytes[i * 32] === UFFD_EVENT.FORK) {
        const ufd = new Uint32Array(buf.bytes.buffer, buf.bytes.byteOffset + i * 32 + 8, 1)[0];
        // The child is always another process: its ranges are not this process's mappings.
        buf.forks[i] = Userfaultfd.fromFd(ufd, this.#features, { remote: true });
      }
    }
    return n;
  }

  /**
   * Reads one event; `undefined` on timeout or when non-blocking and none is pending. As with
   * {@link readEvents}, the reading thread must not touch the registered memory itself (it
   * would hang, waiting for itself).
   */
  readEvent(options: ReadOptions = {}): UffdEvent | undefined {
    const buf = new EventBuffer(1);
    return this.readEvents(buf, options) ? buf.event(0) : undefined;
  }

  /**
   * Events as an async iterator that never blocks the event loop: a Worker waits in
   * poll() and this thread reads. Ends on `signal` abort or {@link close}.
   *
   * **The thread that iterates must never touch the memory it serves.** A fault there blocks
   * that thread in the kernel until someone resolves it, and the only one who would is the
   * blocked thread itself: it hangs forever. Touch registered memory from other threads (a
   * Worker, a child process), or iterate in a Worker. On a descriptor opened with `THREAD_ID`
   * the library catches it: when the iterating thread stays blocked for `selfFaultMs` (default
   * 1000) on a fault of this descriptor (a pagefault whose thread id is its own gettid()), the
   * Worker writes why on stderr and ends the process with status 70 instead of letting it hang
   * (no event can be returned, nor an error thrown, to a thread that cannot run). Without
   * `THREAD_ID` the library cannot tell whose fault it is, and the hang stays.
   *
   * @example
   * ```ts
   * // not run: a fragment (uffd, signal and the Worker that touches the memory come from the program around it; examples/manpage_demo.ts is a whole one, run by tests/examples.test.ts)
   * for await (const ev of uffd.events({ signal })) {
   *   if (ev.type === "pagefault") uffd.zeropage({ start: ev.address, len: pageSize });
   * }
   * ```
   */
  async *events(
    options: { signal?: AbortSignal; batch?: number; selfFaultMs?: number } = {},
  ): AsyncGenerator<UffdEvent> {
    this.#checkOpen("events");
    checkOptions("events", options, ["signal", "batch", "selfFaultMs"]);
    checkInteger("events", "batch", options.batch, 1);
    checkInteger("events", "selfFaultMs", options.selfFaultMs, 1);
    if (options.signal !== undefined && !(options.signal instanceof AbortSignal)) {
      throw invalid("events", `signal must be an AbortSignal (got ${describeValue(options.signal)})`);
    }
    const buf = new EventBuffer(options.batch ?? 16);
    const watcher = new FdWatcher(
      this.#fd,
      this.has("THREAD_ID") && !this.#remote
        ? { tid: libc.syscall(NR_gettid), graceMs: options.selfFaultMs ?? 1000 }
        : undefined,
    );
    this.#watchers.add(watcher);
    const onAbort = () => watcher.close();
    options.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      while (this.#fd >= 0 && !options.signal?.aborted) {
        // messages the watcher read while this thread was blocked elsewhere come first
        const stashed = watcher.takeStashed(buf.bytes);
        if (stashed > 0) this.#took(buf, stashed);
        if (stashed > 0 || this.readEvents(buf, { timeout: 0 }) > 0) {
          for (let i = 0; i < buf.count; i++) yield buf.event(i);
          continue;
        }
        if (!(await watcher.readable())) break;
      }
    } finally {
      options.signal?.removeEventListener("abort", onAbort);
      this.#watchers.delete(watcher);
      watcher.close();
    }
  }

  /** Whether the descriptor serves another process's memory (`fromFd(..., { remote: true })`, fork events). */
  get remote(): boolean {
    return this.#remote;
  }

  /** Whether reads on this descriptor do not block. */
  get nonBlocking(): boolean {
    return this.#nonBlocking;
  }

  /**
   * Closes the descriptor. Blocked faulters wake and the range behaves like
   * ordinary memory again (missing pages read as zeros). Safe to call twice.
   */
  close(): void {
    if (this.#fd < 0) return;
    for (const w of this.#watchers) w.close();
    this.#watchers.clear();
    libc.close(this.#fd);
    this.#fd = -1;
    this.#stopWatching?.();
    this.#stopWatching = undefined;
    this.#regs = [];
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Raw `ioctl` on any descriptor with a struct buffer, for cases the checked API
 * refuses on purpose (e.g. to observe the kernel's own EINVAL). Returns the ioctl
 * result and errno; nothing is checked.
 */
export function rawIoctl(fd: number, request: number, arg: Uint8Array): { result: number; errno: number } {
  const result = libc.ioctl(fd, request, arg);
  return { result, errno: result < 0 ? libc.errno() : 0 };
}
