/**
 * Restoring a snapshot directory into memory of this process: lazily (a {@link FaultServer} over
 * the target serves each page on first touch from the topmost layer that has it; the kernel copies
 * from the mapped layer files), with optional record and prefetch of the working set and a
 * background install of the rest; or eagerly (the layers read into the memory). Also `inspect`
 * and `rebase` of a snapshot directory.
 * @module
 */
import { rmSync } from "node:fs";
import { join } from "node:path";
import { libc } from "../../ffi/mod.ts";
import { ERRNO, invalid, UffdError } from "../errors.ts";
import { cstring, Mapping, pageSize as systemPageSize } from "../memory.ts";
import { rebaseSnapshot } from "../rebase.ts";
import { FaultServer } from "../server/fault_server.ts";
import { dataExtents, fileLength, type SnapshotChecksums } from "../server/sources.ts";
import type { WorkingSet } from "../server/working_set.ts";
import { chunkDigest, layerDigests, toHex } from "./digest.ts";
import { layerPaths, readManifest, type SnapshotManifest, writeManifest } from "./manifest.ts";
import { targetRange } from "./capture.ts";

const NR_pread64 = 17;

/**
 * Options of {@link restore}. A lazy restore starts the server's threads (tens of milliseconds
 * in Bun, 150-190 in Deno here) unless `FaultServer.warm()` ran a while before.
 */
export interface RestoreOptions {
  /**
   * Restore into this memory (a fresh `WebAssembly.Memory` or a Mapping of at least the snapshot's
   * length; its current pages are dropped first). Default: a new anonymous Mapping.
   */
  into?: Mapping | WebAssembly.Memory;
  /** Read every layer into the memory now instead of serving faults (default false). */
  eager?: boolean;
  /** Check the chunk checksums when a page's chunk is first used (`"fault"`, default), all at `"open"`, or `"none"`. */
  verify?: "fault" | "open" | "none";
  /** Readahead of the lazy server (default `"adaptive"`). */
  readahead?: number | "adaptive" | { min?: number; max?: number };
  /** A working set to install first (lazy only). */
  prefetch?: WorkingSet;
  /** Record the working set (lazy only; read it with `server.workingSet()`). */
  record?: boolean;
  /**
   * After the prefetch (if any), install every other page in the background, demand faults first
   * (post-copy): `complete()` then resolves once all are in. Default false.
   */
  background?: boolean;
}

/** Memory being restored (lazily), or restored (eagerly). */
export interface RestoredMemory {
  /** The target: the `into` memory, or the new Mapping. */
  memory: Mapping | WebAssembly.Memory;
  /** Its address. */
  address: number;
  /** Snapshot length, bytes. */
  length: number;
  /** The fault server of a lazy restore (counters, working set), undefined for an eager one. */
  server: FaultServer | undefined;
  /** The manifest restored from. */
  manifest: SnapshotManifest;
  /**
   * Installs every page not yet placed (waits for the background install, or reads the rest eagerly
   * through the server) and stops the server: the memory is then ordinary memory.
   */
  complete(): Promise<void>;
  /**
   * Stops serving. Pages never placed are poisoned (a later touch is SIGBUS, never silent zeros):
   * call {@link complete} first to keep using the memory. A `WebAssembly.Memory` left with
   * poisoned pages is kept alive for the life of the process (a runtime's collector touching it
   * when freeing it would die of SIGBUS).
   */
  close(): void;
}

function checksums(m: SnapshotManifest, when: "fault" | "open"): SnapshotChecksums {
  return { chunkSize: m.chunkSize, files: m.layers.map((l) => l.sha256), when };
}

/** Reads [off, end) of a file into memory at the same offset from `address`. */
function preadInto(fd: number, address: number, off: number, end: number, path: string): void {
  for (let o = off; o < end;) {
    const n = libc.syscall(NR_pread64, fd, address + o, end - o, o);
    if (n <= 0) {
      throw new UffdError("pread", n < 0 ? libc.errno() : ERRNO.EIO, { detail: `reading ${path} at ${o}` });
    }
    o += n;
  }
}

