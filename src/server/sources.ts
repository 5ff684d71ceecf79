/**
 * Page sources: what the caller names in {@link PageSource}, turned into what the serving
 * Worker needs ({@link SourceInit}). Two families cover every source:
 *
 * - address sources (`bytes`, `file`, `snapshot`, `zero`): the kernel copies straight from an
 *   address in this process (a SharedArrayBuffer, a read-only mapping of a file or of each
 *   layer of a snapshot), or places zeros. A layered snapshot is an address source whose
 *   address depends on the page: a one-byte-per-page table, built once from the files' data
 *   extents (SEEK_DATA/SEEK_HOLE), names the topmost layer holding each page.
 * - fill sources (`module`): code must produce the bytes first (a module's `fill`).
 *
 * `memfd` is neither: its pages are already in the page cache and are only mapped (CONTINUE).
 * @module
 */
import { envVar, libc } from "../../ffi/mod.ts";
import { invalid, UffdError } from "../errors.ts";
import { describeValue, showValue } from "../checks.ts";
import { alignedSharedBytes, Mapping, pageSize as systemPageSize } from "../memory.ts";
import { CHUNK, type SourceInit, type VerifyInit } from "./layout.ts";
import type { UrlPageSource } from "./url.ts";
import { EventFd } from "../eventfd.ts";
import { chunkDigest, fromHex, toHex } from "../snapshot/digest.ts";

/**
 * SHA-256 checksums of a snapshot's files, one per chunk (see src/snapshot/digest.ts): checked the
 * first time a page comes from a chunk (`when: "fault"`, the default) or all at once when the
 * source opens (`"open"`). A mismatch never serves the bytes: the pages are resolved by the
 * server's `onError` policy (poison by default) and the error names the file and the range; at
 * open it is a thrown {@link UffdError}.
 */
export interface SnapshotChecksums {
  /** Chunk size in bytes (a multiple of the page size). */
  chunkSize: number;
  /** Per file (the memory file first, then each layer): hex SHA-256 per chunk, null where no data. */
  files: (string | null)[][];
  /** When to check (default `"fault"`). */
  when?: "fault" | "open";
}

/**
 * Where pages come from.
 * - `bytes`: a buffer; a SharedArrayBuffer (or a view on one) is read in place, any other
 *   buffer is copied once into page-aligned shared memory. For the fastest COPY give a
 *   page-aligned view ({@link alignedSharedBytes}): Deno's SharedArrayBuffers are not.
 * - `file`: a file (`path`) mapped read-only; the kernel copies straight from the page cache.
 * - `snapshot`: a memory file (`path`, Firecracker's raw layout: page `i` at offset `i * pageSize`)
 *   and diff layers on top of it (`layers`, bottom first: sparse files of the same layout where
 *   written pages hold data and clean pages are holes). A page comes from the topmost layer whose
 *   file has data there; a page that is a hole in every file is a zero page. No merge step.
 * - `url`: an object over HTTP, fetched in chunks with range requests into a bounded memory cache (and
 *   optionally a cache directory): open it with {@link openUrlSource}.
 * - `zero`: zero pages (UFFDIO_ZEROPAGE), `length` bytes.
 * - `memfd`: a memfd {@link Mapping} (shmem or hugetlb) whose pages are populated out of band
 *   (through it or an alias); the server maps the same pages and resolves minor faults with
 *   UFFDIO_CONTINUE.
 * - `module`: a module URL exporting `fill(offset, dest)` (sync or async) that fills `dest`
 *   with the bytes at `offset` or returns a Uint8Array holding them; optional `init(options)`.
 */
export type PageSource =
  | { kind: "bytes"; data: SharedArrayBuffer | ArrayBufferView | ArrayBuffer }
  | { kind: "file"; path: string }
  | { kind: "snapshot"; path: string; layers?: string[]; checksums?: SnapshotChecksums }
  | UrlPageSource
  | { kind: "zero"; length: number }
  | { kind: "memfd"; mapping: Mapping }
  | { kind: "module"; url: string | URL; length: number; options?: unknown };

