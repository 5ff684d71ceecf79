/**
 * A snapshot directory: Firecracker's memory-file layout plus a small JSON manifest of ours.
 *
 * - `base.mem`: a raw memory file, page `i` at offset `i * pageSize`; zero pages are holes.
 * - `diff-N.mem`: a diff layer of the same layout, sparse: the pages written since the previous
 *   layer hold data (zeros too, when zeros were written), clean pages are holes.
 * - `manifest.json`: `{format, version, pageSize, length, chunkSize, layers: [{file, kind, pages,
 *   length, createdAt, sha256: [per chunk, null where no data]}]}`, bottom layer first.
 *
 * Firecracker's tools work on the files unchanged (`uffd firecracker --mem-file base.mem --layer
 * diff-1.mem`), and Firecracker's own files can be described by a manifest.
 * @module
 */
import { existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { invalid, type UffdError } from "../errors.ts";
import type { ChunkDigests } from "./digest.ts";

/** One layer of a snapshot. */
export interface LayerInfo {
  /** File name inside the snapshot directory. */
  file: string;
  /** `"full"` for the base (every page), `"diff"` for the pages written since the layer below. */
  kind: "full" | "diff";
  /** Data pages in the file (for a diff: the pages written). */
  pages: number;
  /** File length in bytes. */
  length: number;
  /** When it was taken (ISO 8601). */
  createdAt: string;
  /** SHA-256 of each chunk's data (see digest.ts), null where the chunk holds no data. */
  sha256: ChunkDigests;
}

/** The manifest of a snapshot directory. */
export interface SnapshotManifest {
  /** Always `"uffd-snapshot"`. */
  format: "uffd-snapshot";
  /** Manifest version (1). */
  version: 1;
  /** Page size of the memory, bytes. */
  pageSize: number;
  /** Length of the memory, bytes (the newest layer's). */
  length: number;
  /** Checksum chunk size, bytes. */
  chunkSize: number;
  /** The layer chain, bottom (the full base) first. */
  layers: LayerInfo[];
}

/** The manifest's file name. */
export const MANIFEST = "manifest.json";

function bad(dir: string, detail: string): UffdError {
  return invalid("snapshot", `${join(dir, MANIFEST)}: ${detail}`, "EBADMSG");
}

/** Reads and checks a snapshot directory's manifest. */
export function readManifest(dir: string): SnapshotManifest {
  const path = join(dir, MANIFEST);
  if (!existsSync(path)) {
    throw invalid("snapshot", `${dir} is not a snapshot directory (no ${MANIFEST})`, "ENOENT");
  }
  let m: SnapshotManifest;
  try {
    m = JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    throw bad(dir, `not JSON (${e instanceof Error ? e.message : e})`);
  }
  if (!m || m.format !== "uffd-snapshot") {
    throw bad(dir, 'not a snapshot manifest (no "format": "uffd-snapshot")');
  }
  if (m.version !== 1) throw bad(dir, `unsupported version ${JSON.stringify(m.version)}`);
  const pos = (x: unknown): boolean => Number.isSafeInteger(x) && (x as number) > 0;
  if (!pos(m.pageSize) || !pos(m.length) || !pos(m.chunkSize) || m.length % m.pageSize !== 0) {
    throw bad(
      dir,
      "pageSize, length and chunkSize must be positive integers, length a whole number of pages",
    );
  }
  if (!Array.isArray(m.layers) || m.layers.length === 0 || m.layers[0]?.kind !== "full") {
    throw bad(dir, "layers must start with the full base layer");
  }
  for (const [i, l] of m.layers.entries()) {
    if (!l || typeof l.file !== "string" || l.file.includes("/") || !Array.isArray(l.sha256)) {
      throw bad(dir, `layer ${i}: needs a file name in the directory and its sha256 list`);
    }
    if (i > 0 && l.kind !== "diff") throw bad(dir, `layer ${i}: only the first layer is full`);
  }
  return m;
}

/** Writes the manifest atomically (a temporary file renamed over the old one). */
export function writeManifest(dir: string, m: SnapshotManifest): void {
  const tmp = join(dir, `${MANIFEST}.tmp`);
  writeFileSync(tmp, JSON.stringify(m, null, 1) + "\n");
  renameSync(tmp, join(dir, MANIFEST));
}

/** The layer files of a manifest, as paths, bottom first. */
export function layerPaths(dir: string, m: SnapshotManifest): string[] {
  return m.layers.map((l) => join(dir, l.file));
}
