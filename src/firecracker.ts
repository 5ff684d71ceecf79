/**
 * A page-fault handler for Firecracker's snapshot restore (`mem_backend.backend_type: "Uffd"`).
 *
 * The protocol (Firecracker main, `src/vmm/src/persist.rs`): the handler binds and listens on a
 * Unix stream socket; Firecracker creates its userfaultfd (only `EVENT_REMOVE`, non-blocking, not
 * user-mode-only), maps guest RAM, registers each region MISSING, connects, and sends ONE message:
 * a JSON array of `{base_host_virt_addr, size, offset, page_size, page_size_kib}` with the
 * descriptor as SCM_RIGHTS. No reply and no further traffic: the stream stays open until
 * Firecracker exits, so its hang-up is the signal to stop.
 *
 * Here the three pieces are separate, as in Firecracker's example runtime: {@link readHandshake}
 * (the robust read: a large buffer, MSG_CTRUNC checked, 1-3 descriptors accepted with the extra
 * ones closed, retried for a bounded time), {@link parseRegions} (the region table, every field
 * checked) and a {@link FaultServer} over the regions, from a snapshot source (memory file plus
 * diff layers), with readahead, prefetch of a recorded working set and the server's handling of
 * EEXIST, EAGAIN, ESRCH and REMOVE. The session ends when the VMM hangs up.
 * @module
 */
import { libc } from "../ffi/mod.ts";
import { ERRNO, invalid, UffdError } from "./errors.ts";
import { FaultServer, type FaultServerStats, type PageSource } from "./server/fault_server.ts";
import { type WorkingSet, workingSetPages } from "./server/working_set.ts";
import { hungUp, peerCredentials, recvMessage, UnixListener, waitReadableAsync } from "./unix.ts";
import { Userfaultfd } from "./userfaultfd.ts";

/** One guest memory region of the handshake, as this library names it. */
export interface FirecrackerRegion {
  /** `base_host_virt_addr`: where the region is mapped in the VMM. */
  start: number;
  /** `size` in bytes. */
  length: number;
  /** `offset` of the region in the memory file. */
  offset: number;
  /** `page_size` (else `page_size_kib`, which Firecracker fills with the same byte value), bytes. */
  pageSize: number;
}

/** Page sizes Firecracker restores: 4 KiB (none or transparent huge pages) and 2 MiB (hugetlbfs). */
export const FIRECRACKER_PAGE_SIZES: readonly number[] = [4096, 2097152];

const bad = (detail: string): UffdError =>
  new UffdError("firecracker handshake", ERRNO.EBADMSG, { source: "library", detail });

/**
 * Parses and checks the handshake's JSON: an array of regions, each with integer
 * `base_host_virt_addr`, `size` and `offset`, one page size for all (`page_size`, else
 * `page_size_kib`, else 4096; in bytes), everything aligned to it, no overlaps. Unknown fields are
 * ignored. Throws a {@link UffdError} (EBADMSG) that names the field and the region.
 */