/** The source kinds, for messages. */
export const SOURCE_KINDS: readonly PageSource["kind"][] = [
  "bytes",
  "file",
  "snapshot",
  "url",
  "zero",
  "memfd",
  "module",
];

/** Whether the kernel copies the source's pages straight from an address (prefetch works). */
export function isAddressSource(src: PageSource): boolean {
  return src.kind === "bytes" || src.kind === "file" || src.kind === "snapshot" || src.kind === "zero" ||
    src.kind === "url";
}

/** A source opened for serving: what the Worker gets, the source's length, what to keep alive. */
export interface OpenedSource {
  /** For the Worker. */
  init: (pages: number, pageSize: number) => SourceInit;
  /** Bytes of the source (the memory file's length for a snapshot). */
  length: number;
  /** Mappings to unmap at close. */
  owned: Mapping[];
  /** Buffers whose addresses the kernel reads: keep them referenced. */
  hold: unknown[];
  /** Releases what is not a mapping (a url source's eventfd). */
  release?: () => void;
  /** A url source: the server starts a fetcher thread. */
  fetcher?: boolean;
  /**
   * [address, length] ranges of file data in this process's mappings worth reading ahead
   * (FaultServer `populate`): the whole file of a `file` source, the data extents of a snapshot's.
   */
  populate?: Array<[number, number]>;
}

/** Opens a source: maps files, copies a non-shared buffer, checks lengths. */
export function openSource(src: PageSource): OpenedSource {
  switch (src.kind) {
    case "bytes": {
      const { data, offset, length } = sharedBytes(src.data);
      return { init: () => ({ kind: "bytes", data, offset, length }), length, owned: [], hold: [data] };
    }
    case "file": {
      const m = openFile("FaultServer", src.path);
      return {
        init: () => ({ kind: "address", address: m.start, length: m.length }),
        length: m.length,
        owned: [m],
        hold: [],
        populate: [[m.start, m.length]],
      };
    }
    case "snapshot":
      return openSnapshot(src.path, src.layers ?? [], src.checksums);
    case "url":
      return openUrl(src);
    case "zero":
      checkLength(src.length);
      return { init: () => ({ kind: "zero" }), length: src.length, owned: [], hold: [] };
    case "memfd":
      if ((src.mapping.kind !== "shmem" && src.mapping.kind !== "hugetlb") || src.mapping.fd < 0) {
        throw invalid("FaultServer", "a memfd source needs a Mapping.memfd() mapping (shmem or hugetlb)");
      }
      return { init: () => ({ kind: "memfd" }), length: src.mapping.length, owned: [], hold: [] };
    case "module": {
      checkLength(src.length);
      if (!(typeof src.url === "string" && src.url !== "") && !(src.url instanceof URL)) {
        throw invalid(
          "FaultServer",
          `a module source needs url, the module's URL as a string or URL, e.g. new URL("./source.ts", import.meta.url) (got ${
            describeValue(src.url)
          })`,
        );
      }
      const url = String(src.url);
      return {
        init: () => ({ kind: "module", url, options: src.options, length: src.length }),
        length: src.length,
        owned: [],
        hold: [],
      };
    }
  }
}

/** A read-only mapping of a file, with an error naming the path. */
function openFile(op: string, path: string): Mapping {
  if (typeof path !== "string" || path === "") {
    throw invalid(op, `a file source needs a path string (got ${showValue(path)})`);
  }
  try {
    return Mapping.file(path);
  } catch (e) {
    if (e instanceof UffdError) {
      throw new UffdError(op, e.errno, { detail: `cannot map ${path}: ${e.message}` });
    }
    throw e;
  }
}

const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const ENXIO = 6;

/**
 * The data extents of an open file, as [start, end) byte ranges, found with SEEK_DATA and
 * SEEK_HOLE (a file system without hole support reports the whole file as data).
 */