/** Restores the snapshot in `dir` (see {@link RestoreOptions}). */
export async function restore(dir: string, options: RestoreOptions = {}): Promise<RestoredMemory> {
  const m = readManifest(dir);
  const paths = layerPaths(dir, m);
  let memory: Mapping | WebAssembly.Memory;
  let owned: Mapping | undefined;
  let range: { address: number; length: number };
  if (options.into !== undefined) {
    memory = options.into;
    range = targetRange(memory);
    if (range.length < m.length) {
      throw invalid(
        "restore",
        `the target holds ${range.length} bytes, the snapshot ${m.length}: restore into memory at least that large` +
          (memory instanceof WebAssembly.Memory
            ? ` (grow it to ${Math.ceil(m.length / 65536)} wasm pages first)`
            : ""),
        "ENOSPC",
      );
    }
  } else {
    owned = Mapping.anonymous(m.length);
    memory = owned;
    range = { address: owned.address, length: owned.length };
  }
  const adopted = memory instanceof Mapping ? undefined : Mapping.adopt(range.address, m.length);
  const target = memory instanceof Mapping ? memory : adopted!;
  // Old contents must not survive: a present page would be kept by the kernel (EEXIST).
  libc.madvise(range.address, m.length, 4 /* MADV_DONTNEED */);
  const verify = options.verify ?? "fault";
  const release = (): void => {
    adopted?.close();
  };
  if (options.eager) {
    try {
      if (verify !== "none") verifyAll(m, paths);
      for (const p of paths) {
        const fd = libc.open(cstring(p), 0o2000000, 0);
        if (fd < 0) throw new UffdError("open", libc.errno(), { detail: `cannot open ${p}` });
        try {
          for (const [s, e] of dataExtents(fd, Math.min(fileLength(fd), m.length))) {
            preadInto(fd, range.address, s, e, p);
          }
        } finally {
          libc.close(fd);
        }
      }
    } finally {
      release();
    }
    return {
      memory,
      address: range.address,
      length: m.length,
      server: undefined,
      manifest: m,
      complete: () => Promise.resolve(),
      close: () => {},
    };
  }
  let server: FaultServer;
  try {
    const pages = m.length / systemPageSize;
    const prefetch = options.background
      ? {
        pageSize: systemPageSize,
        runs: [...(options.prefetch?.runs ?? []), [0, pages] as [number, number]],
      }
      : options.prefetch;
    server = await FaultServer.start({
      source: {
        kind: "snapshot",
        path: paths[0],
        layers: paths.slice(1),
        ...(verify === "none" ? {} : { checksums: checksums(m, verify) }),
      },
      mapping: target,
      readahead: options.readahead ?? "adaptive",
      prefetch,
      record: options.record,
    });
  } catch (e) {
    release();
    throw e;
  }
  let done = false;
  const stop = (): void => {
    if (done) return;
    done = true;
    server.close();
    release();
    // Poisoned pages of a WebAssembly.Memory would kill the process when the runtime's collector
    // frees it (Bun touches the first page then: SIGBUS): such a memory is kept alive for good.
    if (memory instanceof WebAssembly.Memory && server.stats.poisoned > 0) keptAlive.add(memory);
  };
  return {
    memory,
    address: range.address,
    length: m.length,
    server,
    manifest: m,
    complete: async () => {
      if (done) return;
      if (options.background) {
        while (server.stats.prefetchMs === 0 && server.state === "running") {
          await new Promise((r) => setTimeout(r, 2));
        }
      } else {
        await touchAll(range.address, m.length);
      }
      stop();
    },
    close: stop,
  };
}

/** WebAssembly memories closed with poisoned pages: never collected (see `close()`). */
const keptAlive = new Set<WebAssembly.Memory>();

/**
 * Faults in every page from a Worker, so that `complete()` does not block the event loop (the
 * main thread may touch served memory: the server runs on its own thread).
 */
async function touchAll(address: number, length: number): Promise<void> {
  const w = new Worker(new URL("./touch_worker.ts", import.meta.url), { type: "module" });
  try {
    await new Promise<void>((resolve, reject) => {
      w.onmessage = () => resolve();
      w.onerror = (e) => reject(new Error(e.message));
      w.postMessage({ address, length, step: systemPageSize });
    });
  } finally {
    w.terminate();
  }
}

/** Checks every chunk of every layer against the manifest; a typed EBADMSG error on the first mismatch. */
export function verifyAll(m: SnapshotManifest, paths: string[]): void {
  paths.forEach((p, k) => {
    const map = Mapping.file(p);
    try {
      const len = fileLength(map.fd);
      const flat = dataExtents(map.fd, len).flat();
      const bytes = map.bytes();
      for (let c = 0; c * m.chunkSize < len; c++) {
        const d = chunkDigest(bytes, flat, m.chunkSize, c);
        if ((d ? toHex(d) : null) !== (m.layers[k].sha256[c] ?? null)) {
          throw new UffdError("restore", ERRNO.EBADMSG, {
            source: "library",
            detail:
              `checksum mismatch: ${p} bytes [${c * m.chunkSize}, ${(c + 1) * m.chunkSize}) do not match ` +
              "the manifest (the file was changed or damaged after the snapshot)",
          });
        }
      }
    } finally {
      map.close();
    }
  });
}