export function parseRegions(text: string): FirecrackerRegion[] {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw bad(
      `the handshake is not JSON (${e instanceof Error ? e.message : String(e)}): ${
        JSON.stringify(text.slice(0, 120))
      }`,
    );
  }
  if (!Array.isArray(v) || v.length === 0) {
    throw bad(
      `the handshake must be a non-empty JSON array of guest memory regions (got ${JSON.stringify(v)})`,
    );
  }
  const regions = v.map((r: unknown, i: number): FirecrackerRegion => {
    if (!r || typeof r !== "object" || Array.isArray(r)) throw bad(`region ${i} is not an object`);
    const o = r as Record<string, unknown>;
    const int = (name: string, min: number): number => {
      const x = o[name];
      if (typeof x !== "number" || !Number.isSafeInteger(x) || x < min) {
        throw bad(`region ${i}: ${name} must be an integer >= ${min} (got ${JSON.stringify(x)})`);
      }
      return x;
    };
    const pageSize = o.page_size !== undefined
      ? int("page_size", 1)
      : o.page_size_kib !== undefined
      ? int("page_size_kib", 1)
      : 4096;
    if (!FIRECRACKER_PAGE_SIZES.includes(pageSize)) {
      throw bad(`region ${i}: page size ${pageSize} is not 4096 or 2097152 bytes`);
    }
    const region = {
      start: int("base_host_virt_addr", 1),
      length: int("size", 1),
      offset: int("offset", 0),
      pageSize,
    };
    for (
      const [name, x] of [["base_host_virt_addr", region.start], ["size", region.length], [
        "offset",
        region.offset,
      ]] as const
    ) {
      if (x % pageSize !== 0) {
        throw bad(`region ${i}: ${name} ${x} is not aligned to its ${pageSize}-byte pages`);
      }
    }
    return region;
  });
  const ps = regions[0].pageSize;
  const other = regions.find((r) => r.pageSize !== ps);
  if (other) {
    throw bad(`regions use different page sizes (${ps} and ${other.pageSize}); Firecracker uses one`);
  }
  const byStart = [...regions].sort((a, b) => a.start - b.start);
  const byOffset = [...regions].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < regions.length; i++) {
    if (byStart[i].start < byStart[i - 1].start + byStart[i - 1].length) {
      throw bad(
        `regions at 0x${byStart[i - 1].start.toString(16)} and 0x${byStart[i].start.toString(16)} overlap`,
      );
    }
    if (byOffset[i].offset < byOffset[i - 1].offset + byOffset[i - 1].length) {
      throw bad(
        `regions at file offsets ${byOffset[i - 1].offset} and ${byOffset[i].offset} overlap in the file`,
      );
    }
  }
  return regions;
}

/** What {@link readHandshake} returns: the regions and the VMM's userfaultfd. */
export interface Handshake {
  /** The guest memory regions. */
  regions: FirecrackerRegion[];
  /** The userfaultfd descriptor (owned by the caller). */
  fd: number;
  /** Extra descriptors that came with it (closed: a fork's memfd and bitmap are not used here). */
  extraFds: number;
  /** The raw JSON text. */
  text: string;
}

/** The most descriptors one handshake may carry (the uffd, and a fork's guest memfd and bitmap). */
export const MAX_HANDSHAKE_FDS = 3;

/**
 * Reads the handshake from a connected stream: bytes until they parse as JSON and at least one
 * descriptor has arrived, for at most `timeoutMs` (default 5000: a message with no descriptor is
 * retried, never waited on forever). The first descriptor must be a userfaultfd; up to two more
 * are accepted and closed; more than {@link MAX_HANDSHAKE_FDS}, a truncated control message, a
 * hang-up first, or a malformed region table is a {@link UffdError} that says so.
 */
export async function readHandshake(conn: number, options: { timeoutMs?: number } = {}): Promise<Handshake> {
  const timeoutMs = options.timeoutMs ?? 5000;
  const deadline = Date.now() + timeoutMs;
  const fds: number[] = [];
  const chunks: Uint8Array[] = [];
  let length = 0;
  const closeAll = (): void => {
    for (const f of fds.splice(0)) libc.close(f);
  };
  try {
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0 || !(await waitReadableAsync(conn, left))) {
        // Bytes that never became JSON: say what is wrong with them rather than only "timed out".
        if (length > 0 && fds.length > 0) parseRegions(new TextDecoder().decode(concat(chunks, length)));
        throw new UffdError("firecracker handshake", ERRNO.ETIMEDOUT, {
          source: "library",
          detail:
            `no complete handshake within ${timeoutMs} ms: received ${length} bytes and ${fds.length} ` +
            "descriptors (expected a JSON array of regions with the userfaultfd as SCM_RIGHTS)",
        });
      }
      const m = recvMessage(conn, { maxBytes: 1 << 16, maxFds: 8, dontWait: true });
      fds.push(...m.fds);
      if (m.truncated || fds.length > MAX_HANDSHAKE_FDS) {
        throw bad(
          `the VMM sent more than ${MAX_HANDSHAKE_FDS} descriptors` +
            (m.truncated ? " (the control message was truncated)" : ` (${fds.length})`),
        );
      }
      if (m.eof) {
        throw new UffdError("firecracker handshake", ERRNO.ECONNRESET, {
          source: "library",
          detail: `the VMM closed the socket after ${length} bytes and ${fds.length} descriptors, before a ` +
            "complete handshake",
        });
      }
      chunks.push(m.bytes);
      length += m.bytes.length;
      if (length > 1 << 20) throw bad(`the handshake is over 1 MiB (${length} bytes): not a region table`);
      if (fds.length === 0) continue; // the descriptor may come in a later message
      const text = new TextDecoder().decode(concat(chunks, length));
      if (!completeJson(text)) continue;
      const regions = parseRegions(text);
      const fd = fds[0];
      const what = fdKind(fd);
      if (what !== "anon_inode:[userfaultfd]") {
        throw bad(`the descriptor sent is not a userfaultfd (it is ${what})`);
      }
      const extra = fds.length - 1;
      for (const f of fds.splice(1)) libc.close(f);
      fds.length = 0;
      return { regions, fd, extraFds: extra, text };
    }
  } catch (e) {
    closeAll();
    throw e;
  }
}