export function dataExtents(fd: number, length: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let off = 0; off < length;) {
    const data = libc.syscall(8, /* lseek */ fd, off, SEEK_DATA);
    if (data < 0) {
      if (libc.errno() === ENXIO) break; // no data after off
      throw new UffdError("lseek", libc.errno(), { detail: "SEEK_DATA" });
    }
    if (data >= length) break;
    let hole = libc.syscall(8, fd, data, SEEK_HOLE);
    if (hole < 0) hole = length;
    out.push([data, Math.min(hole, length)]);
    off = hole;
  }
  return out;
}

function openSnapshot(path: string, layers: string[], checksums?: SnapshotChecksums): OpenedSource {
  if (!Array.isArray(layers) || layers.some((l) => typeof l !== "string")) {
    throw invalid("FaultServer", "snapshot layers must be an array of file paths, bottom first");
  }
  if (layers.length > 254) throw invalid("FaultServer", `at most 254 layers (got ${layers.length})`);
  const owned: Mapping[] = [];
  try {
    const files = [path, ...layers].map((p) => {
      const m = openFile("FaultServer", p);
      owned.push(m);
      return { path: p, mapping: m, length: fileLength(m.fd) };
    });
    const length = files[0].length;
    for (const f of files.slice(1)) {
      if (f.length > length) {
        throw invalid(
          "FaultServer",
          `layer ${f.path} holds ${f.length} bytes, more than the memory file ${path} (${length}): ` +
            "a diff layer has the layout of the memory file it sits on",
        );
      }
    }
    const extents = files.map((f) => dataExtents(f.mapping.fd, f.length));
    const verify = checksums ? verifyInit(files, extents, length, checksums) : undefined;
    return {
      length,
      owned,
      hold: [],
      populate: files.flatMap((f, k) =>
        extents[k].map(([s, e]): [number, number] => [f.mapping.start + s, Math.min(e, f.mapping.length) - s])
      ),
      init: (pages, ps) => {
        // One byte per page: the topmost layer with data anywhere in the page (files[k] is k + 1).
        const table = new Uint8Array(new SharedArrayBuffer(pages));
        for (let k = 0; k < files.length; k++) {
          for (const [s, e] of extents[k]) {
            table.fill(k + 1, Math.floor(s / ps), Math.min(pages, Math.ceil(e / ps)));
          }
        }
        for (const f of files) {
          if (ps > systemPageSize && f.length % ps !== 0) {
            throw invalid(
              "FaultServer",
              `${f.path} holds ${f.length} bytes, not a whole number of ${ps}-byte pages`,
            );
          }
        }
        return {
          kind: "layers",
          addresses: files.map((f) => f.mapping.start),
          table: table.buffer,
          ...(verify ? { verify } : {}),
        };
      },
    };
  } catch (e) {
    for (const m of owned) m.close();
    throw e;
  }
}

