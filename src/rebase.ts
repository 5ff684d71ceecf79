/**
 * Merging snapshot layers into one memory file, as Firecracker's
 * `snapshot-editor edit-memory rebase` does: each diff layer's data extents (found with
 * SEEK_DATA/SEEK_HOLE: its written pages, zeros included) are copied onto the base, bottom layer
 * first; holes are left alone. The result restores the same bytes as the layered chain.
 * @module
 */
import { libc } from "../ffi/mod.ts";
import { invalid, UffdError } from "./errors.ts";
import { cstring } from "./memory.ts";
import { dataExtents, fileLength } from "./server/sources.ts";

const NR_pread64 = 17;
const NR_pwrite64 = 18;
const O_RDONLY = 0;
const O_WRONLY = 1;
const O_CREAT = 0o100;
const O_TRUNC = 0o1000;
const O_CLOEXEC = 0o2000000;
const CHUNK = 1 << 20;

/** What {@link rebaseSnapshot} did. */
export interface RebaseResult {
  /** The merged file. */
  out: string;
  /** Its length, bytes (the base's). */
  length: number;
  /** Bytes copied from the layers. */
  layerBytes: number;
  /** Data extents copied from the layers. */
  extents: number;
}

function openOrThrow(path: string, flags: number, what: string): number {
  const fd = libc.open(cstring(path), flags | O_CLOEXEC, 0o644);
  if (fd < 0) throw new UffdError("open", libc.errno(), { detail: `cannot open ${what} ${path}` });
  return fd;
}

/** Copies [start, end) of `src` to the same offsets of `dst`, through a held buffer. */
function copyRange(
  src: number,
  dst: number,
  start: number,
  end: number,
  buf: Uint8Array,
  path: string,
): void {
  const addr = libc.addressOf(buf);
  for (let off = start; off < end;) {
    const n = libc.syscall(NR_pread64, src, addr, Math.min(CHUNK, end - off), off);
    if (n <= 0) {
      throw new UffdError("pread", n < 0 ? libc.errno() : 5, { detail: `reading ${path} at ${off}` });
    }
    for (let w = 0; w < n;) {
      const m = libc.syscall(NR_pwrite64, dst, addr + w, n - w, off + w);
      if (m <= 0) throw new UffdError("pwrite", libc.errno(), { detail: `writing at ${off + w}` });
      w += m;
    }
    off += n;
  }
}

/**
 * Merges `layers` (bottom first) onto the memory file `base`: in place, or into `out` (a sparse
 * copy of the base, then the layers). A layer longer than the base is a typed error.
 */
export function rebaseSnapshot(base: string, layers: string[], out?: string): RebaseResult {
  if (!Array.isArray(layers) || layers.length === 0) {
    throw invalid("rebase", "give at least one layer to merge onto the base");
  }
  const buf = new Uint8Array(CHUNK);
  const baseFd = openOrThrow(base, out === undefined ? O_WRONLY : O_RDONLY, "the memory file");
  let dst = baseFd;
  const result: RebaseResult = { out: out ?? base, length: 0, layerBytes: 0, extents: 0 };
  try {
    result.length = fileLength(baseFd);
    if (out !== undefined) {
      dst = openOrThrow(out, O_WRONLY | O_CREAT | O_TRUNC, "the output");
      if (libc.ftruncate(dst, result.length) !== 0) {
        throw new UffdError("ftruncate", libc.errno(), { detail: out });
      }
      for (const [s, e] of dataExtents(baseFd, result.length)) copyRange(baseFd, dst, s, e, buf, base);
    }
    for (const layer of layers) {
      const fd = openOrThrow(layer, O_RDONLY, "the layer");
      try {
        const len = fileLength(fd);
        if (len > result.length) {
          throw invalid(
            "rebase",
            `layer ${layer} holds ${len} bytes, more than the memory file (${result.length})`,
          );
        }
        for (const [s, e] of dataExtents(fd, len)) {
          copyRange(fd, dst, s, e, buf, layer);
          result.layerBytes += e - s;
          result.extents++;
        }
      } finally {
        libc.close(fd);
      }
    }
  } finally {
    if (dst !== baseFd) libc.close(dst);
    libc.close(baseFd);
  }
  return result;
}