function concat(chunks: Uint8Array[], n: number): Uint8Array {
  const out = new Uint8Array(n);
  let o = 0;
  for (const c of chunks) {
    out.set(c, o);
    o += c.length;
  }
  return out;
}

/** Whether the text is a whole JSON value (more bytes may be on the way otherwise). */
function completeJson(text: string): boolean {
  try {
    JSON.parse(text);
    return true;
  } catch {
    // A syntax error inside what is clearly complete is reported by parseRegions: a truncated
    // message only ever ends early, so wait for more only while brackets are still open.
    let depth = 0;
    let inString = false;
    for (let i = 0; i < text.length; i++) {
      const c = text[i];
      if (inString) {
        if (c === "\\") i++;
        else if (c === '"') inString = false;
      } else if (c === '"') inString = true;
      else if (c === "[" || c === "{") depth++;
      else if (c === "]" || c === "}") depth--;
    }
    return depth <= 0 && text.trim().length > 0;
  }
}

/** What a descriptor is (the target of /proc/self/fd/N). */
function fdKind(fd: number): string {
  const path = new TextEncoder().encode(`/proc/self/fd/${fd}\0`);
  const buf = new Uint8Array(256);
  const n = libc.syscall(89, /* readlink */ libc.addressOf(path), libc.addressOf(buf), buf.length);
  return n > 0 ? new TextDecoder().decode(buf.subarray(0, n)) : `unknown (readlink errno ${libc.errno()})`;
}

/** Options of {@link FirecrackerListener.accept}. */
export interface FirecrackerServeOptions {
  /** The snapshot's memory file (Firecracker's `mem_file_path` of `PUT /snapshot/create`). */
  memFile?: string;
  /**
   * Serve from this source instead of `memFile`/`layers`: e.g. `await openUrlSource(url)` for a
   * memory file in object storage or behind any HTTP server that serves ranges.
   */
  source?: PageSource;
  /** Diff snapshots on top of it, bottom first (sparse files of the same layout); the topmost with data wins. */
  layers?: string[];
  /** Readahead of the server (default `"adaptive"`: doubles on sequential faults up to 64 pages). */
  readahead?: number | "adaptive" | { min?: number; max?: number };
  /** A working set to install right after the handshake (see {@link FaultServer} `prefetch`). */
  prefetch?: WorkingSet;
  /** Record the pages installed on demand ({@link FirecrackerSession.workingSet}). */
  record?: boolean;
  /**
   * Read the memory file and layers ahead in the background while the guest runs (FaultServer
   * `populate`), as Firecracker's example handler does with `MAP_POPULATE`: a cold page cache is
   * read sequentially instead of a page per fault. Default false: measured with a 64 MiB KVM
   * restore on a cold cache, pinned to one CPU, it saved 7% on a random 10% touch and nothing on
   * a full sequential one (adaptive readahead already reads in large runs), and it costs page
   * cache for the whole file. `"sync"`: all of it before the first fault is served, as
   * `MAP_POPULATE` (FaultServer `populate: "sync"`).
   */
  populate?: boolean | "sync";
  /** SIGKILL the VMM (its pid from SO_PEERCRED) on a fatal handler error, so a broken restore never freezes silently. */
  killOnError?: boolean;
  /** How long to wait for a VMM to connect, ms (default: forever). */
  acceptTimeoutMs?: number;
  /** How long the handshake may take once connected, ms (default 5000). */
  handshakeTimeoutMs?: number;
  /** Stops waiting for a connection, or ends the session, when aborted. */
  signal?: AbortSignal;
}