/** Checks the checksums' shape, and either checks every chunk now or prepares the lazy checks. */
function verifyInit(
  files: { path: string; mapping: Mapping; length: number }[],
  extents: Array<[number, number]>[],
  length: number,
  c: SnapshotChecksums,
): VerifyInit | undefined {
  const bad = (detail: string): UffdError => invalid("FaultServer", `snapshot checksums: ${detail}`);
  if (!c || typeof c !== "object") throw bad("expected { chunkSize, files }");
  if (!Number.isSafeInteger(c.chunkSize) || c.chunkSize <= 0 || c.chunkSize % systemPageSize !== 0) {
    throw bad(`chunkSize must be a positive multiple of ${systemPageSize} (got ${c.chunkSize})`);
  }
  const chunks = Math.ceil(length / c.chunkSize);
  if (!Array.isArray(c.files) || c.files.length !== files.length) {
    throw bad(`one digest list per file is needed: ${files.length} files, ${c.files?.length} lists`);
  }
  const digests = new Uint8Array(new SharedArrayBuffer(Math.max(1, files.length * chunks * 32)));
  const state = new Uint8Array(new SharedArrayBuffer(Math.max(1, files.length * chunks)));
  files.forEach((f, k) => {
    const list = c.files[k];
    const own = Math.ceil(f.length / c.chunkSize);
    if (!Array.isArray(list) || list.length !== own) {
      throw bad(`${f.path}: ${own} chunk digests expected, got ${Array.isArray(list) ? list.length : list}`);
    }
    list.forEach((d, i) => {
      if (d === null) return;
      if (typeof d !== "string" || !/^[0-9a-f]{64}$/.test(d)) {
        throw bad(`${f.path} chunk ${i}: not a SHA-256 hex digest`);
      }
      digests.set(fromHex(d), (k * chunks + i) * 32);
      state[k * chunks + i] = CHUNK.unchecked;
    });
  });
  if (c.when === "open") {
    files.forEach((f, k) => {
      const bytes = new Uint8Array(libc.view(f.mapping.start, f.length));
      const flat = extents[k].flat();
      for (let i = 0; i * c.chunkSize < f.length; i++) {
        const d = chunkDigest(bytes, flat, c.chunkSize, i);
        const want = c.files[k][i];
        if ((d ? toHex(d) : null) !== want) {
          throw new UffdError("FaultServer", 74, /* EBADMSG */ {
            source: "library",
            detail: `checksum mismatch: ${f.path} bytes [${i * c.chunkSize}, ${(i + 1) * c.chunkSize}) ` +
              "do not match the manifest (the file was changed or damaged after the snapshot)",
          });
        }
      }
    });
    return undefined; // all checked: nothing left for the serving thread
  }
  return {
    chunkSize: c.chunkSize,
    chunks,
    digests: digests.buffer as SharedArrayBuffer,
    state: state.buffer as SharedArrayBuffer,
    extents: extents.map((e) => {
      const a = new Float64Array(new SharedArrayBuffer(e.length * 16));
      a.set(e.flat());
      return a.buffer as SharedArrayBuffer;
    }),
    lengths: files.map((f) => f.length),
    names: files.map((f) => f.path),
  };
}

/** Prepares a url source's chunk cache and shared state (the fetcher thread does the requests). */
function openUrl(src: UrlPageSource): OpenedSource {
  const bad = (detail: string): UffdError => invalid("FaultServer", `url source: ${detail}`);
  if (typeof src.url !== "string" || !Number.isSafeInteger(src.length) || src.length <= 0) {
    throw bad("open it with openUrlSource(url) (it needs the object's length from the server)");
  }
  const chunkSize = src.chunkSize ?? 2 << 20;
  if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0 || chunkSize % systemPageSize !== 0) {
    throw bad(`chunkSize must be a positive multiple of ${systemPageSize} (got ${src.chunkSize})`);
  }
  const concurrency = src.concurrency ?? 8;
  const timeoutMs = src.timeoutMs ?? 10000;
  const retries = src.retries ?? 3;
  for (
    const [k, v, min] of [["concurrency", concurrency, 1], ["timeoutMs", timeoutMs, 1], [
      "retries",
      retries,
      0,
    ]] as const
  ) {
    if (!Number.isInteger(v) || v < min) throw bad(`${k} must be a whole number >= ${min} (got ${v})`);
  }
  for (const [k, v] of Object.entries(src.headers ?? {})) {
    if (typeof v !== "string" || !/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(k) || /[\r\n\0]/.test(v)) {
      throw bad(
        `headers: ${JSON.stringify(k)} must be a header name with a string value without CR, LF or NUL`,
      );
    }
  }
  const chunks = Math.ceil(src.length / chunkSize);
  if (src.sha256 !== undefined && (!Array.isArray(src.sha256) || src.sha256.length !== chunks)) {
    throw bad(`sha256 must list one digest (or null) per ${chunkSize}-byte chunk: ${chunks} expected`);
  }
  const slots = Math.max(concurrency * 2 + 2, Math.floor((src.cacheBytes ?? 256 << 20) / chunkSize));
  const cache = alignedSharedBytes(Math.min(slots, chunks + 1) * chunkSize);
  const done = new EventFd();
  const state = new Int32Array(new SharedArrayBuffer(chunks * 4));
  const slotOf = new Int32Array(new SharedArrayBuffer(chunks * 4)).fill(-1);
  const ringSize = 1 << Math.ceil(Math.log2(Math.max(2, slots)));
  const ring = new Int32Array(new SharedArrayBuffer((2 + ringSize) * 4)).fill(-1, 2);
  const fetchPath = rawPathFor(src.url);
  const req = new EventFd();
  return {
    length: src.length,
    owned: [],
    hold: [],
    fetcher: true,
    release: () => {
      done.close();
      req.close();
    },
    init: () => ({
      kind: "url",
      url: src.url,
      length: src.length,
      etag: src.etag ?? null,
      chunkSize,
      cache: cache.buffer as SharedArrayBuffer,
      cacheOffset: cache.byteOffset,
      slots: cache.length / chunkSize,
      cacheDir: src.cacheDir ?? null,
      concurrency,
      timeoutMs,
      retries,
      sha256: src.sha256 ?? null,
      headers: { ...src.headers },
      state: state.buffer as SharedArrayBuffer,
      slotOf: slotOf.buffer as SharedArrayBuffer,
      doneFd: done.fd,
      fetchPath,
      ring: ring.buffer as SharedArrayBuffer,
      reqFd: req.fd,
    }),
  };
}