/** One layer in {@link inspectSnapshot}'s report. */
export interface LayerReport {
  /** File name. */
  file: string;
  /** full or diff. */
  kind: "full" | "diff";
  /** File length, bytes. */
  length: number;
  /** Pages with data in the file (a diff's dirty pages). */
  dataPages: number;
  /** Pages that are holes in the file. */
  holePages: number;
  /** Pages this layer supplies in the restored memory (it is the topmost with data there). */
  topPages: number;
  /** Chunks with a checksum. */
  checksummedChunks: number;
  /** When it was taken. */
  createdAt: string;
}

/** What {@link inspectSnapshot} reports. */
export interface SnapshotReport {
  /** The directory. */
  dir: string;
  /** Page size, bytes. */
  pageSize: number;
  /** Memory length, bytes. */
  length: number;
  /** Pages of memory. */
  pages: number;
  /** Pages that read as zeros (a hole in every layer). */
  zeroPages: number;
  /** Checksum chunk size, bytes. */
  chunkSize: number;
  /** The layers, bottom first. */
  layers: LayerReport[];
  /** Bytes on disk of all layers (allocated data). */
  dataBytes: number;
}

/** Layers, pages, dirty counts, holes and sizes of a snapshot directory. */
export function inspectSnapshot(dir: string): SnapshotReport {
  const m = readManifest(dir);
  const ps = m.pageSize;
  const pages = m.length / ps;
  const top = new Uint8Array(pages); // 0 zero, k = layer k - 1
  const layers: LayerReport[] = layerPaths(dir, m).map((p, k) => {
    const fd = libc.open(cstring(p), 0o2000000, 0);
    if (fd < 0) {
      throw new UffdError("open", libc.errno(), { detail: `cannot open ${p} (listed in the manifest)` });
    }
    try {
      const length = fileLength(fd);
      let data = 0;
      for (const [s, e] of dataExtents(fd, length)) {
        const a = Math.floor(s / ps);
        const b = Math.min(pages, Math.ceil(e / ps));
        data += b - a;
        top.fill(k + 1, a, b);
      }
      const l = m.layers[k];
      return {
        file: l.file,
        kind: l.kind,
        length,
        dataPages: data,
        holePages: Math.ceil(length / ps) - data,
        topPages: 0,
        checksummedChunks: l.sha256.filter((d) => d !== null).length,
        createdAt: l.createdAt,
      };
    } finally {
      libc.close(fd);
    }
  });
  let zero = 0;
  for (const t of top) {
    if (t === 0) zero++;
    else layers[t - 1].topPages++;
  }
  return {
    dir,
    pageSize: ps,
    length: m.length,
    pages,
    zeroPages: zero,
    chunkSize: m.chunkSize,
    layers,
    dataBytes: layers.reduce((n, l) => n + l.dataPages * ps, 0),
  };
}

/**
 * Merges the layer chain of a snapshot directory into one base (`base.mem`), checked against the
 * manifest first, and rewrites the manifest with that one layer; the diff files are removed.
 */
export function rebaseSnapshotDir(dir: string): SnapshotManifest {
  const m = readManifest(dir);
  if (m.layers.length === 1) return m;
  const paths = layerPaths(dir, m);
  verifyAll(m, paths);
  const tmp = join(dir, "base.mem.rebase");
  rebaseSnapshot(paths[0], paths.slice(1), tmp);
  const map = Mapping.file(tmp);
  let sha: (string | null)[];
  let length: number;
  let pagesWithData = 0;
  try {
    length = fileLength(map.fd);
    const ext = dataExtents(map.fd, length);
    for (const [s, e] of ext) pagesWithData += Math.ceil(e / m.pageSize) - Math.floor(s / m.pageSize);
    sha = layerDigests(map.bytes(), ext, length, m.chunkSize);
  } finally {
    map.close();
  }
  const base = join(dir, m.layers[0].file);
  const from = cstring(tmp);
  const to = cstring(base);
  const renamed = libc.syscall(82, /* rename */ libc.addressOf(from), libc.addressOf(to));
  if (renamed !== 0) throw new UffdError("rename", libc.errno(), { detail: `${tmp} -> ${base}` });
  const next: SnapshotManifest = {
    ...m,
    layers: [{
      ...m.layers[0],
      pages: pagesWithData,
      length,
      sha256: sha,
      createdAt: new Date().toISOString(),
    }],
  };
  writeManifest(dir, next);
  for (const p of paths.slice(1)) rmSync(p, { force: true });
  return next;
}