/** The summary of one restore, when the VMM has hung up (or the session was closed). */
export interface FirecrackerSummary {
  /** Why the session ended: the VMM hung up, the caller closed it, or a fatal error. */
  end: "hangup" | "closed" | "error";
  /** The fatal error, when `end` is `"error"`. */
  error?: string;
  /** Whether the VMM was killed because of that error (`killOnError`). */
  killed: boolean;
  /** The VMM's process id (SO_PEERCRED). */
  vmmPid: number;
  /** Guest memory regions and their page size. */
  regions: number;
  /** Page size of the regions, bytes. */
  pageSize: number;
  /** Guest memory in bytes (all regions). */
  guestBytes: number;
  /** Page-fault messages read. */
  faults: number;
  /** Pages placed (on demand, readahead and prefetch). */
  pages: number;
  /** Bytes placed. */
  bytes: number;
  /** Pages installed by the prefetcher. */
  prefetched: number;
  /** Milliseconds until the prefetch was installed (0 without one). */
  prefetchMs: number;
  /** Pages placed as zeros (holes in every layer, ballooned pages faulted again). */
  zeroPages: number;
  /** Pages dropped by REMOVE events (balloon inflate, MADV_DONTNEED). */
  removed: number;
  /** EEXIST and EAGAIN answers, and placement errors (ESRCH once the VMM is gone counts here). */
  eexist: number;
  /** EAGAIN answers (retried after the pending events were read). */
  eagain: number;
  /** Placement errors. */
  errors: number;
  /** Pages in the recorded working set (0 without `record`). */
  workingSetPages: number;
  /** Bytes of the memory file and layers read ahead (`populate`), of `populateBytes`. */
  populated: number;
  /** Bytes `populate` had to read (the files' data extents; 0 without it). */
  populateBytes: number;
  /** Milliseconds from the connection to the end of the handshake. */
  handshakeMs: number;
  /** Milliseconds from the end of the handshake to the end of the session: the time to serve. */
  serveMs: number;
  /** A url source: bytes fetched over HTTP. */
  fetchedBytes?: number;
  /** Range requests made. */
  requests?: number;
  /** Chunks read from the cache directory. */
  cacheHits?: number;
  /** Requests retried. */
  fetchRetries?: number;
  /** Mean range request, ms. */
  fetchMeanMs?: number;
  /** Slowest range request, ms. */
  fetchMaxMs?: number;
}

/** One VMM's restore in progress: the running server, and the summary once it ends. */
export class FirecrackerSession {
  /** The fault server over the guest's regions. */
  readonly server: FaultServer;
  /** The regions of the handshake. */
  readonly regions: FirecrackerRegion[];
  /** The VMM's process id, from SO_PEERCRED. */
  readonly vmmPid: number;
  /** Resolves with the summary when the VMM hangs up, the session is closed, or a fatal error ends it. */
  readonly done: Promise<FirecrackerSummary>;
  /**
   * Resolves once the `prefetch` working set is installed, with the pages the prefetcher placed
   * and the milliseconds it took; with `undefined` when there is no working set, or the session
   * ends first. (REAP resumes the guest after this point; Firecracker resumes it at once, so a
   * caller that can hold the guest, as a test or an orchestrator that resumes it itself, waits here.)
   */
  readonly prefetched: Promise<{ pages: number; ms: number } | undefined>;
  readonly #conn: number;
  readonly #handshakeMs: number;
  readonly #started = performance.now();
  #finish!: (end: FirecrackerSummary["end"], error?: string) => void;
  #summary: FirecrackerSummary | undefined;

