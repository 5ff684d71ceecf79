/**
 * Capturing a program's own memory: a full snapshot of a {@link Mapping}, a
 * `WebAssembly.Memory` or a raw range of this process, then diff layers with only the pages
 * written since, found by the kernel's own bookkeeping (`UFFD_FEATURE_WP_ASYNC` registration and
 * `PAGEMAP_SCAN` with re-protect in the same call: no fault per write, no event).
 *
 * Consistency: memory may change while it is copied (other Workers write it). The copy is taken
 * while the range is write-tracked; after each pass the pages written during it are copied again,
 * until a pass finds none: the layer then equals the memory at that instant. Memory that keeps
 * changing for {@link MAX_PASSES} passes is rejected (a typed EAGAIN error), never torn silently.
 * @module
 */
import { existsSync, mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { libc } from "../../ffi/mod.ts";
import { ERRNO, invalid, UffdError } from "../errors.ts";
import { cstring, Mapping, pageSize as systemPageSize } from "../memory.ts";
import { PAGE_IS, PagemapScanner, type PageRegion } from "../pagemap.ts";
import { dataExtents, fileLength } from "../server/sources.ts";
import { Userfaultfd } from "../userfaultfd.ts";
import { layerDigests } from "./digest.ts";
import { type LayerInfo, MANIFEST, readManifest, type SnapshotManifest, writeManifest } from "./manifest.ts";

/** What can be snapshotted: a library mapping, a WebAssembly.Memory, or a range of this process. */
export type SnapshotTarget = Mapping | WebAssembly.Memory | { address: number; length: number };

/** Passes of copy-then-rescan before memory that keeps changing is rejected. */
export const MAX_PASSES = 8;
/** Default checksum chunk size: 1 MiB. */
export const DEFAULT_CHUNK = 1 << 20;

const NR_pwrite64 = 18;
const O_WRONLY = 1;
const O_CREAT = 0o100;
const O_TRUNC = 0o1000;
const O_CLOEXEC = 0o2000000;

/** The address and length a target has now (a WebAssembly.Memory's current length). */
export function targetRange(t: SnapshotTarget): { address: number; length: number } {
  if (t instanceof Mapping) return { address: t.address, length: t.length };
  if (t instanceof WebAssembly.Memory) {
    const b = t.buffer as ArrayBuffer;
    return { address: libc.addressOf(new Uint8Array(b, 0, 1)), length: b.byteLength };
  }
  if (t && Number.isSafeInteger(t.address) && Number.isSafeInteger(t.length)) return t;
  throw invalid("snapshot", "the target must be a Mapping, a WebAssembly.Memory or { address, length }");
}

function isZero(w: Int32Array, from: number, words: number): boolean {
  for (let i = from; i < from + words; i++) if (w[i] !== 0) return false;
  return true;
}

/** Writes [address + off, +len) of this process to the file at the same offset. */
function pwriteFrom(fd: number, address: number, off: number, len: number, path: string): void {
  for (let done = 0; done < len;) {
    const n = libc.syscall(NR_pwrite64, fd, address + off + done, len - done, off + done);
    if (n <= 0) throw new UffdError("pwrite", n < 0 ? libc.errno() : ERRNO.EIO, { detail: path });
    done += n;
  }
}

function createFile(path: string, length: number): number {
  const fd = libc.open(cstring(path), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644);
  if (fd < 0) throw new UffdError("open", libc.errno(), { detail: `cannot create ${path}` });
  if (libc.ftruncate(fd, length) !== 0) {
    const e = libc.errno();
    libc.close(fd);
    throw new UffdError("ftruncate", e, { detail: path });
  }
  return fd;
}

/** Digests and page count of a written layer file (read back: what is on disk is what is checked). */
function describe(path: string, chunkSize: number, kind: LayerInfo["kind"], file: string): LayerInfo {
  const m = Mapping.file(path);
  try {
    const length = fileLength(m.fd);
    const extents = dataExtents(m.fd, length);
    let pages = 0;
    for (const [s, e] of extents) pages += Math.ceil(e / systemPageSize) - Math.floor(s / systemPageSize);
    return {
      file,
      kind,
      pages,
      length,
      createdAt: new Date().toISOString(),
      sha256: layerDigests(m.bytes(), extents, length, chunkSize),
    };
  } finally {
    m.close();
  }
}

/** Options of {@link DirtyTracker.start} and {@link snapshot}. */
export interface TrackOptions {
  /** Checksum chunk size in bytes (default 1 MiB). */
  chunkSize?: number;
  /** Replace a snapshot already in the directory (default false: an error). */
  overwrite?: boolean;
}

/**
 * Write tracking of one range of this process, and the snapshots it makes: {@link snapshot}
 * writes the full base layer, {@link diff} each next layer with only the pages written since.
 *
 * @example
 * ```ts
 * // not run: writes a snapshot directory
 * const memory = new WebAssembly.Memory({ initial: 16 });
 * using tracker = DirtyTracker.start(memory);
 * tracker.snapshot("snap");            // base.mem + manifest.json
 * new Uint8Array(memory.buffer)[5] = 1;
 * tracker.diff("snap");                // diff-1.mem: the one page written
 * ```
 */
export class DirtyTracker {
  readonly #target: SnapshotTarget;
  readonly #uffd: Userfaultfd;
  readonly #scan = new PagemapScanner(4096);
  #mappings: Mapping[] = [];
  /** The tracked pieces (the first length, then each growth): a scan covers one mapping at a time. */
  #pieces: { start: number; len: number }[] = [];
  #tracked = 0;
  readonly #address: number;
  readonly #chunkSize: number;
  /** Pages reported written by a scan whose layer was not completed: they go into the next one. */
  #pending: PageRegion[] = [];
  #closed = false;

  private constructor(target: SnapshotTarget, options: TrackOptions) {
    this.#target = target;
    this.#chunkSize = options.chunkSize ?? DEFAULT_CHUNK;
    if (
      !Number.isSafeInteger(this.#chunkSize) || this.#chunkSize % systemPageSize !== 0 || this.#chunkSize <= 0
    ) {
      throw invalid(
        "snapshot",
        `chunkSize must be a positive multiple of ${systemPageSize} (got ${this.#chunkSize})`,
      );
    }
    const { address } = targetRange(target);
    this.#address = address;
    const probe = Userfaultfd.probe();
    for (const f of ["WP_ASYNC", "WP_UNPOPULATED"] as const) {
      if (!probe.features.includes(f)) {
        throw invalid(
          "snapshot",
          `this kernel has no UFFD_FEATURE_${f} (Linux 6.7+): dirty tracking, and consistent capture, need it`,
          "EOPNOTSUPP",
        );
      }
    }
    this.#uffd = Userfaultfd.open({ features: ["WP_ASYNC", "WP_UNPOPULATED"] });
    try {
      this.#grow();
    } catch (e) {
      this.close();
      throw e;
    }
  }

  /** Starts tracking writes to the target (a WebAssembly.Memory is covered as it grows). */
  static start(target: SnapshotTarget, options: TrackOptions = {}): DirtyTracker {
    return new DirtyTracker(target, options);
  }

  /** The target's current length, bytes. */
  get length(): number {
    return targetRange(this.#target).length;
  }

  /**
   * Registers and write-protects the part of the target not tracked yet (all of it at first; the
   * grown part of a WebAssembly.Memory later). Returns that part, whose pages count as written.
   */
  #grow(): PageRegion | undefined {
    const { address, length } = targetRange(this.#target);
    if (address !== this.#address) {
      throw invalid(
        "snapshot",
        "the memory moved (a WebAssembly.Memory that could not grow in place)",
        "EFAULT",
      );
    }
    if (length <= this.#tracked) return undefined;
    const start = address + this.#tracked;
    const len = length - this.#tracked;
    const m = this.#target instanceof Mapping && this.#tracked === 0
      ? this.#target
      : Mapping.adopt(start, len);
    if (m !== this.#target) this.#mappings.push(m);
    try {
      this.#uffd.register({ start, len }, { wp: true });
    } catch (e) {
      if (e instanceof UffdError && e.code === "EBUSY") {
        throw new UffdError("snapshot", e.errno, {
          detail: "the memory is registered with another userfaultfd (a FaultServer still serving it?): " +
            "finish or close that first",
        });
      }
      throw e;
    }
    this.#uffd.writeprotect({ start, len, wp: true });
    this.#pieces.push({ start, len });
    const grown = { start, end: start + len, categories: PAGE_IS.WRITTEN };
    this.#tracked = length;
    return grown;
  }

  /** The pages written since the last layer (without resetting the tracking). */
  written(): PageRegion[] {
    this.#check();
    const grown = this.#grow();
    const out = [...this.#pending, ...this.#pieces.flatMap((r) => this.#scan.scan(r))];
    if (grown) this.#pending.push(grown);
    return grown ? [...out, grown] : out;
  }

  #check(): void {
    if (this.#closed) throw invalid("snapshot", "the tracker is closed", "EBADF");
  }

  /** Written pages since the last scan, re-protected in the same PAGEMAP_SCAN call. */
  #take(): PageRegion[] {
    return this.#pieces.flatMap((r) => this.#scan.scan(r, { reprotect: true, checkWpAsync: true }));
  }

  /**
   * Copies `regions` (or, for the base, every present page that is not zero) to the file, then
   * re-copies what was written meanwhile until a scan is clean. Returns the pages copied.
   */
  #copy(fd: number, path: string, first: PageRegion[] | "all"): void {
    const ps = systemPageSize;
    let todo: PageRegion[] = first === "all" ? this.#present() : first;
    for (let pass = 0;; pass++) {
      const w = new Int32Array(libc.view(this.#address, this.#tracked));
      for (const r of todo) {
        // In the base, zero pages stay holes; in a diff, written pages are written even when zero.
        let a = (r.start - this.#address) / ps;
        const b = (r.end - this.#address) / ps;
        while (a < b) {
          if (first === "all" && pass === 0 && isZero(w, (a * ps) / 4, ps / 4)) {
            a++;
            continue;
          }
          let e = a + 1;
          while (e < b && !(first === "all" && pass === 0 && isZero(w, (e * ps) / 4, ps / 4))) e++;
          pwriteFrom(fd, this.#address, a * ps, (e - a) * ps, path);
          a = e;
        }
      }
      const grown = this.#grow();
      todo = this.#take();
      if (grown) todo.push(grown);
      if (todo.length === 0) return;
      if (pass + 1 >= MAX_PASSES) {
        this.#pending.push(...todo);
        throw new UffdError("snapshot", ERRNO.EAGAIN, {
          source: "library",
          detail:
            `the memory kept changing during the copy (${MAX_PASSES} passes, still written): no layer ` +
            "was kept; pause the writers and try again",
        });
      }
    }
  }

  /** Present (or swapped) pages of the tracked range: only they can hold non-zero bytes. */
  #present(): PageRegion[] {
    return this.#pieces.flatMap((r) =>
      this.#scan.scan(r, {
        required: 0,
        anyOf: PAGE_IS.PRESENT | PAGE_IS.SWAPPED,
        report: PAGE_IS.PRESENT | PAGE_IS.SWAPPED,
      })
    );
  }

  /**
   * Writes the full base layer (`base.mem`, zero pages as holes) and a new manifest into `dir`,
   * consistent with the memory at one instant (see the module comment). Tracking goes on from
   * that instant: the next {@link diff} holds the pages written after it.
   */
  snapshot(dir: string, options: { overwrite?: boolean } = {}): SnapshotManifest {
    this.#check();
    mkdirSync(dir, { recursive: true });
    if (existsSync(join(dir, MANIFEST)) && !options.overwrite) {
      throw invalid(
        "snapshot",
        `${dir} already holds a snapshot; pass overwrite: true to replace it`,
        "EEXIST",
      );
    }
    this.#take(); // everything from here on is copied by this pass or tracked
    this.#pending = [];
    const path = join(dir, "base.mem");
    const fd = createFile(path, this.#tracked);
    try {
      this.#copy(fd, path, "all");
    } catch (e) {
      libc.close(fd);
      rmSync(path, { force: true });
      throw e;
    }
    libc.close(fd);
    const manifest: SnapshotManifest = {
      format: "uffd-snapshot",
      version: 1,
      pageSize: systemPageSize,
      length: this.#tracked,
      chunkSize: this.#chunkSize,
      layers: [describe(path, this.#chunkSize, "full", "base.mem")],
    };
    writeManifest(dir, manifest);
    return manifest;
  }

  /**
   * Writes the next diff layer (`diff-N.mem`) of the snapshot in `dir`: only the pages written
   * since the previous layer (zeros too), consistent at one instant; appends it to the manifest.
   */
  diff(dir: string): LayerInfo {
    this.#check();
    const manifest = readManifest(dir);
    const grown = this.#grow();
    const regions = [...this.#pending, ...this.#take(), ...(grown ? [grown] : [])];
    this.#pending = [];
    const file = `diff-${manifest.layers.length}.mem`;
    const path = join(dir, file);
    const fd = createFile(path, this.#tracked);
    try {
      this.#copy(fd, path, regions);
    } catch (e) {
      libc.close(fd);
      rmSync(path, { force: true });
      this.#pending.push(...regions);
      throw e;
    }
    libc.close(fd);
    const layer = describe(path, manifest.chunkSize, "diff", file);
    if (this.#tracked > manifest.length) {
      // A grown WebAssembly.Memory: every layer keeps the one layout (Firecracker's rule), so the
      // lower files grow by a hole (zeros, no data: their checksums gain empty chunks).
      for (const l of manifest.layers) {
        const lp = join(dir, l.file);
        const lfd = libc.open(cstring(lp), O_WRONLY | O_CLOEXEC, 0);
        if (lfd < 0 || libc.ftruncate(lfd, this.#tracked) !== 0) {
          const e = libc.errno();
          if (lfd >= 0) libc.close(lfd);
          throw new UffdError("ftruncate", e, { detail: `cannot extend ${lp} to the grown memory` });
        }
        libc.close(lfd);
        l.length = this.#tracked;
        while (l.sha256.length * manifest.chunkSize < this.#tracked) l.sha256.push(null);
      }
      manifest.length = this.#tracked;
    }
    manifest.layers.push(layer);
    writeManifest(dir, manifest);
    return layer;
  }

  /** Stops tracking (unregisters the range; the memory is untouched); safe twice. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#uffd?.close();
    this.#scan.close();
    for (const m of this.#mappings) m.close();
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * A full snapshot of `target` in `dir` (base.mem + manifest.json), consistent at one instant
 * (the memory is write-tracked during the copy; see the module comment).
 */
export function snapshot(target: SnapshotTarget, dir: string, options: TrackOptions = {}): SnapshotManifest {
  const t = DirtyTracker.start(target, options);
  try {
    return t.snapshot(dir, options);
  } finally {
    t.close();
  }
}