/**
 * Whether the fetcher can take the raw path for `url` (`http://` without credentials in the URL,
 * no proxy variable set): otherwise `fetch()` makes the requests, as it honours proxies.
 * A process that may not read its environment (Deno without --allow-env) takes `fetch()`.
 */
function rawPathFor(url: string): "raw" | "fetch" {
  const u = new URL(url);
  if (u.protocol !== "http:" || u.username || u.password) return "fetch";
  for (const name of ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]) {
    const v = envVar(name);
    if (v === null || (v !== undefined && v !== "")) return "fetch";
  }
  return "raw";
}

/** A file's length (lseek to the end). */
export function fileLength(fd: number): number {
  const n = libc.syscall(8, fd, 0, 2 /* SEEK_END */);
  if (n < 0) throw new UffdError("lseek", libc.errno());
  return n;
}

/** Throws unless `n` is a positive safe integer. */
export function checkLength(n: number): void {
  if (!Number.isSafeInteger(n) || n <= 0) {
    throw invalid("FaultServer", `length must be a positive integer (got ${n})`);
  }
}

/** A SharedArrayBuffer holding the bytes (the same one when already shared). */
function sharedBytes(
  data: SharedArrayBuffer | ArrayBufferView | ArrayBuffer,
): { data: SharedArrayBuffer; offset: number; length: number } {
  if (data instanceof SharedArrayBuffer) return { data, offset: 0, length: data.byteLength };
  if (ArrayBuffer.isView(data) && data.buffer instanceof SharedArrayBuffer) {
    return { data: data.buffer, offset: data.byteOffset, length: data.byteLength };
  }
  if (!ArrayBuffer.isView(data) && !(data instanceof ArrayBuffer)) {
    throw invalid(
      "FaultServer",
      "a bytes source needs data: a SharedArrayBuffer, an ArrayBuffer or a typed array",
    );
  }
  const bytes = ArrayBuffer.isView(data)
    ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
    : new Uint8Array(data);
  checkLength(bytes.byteLength);
  const shared = alignedSharedBytes(bytes.byteLength); // page-aligned: the kernel copies faster
  shared.set(bytes);
  return { data: shared.buffer as SharedArrayBuffer, offset: shared.byteOffset, length: bytes.byteLength };
}
