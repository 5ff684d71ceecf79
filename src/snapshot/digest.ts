/**
 * Integrity of snapshot layers: one SHA-256 per chunk of a layer file, over the layer's data in
 * that chunk. For each data extent (SEEK_DATA/SEEK_HOLE) that meets the chunk, clipped to it,
 * the digest takes its start and end offsets (u64 little-endian) and then its bytes, in file
 * order; a chunk with no data has no digest. Holes cost nothing, so a sparse diff is hashed in
 * time proportional to its written pages, and a page that moved, vanished (a hole where data
 * was) or changed makes its chunk fail.
 * @module
 */
import { createHash } from "node:crypto";

/** Chunk digests of one layer: hex SHA-256 per chunk, `null` for a chunk without data. */
export type ChunkDigests = (string | null)[];

/**
 * The digest of chunk `c` (of `chunkSize` bytes) from `bytes` (the layer's bytes from offset 0,
 * e.g. a view of its read-only mapping) and its sorted extents as [start, end) pairs; undefined
 * when the chunk holds no data.
 */
export function chunkDigest(
  bytes: Uint8Array,
  extents: ArrayLike<number>,
  chunkSize: number,
  c: number,
): Uint8Array | undefined {
  const lo = c * chunkSize;
  const hi = lo + chunkSize;
  // First extent that ends after lo (extents are sorted and disjoint).
  let a = 0;
  let b = extents.length / 2;
  while (a < b) {
    const m = (a + b) >> 1;
    if (extents[2 * m + 1] <= lo) a = m + 1;
    else b = m;
  }
  let h: ReturnType<typeof createHash> | undefined;
  const pos = new DataView(new ArrayBuffer(16));
  for (let i = a; i < extents.length / 2 && extents[2 * i] < hi; i++) {
    const s = Math.max(lo, extents[2 * i]);
    const e = Math.min(hi, extents[2 * i + 1]);
    if (e <= s) continue;
    h ??= createHash("sha256");
    pos.setUint32(0, s % 4294967296, true);
    pos.setUint32(4, Math.floor(s / 4294967296), true);
    pos.setUint32(8, e % 4294967296, true);
    pos.setUint32(12, Math.floor(e / 4294967296), true);
    h.update(new Uint8Array(pos.buffer));
    h.update(bytes.subarray(s, e));
  }
  return h ? new Uint8Array(h.digest()) : undefined;
}

/** Every chunk's digest of a layer of `length` bytes, as hex (null for chunks without data). */
export function layerDigests(
  bytes: Uint8Array,
  extents: Array<[number, number]>,
  length: number,
  chunkSize: number,
): ChunkDigests {
  const flat = extents.flat();
  const out: ChunkDigests = [];
  for (let c = 0; c * chunkSize < length; c++) {
    const d = chunkDigest(bytes, flat, chunkSize, c);
    out.push(d ? toHex(d) : null);
  }
  return out;
}

/** Hex of bytes. */
export function toHex(b: Uint8Array): string {
  let s = "";
  for (const x of b) s += x.toString(16).padStart(2, "0");
  return s;
}

/** Bytes of hex (64 characters for a SHA-256). */
export function fromHex(s: string): Uint8Array {
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}