  /** @internal Use {@link FirecrackerListener.accept}. */
  constructor(
    server: FaultServer,
    regions: FirecrackerRegion[],
    conn: number,
    vmmPid: number,
    handshakeMs: number,
    options: FirecrackerServeOptions,
  ) {
    this.server = server;
    this.regions = regions;
    this.vmmPid = vmmPid;
    this.#conn = conn;
    this.#handshakeMs = handshakeMs;
    let killed = false;
    let prefetchedResolve!: (v: { pages: number; ms: number } | undefined) => void;
    this.prefetched = new Promise((resolve) => (prefetchedResolve = resolve));
    let prefetchPending = options.prefetch !== undefined && workingSetPages(options.prefetch) > 0;
    if (!prefetchPending) prefetchedResolve(undefined);
    this.done = new Promise<FirecrackerSummary>((resolve) => {
      this.#finish = (end, error) => {
        if (this.#summary) return;
        clearInterval(monitor);
        if (prefetchPending) {
          const s = this.server.stats;
          prefetchedResolve(s.prefetchMs > 0 ? { pages: s.prefetched, ms: s.prefetchMs } : undefined);
          prefetchPending = false;
        }
        options.signal?.removeEventListener("abort", onAbort);
        if (end === "error" && options.killOnError && vmmPid > 0) {
          killed = libc.syscall(62, /* kill */ vmmPid, 9 /* SIGKILL */) === 0;
        }
        const serveMs = performance.now() - this.#started;
        this.server.close(); // serves what is queued and stops: the counters are final after it
        libc.close(this.#conn);
        // A VMM that died of a poisoned page hangs up before the monitor's next look: the restore
        // still failed.
        const st = this.server.stats;
        if (end !== "error" && (this.server.state === "failed" || st.poisoned > 0 || st.unserved > 0)) {
          end = "error";
          error = this.server.lastError ?? "a page could not be served";
        }
        this.#summary = this.#summarize(end, error, killed, serveMs);
        resolve(this.#summary);
      };
    });
    const onAbort = (): void => this.#finish("closed");
    options.signal?.addEventListener("abort", onAbort, { once: true });

    // A fatal handler error: the serving thread failed, or a page could not be placed for a
    // reason other than the VMM going away (ESRCH, ENOENT once its memory is unmapped).
    // The hang-up is looked for here too, with a non-blocking poll every 10 ms (a Worker parked in
    // poll() would cost a thread start, 30-50 ms of CPU in Deno, during the restore).
    const drain = new Uint8Array(4096);
    const monitor = setInterval(() => {
      if (hungUp(conn)) return this.#finish("hangup");
      // Bytes nobody expects (Firecracker sends nothing after the handshake): read and drop them.
      while (
        libc.syscall(
          45, /* recvfrom */
          conn,
          libc.addressOf(drain),
          drain.length,
          0x40, /* DONTWAIT */
          0,
          0,
        ) > 0
      );
      if (hungUp(conn)) return this.#finish("hangup");
      const st = this.server.state;
      if (st === "failed") this.#finish("error", this.server.lastError ?? "the fault server failed");
      const s = this.server.stats;
      if (prefetchPending && s.prefetchMs > 0) {
        prefetchPending = false;
        prefetchedResolve({ pages: s.prefetched, ms: s.prefetchMs });
      }
      if (s.poisoned > 0 || s.zeroed > 0 || s.unserved > 0) {
        this.#finish("error", this.server.lastError ?? "a page could not be served");
      }
    }, 10);
    // (Not unref'd: a session in progress keeps the process alive until the VMM hangs up.)
  }

  #summarize(
    end: FirecrackerSummary["end"],
    error: string | undefined,
    killed: boolean,
    serveMs: number,
  ): FirecrackerSummary {
    const s: FaultServerStats = this.server.stats;
    return {
      end,
      ...(error !== undefined ? { error } : {}),
      killed,
      vmmPid: this.vmmPid,
      regions: this.regions.length,
      pageSize: this.regions[0].pageSize,
      guestBytes: this.regions.reduce((n, r) => n + r.length, 0),
      faults: s.faults,
      pages: s.pages,
      bytes: s.bytes,
      prefetched: s.prefetched,
      prefetchMs: s.prefetchMs,
      zeroPages: s.zeroPages,
      removed: s.removed,
      eexist: s.eexist,
      eagain: s.eagain,
      errors: s.errors,
      workingSetPages: this.#recording() ? workingSetPages(this.server.workingSet()) : 0,
      populated: this.server.populated,
      populateBytes: this.server.populateBytes,
      handshakeMs: this.#handshakeMs,
      serveMs,
      ...(this.server.source === "url"
        ? {
          fetchedBytes: s.fetchedBytes,
          requests: s.requests,
          cacheHits: s.cacheHits,
          fetchRetries: s.fetchRetries,
          fetchMeanMs: s.fetchMeanMs,
          fetchMaxMs: s.fetchMaxMs,
        }
        : {}),
    };
  }

  #recording(): boolean {
    try {
      this.server.workingSet();
      return true;
    } catch {
      return false;
    }
  }

  /** The pages installed on demand so far, in first-touch order (needs `record: true`). */
  workingSet(): WorkingSet {
    return this.server.workingSet();
  }

  /** The summary, once the session has ended. */
  get summary(): FirecrackerSummary | undefined {
    return this.#summary;
  }

  /** Ends the session now (stops serving; the VMM's faults then wait on its own copy of the descriptor). */
  close(): Promise<FirecrackerSummary> {
    this.#finish("closed");
    return this.done;
  }

  /** Same as {@link close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close().then(() => {});
  }
}

/**
 * A listening handler socket: `accept()` waits for one VMM, performs the handshake and returns a
 * running {@link FirecrackerSession}.
 *
 * @example
 * ```ts
 * // not run: needs a Firecracker (or the tests' VMM fixture) to connect
 * using listener = FirecrackerListener.listen("/tmp/uffd.sock");
 * const session = await listener.accept({ memFile: "snapshot.mem", readahead: "adaptive" });
 * console.log(await session.done); // when the VMM exits: faults, pages, bytes, serveMs...
 * ```
 */
export class FirecrackerListener {
  /** The socket. */
  readonly socket: UnixListener;

  private constructor(socket: UnixListener) {
    this.socket = socket;
  }

  /** Binds and listens on `path` (a stale socket there is replaced; any other file is an error). */
  static listen(path: string, options: { fetcher?: boolean } = {}): FirecrackerListener {
    const l = new FirecrackerListener(UnixListener.listen(path));
    // The server's threads start while we wait for the VMM, so its faults are served at once
    // (`fetcher`: also a url source's fetcher thread).
    if (FaultServer.warmThreads < 2) FaultServer.warm(1, options);
    return l;
  }

  /** The socket path. */
  get path(): string {
    return this.socket.path;
  }

  /**
   * Waits for a VMM, reads its handshake, and starts serving its regions from the memory file and
   * layers. Every failure (a malformed handshake, regions past the memory file, a descriptor that is
   * not a userfaultfd) closes the connection and rejects with a {@link UffdError} saying what was wrong.
   */
  async accept(options: FirecrackerServeOptions): Promise<FirecrackerSession> {
    if (!options || (typeof options.memFile !== "string" && options.source === undefined)) {
      throw invalid("firecracker", "memFile (the snapshot's memory file) or source is required");
    }
    const what = options.source?.kind === "url" ? options.source.url : options.memFile;
    const conn = await this.socket.accept({ timeoutMs: options.acceptTimeoutMs, signal: options.signal });
    const t0 = performance.now();
    let fd = -1;
    try {
      const pid = peerCredentials(conn).pid;
      const hs = await readHandshake(conn, { timeoutMs: options.handshakeTimeoutMs });
      fd = hs.fd;
      const ps = hs.regions[0].pageSize;
      const uffd = Userfaultfd.fromFd(fd, ["EVENT_REMOVE"], { remote: true });
      fd = -1; // owned by the wrapper, then by the server
      let server: FaultServer;
      try {
        server = await FaultServer.start({
          source: options.source ??
            { kind: "snapshot", path: options.memFile!, layers: options.layers ?? [] },
          remote: { uffd, regions: hs.regions, pageSize: ps },
          readahead: options.readahead ?? "adaptive",
          prefetch: options.prefetch,
          record: options.record,
          populate: options.populate ?? false,
          onRemove: "zero",
        });
      } catch (e) {
        uffd.close();
        if (e instanceof UffdError && e.source === "library") {
          throw new UffdError("firecracker", e.errno, {
            source: "library",
            detail: `cannot serve the VMM's regions from ${what}: ${e.message}`,
          });
        }
        throw e;
      }
      return new FirecrackerSession(server, hs.regions, conn, pid, performance.now() - t0, options);
    } catch (e) {
      if (fd >= 0) libc.close(fd);
      libc.close(conn);
      throw e;
    }
  }

  /** Closes the socket and removes its path; safe twice. */
  close(): void {
    this.socket.close();
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
