/**
 * The fetcher thread of a `url` source: HTTP range requests into the server's chunk cache.
 *
 * How the synchronous fault loop and the fetches meet: the serving thread never waits on the
 * network. For a fault on a chunk that is not cached it picks a cache slot, marks the chunk
 * FETCHING, hands its index to this thread and parks the fault; then it goes on serving other
 * faults (of cached chunks) and blocks in poll() on the userfaultfd, its stop descriptor and a
 * completion eventfd. This thread keeps up to `concurrency` requests in flight, writes each body
 * straight into the chunk's slot, marks it READY (or FAILED, with the reason in the error buffer),
 * and signals the eventfd. The serving thread then resolves the faults parked on that chunk with a
 * COPY from the slot: from then on the chunk is an address source.
 *
 * Two ways to make the requests (`UrlInit.fetchPath`, shown as `stats.fetchPath`):
 * - `raw` (`http://`, no proxy): the serving thread pushes chunk indices into a shared ring and
 *   signals an eventfd; this thread runs one synchronous loop (fetcher_raw.ts) that polls that
 *   eventfd and its keep-alive sockets (libc socket/connect/send/poll/recv) and reads each body
 *   with recv(2) straight into the slot: no runtime buffers, no promise per read.
 * - `fetch` (`https://`, a proxy variable, or after the raw path met a redirect, a chunked or
 *   encoded body): the runtime's `fetch()`, the requests arriving as MessagePort messages (or,
 *   after a switch, taken from the ring), each body streamed into the slot.
 *
 * Checks on every response, the same on both paths (checkAnswer, ChunkStore.landed): 206 with a
 * Content-Range naming exactly the bytes asked for (a 200 is a server that ignores Range), the
 * whole body and no more, the same ETag and length as when the source was opened, and optionally
 * a SHA-256 per chunk. Timeouts, connection failures, 5xx/429 and short bodies are retried with
 * exponential backoff; a changed object or a checksum mismatch is not. A chunk that fails is
 * resolved by the server's `onError` policy (poison by default), never with zeros.
 * @module
 */
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { libc } from "../../ffi/mod.ts";
import { CHUNK_STATE, CTRL, FETCH_PATH, STAT, STATE, type UrlInit } from "./layout.ts";
import { runRaw } from "./fetcher_raw.ts";

/** A failed attempt at a chunk: what went wrong, and whether another attempt may succeed. */
export class ChunkError extends Error {
  /** Whether the request is worth another attempt (a timeout, a 5xx, a short body). */
  readonly retry: boolean;
  /** The message, and whether to retry. */
  constructor(message: string, retry: boolean) {
    super(message);
    this.retry = retry;
  }
}

/** What a response's head said, as both paths read it. */
export interface Answer {
  /** HTTP status code. */
  status: number;
  /** Its reason phrase (may be empty). */
  statusText: string;
  /** The Content-Range header, or null. */
  contentRange: string | null;
  /** The ETag header, or null. */
  etag: string | null;
}

/**
 * Checks a response's head against the request for bytes [start, end) of the source: throws a
 * {@link ChunkError} saying what was wrong, or returns when the body may be read into the slot.
 */
export function checkAnswer(u: UrlInit, start: number, end: number, a: Answer): void {
  if (a.status === 200) {
    throw new ChunkError(
      `${u.url} answered 200 (the whole object) to a Range request: the server does not serve ranges`,
      false,
    );
  }
  if (a.status !== 206) {
    throw new ChunkError(
      `${u.url} answered ${a.status} ${a.statusText} to bytes ${start}-${end - 1}`,
      a.status >= 500 || a.status === 429,
    );
  }
  const range = a.contentRange ?? "";
  const m = range.match(/^bytes (\d+)-(\d+)\/(\d+|\*)$/);
  if (m && m[3] !== "*" && Number(m[3]) !== u.length) {
    throw new ChunkError(
      `${u.url} changed: its length is now ${m[3]}, was ${u.length} when the restore began`,
      false,
    );
  }
  if (u.etag !== null && a.etag !== null && a.etag !== u.etag) {
    throw new ChunkError(`${u.url} changed: ETag ${a.etag}, was ${u.etag} when the restore began`, false);
  }
  if (!m || Number(m[1]) !== start || Number(m[2]) !== end - 1) {
    throw new ChunkError(`${u.url} sent Content-Range "${range}" for bytes ${start}-${end - 1}`, false);
  }
}

/** The error of a body longer than the range asked for (not retried). */
export function tooLong(u: UrlInit, start: number, n: number): ChunkError {
  return new ChunkError(`${u.url} sent more than the ${n} bytes asked for at ${start}`, false);
}

/** The error of a body that ended early (retried). */
export function shortBody(u: UrlInit, start: number, got: number, n: number): ChunkError {
  return new ChunkError(`${u.url} sent a short body: ${got} of ${n} bytes at ${start}`, true);
}

/** What both paths share: the cache slots, the cache directory, the counters, success and failure. */
export interface ChunkStore {
  /** The source. */
  u: UrlInit;
  /** The chunk's first byte and its end (exclusive). */
  bounds(c: number): [number, number];
  /** The address of chunk c's slot (the view that holds the cache is kept by the store). */
  slotAddress(c: number): number;
  /** The bytes of chunk c's slot. */
  slot(c: number): Uint8Array;
  /** Chunk c from the cache directory into its slot, marked READY: true if it was there. */
  fromCacheDir(c: number): boolean;
  /**
   * The body of chunk c is in its slot (`got` bytes, all of them): checks its SHA-256, counts the
   * request that began at `t0` (performance.now()), writes the cache directory, marks it READY.
   * Throws a {@link ChunkError} (nothing marked) when the checksum does not match.
   */
  landed(c: number, got: number, t0: number): void;
  /**
   * Attempt `attempt` (0 first) at chunk c failed: the backoff in ms before the next attempt, or
   * -1 when there is none (the chunk is then FAILED, the message recorded, the server signalled).
   */
  failed(c: number, attempt: number, e: unknown): number;
  /** Whether the server has stopped (its eventfds are about to be closed). */
  stopped(): boolean;
  /** Counts a request made (retries included). */
  requested(): void;
}

/** Makes the {@link ChunkStore} of a source. */
export function chunkStore(
  u: UrlInit,
  stats: Float64Array,
  ctrl: Int32Array,
  errorBuf: Uint8Array,
): ChunkStore {
  const state = new Int32Array(u.state);
  const slotOf = new Int32Array(u.slotOf);
  const one = new Uint8Array([1, 0, 0, 0, 0, 0, 0, 0]);
  const cacheView = new Uint8Array(u.cache, u.cacheOffset, u.slots * u.chunkSize);
  const cacheBase = libc.addressOf(cacheView);
  const dir = u.cacheDir ? join(u.cacheDir, cacheKey(u)) : undefined;
  if (dir) mkdirSync(dir, { recursive: true });
  const stopped = (): boolean => Atomics.load(ctrl, CTRL.state) >= STATE.stopped;
  const done = (c: number, ok: boolean): void => {
    Atomics.store(state, c, ok ? CHUNK_STATE.ready : CHUNK_STATE.failed);
    // Once the server stops, its eventfd is about to be closed: never write to a reused number.
    if (!stopped()) libc.write(u.doneFd, one, 8);
  };
  const bounds = (c: number): [number, number] => {
    const start = c * u.chunkSize;
    return [start, Math.min(u.length, start + u.chunkSize)];
  };
  const slot = (c: number): Uint8Array =>
    cacheView.subarray(slotOf[c] * u.chunkSize, (slotOf[c] + 1) * u.chunkSize);
  const checksumOk = (c: number, bytes: Uint8Array): boolean => {
    const want = u.sha256?.[c];
    if (!want) return true;
    return createHash("sha256").update(bytes).digest("hex") === want;
  };
  return {
    u,
    bounds,
    slot,
    stopped,
    requested: () => void stats[STAT.fetchRequests]++,
    slotAddress: (c) => cacheBase + slotOf[c] * u.chunkSize,
    fromCacheDir(c): boolean {
      if (!dir) return false;
      const [start, end] = bounds(c);
      try {
        const b = readFileSync(join(dir, String(c)));
        if (b.length !== end - start || !checksumOk(c, b)) return false;
        const dest = slot(c);
        dest.set(b);
        dest.fill(0, b.length);
        stats[STAT.cacheHits]++;
        done(c, true);
        return true;
      } catch {
        return false; // not cached yet
      }
    },
    landed(c, got, t0): void {
      const [start, end] = bounds(c);
      const dest = slot(c);
      const body = dest.subarray(0, got);
      if (!checksumOk(c, body)) {
        throw new ChunkError(
          `${u.url} bytes ${start}-${end - 1} do not match their SHA-256 in the manifest`,
          false,
        );
      }
      dest.fill(0, got);
      const us = (performance.now() - t0) * 1000;
      stats[STAT.fetchBytes] += got;
      stats[STAT.fetchUs] += us;
      stats[STAT.fetchCount]++;
      if (us > stats[STAT.fetchMaxUs]) stats[STAT.fetchMaxUs] = us;
      if (dir) {
        try {
          const tmp = join(dir, `${c}.${Math.random().toString(36).slice(2)}.tmp`);
          writeFileSync(tmp, body);
          renameSync(tmp, join(dir, String(c)));
        } catch {
          // a cache that cannot be written costs a later restore a fetch, nothing more
        }
      }
      done(c, true);
    },
    failed(c, attempt, e): number {
      const retry = e instanceof ChunkError ? e.retry : true;
      const msg = e instanceof Error
        ? (e.name === "TimeoutError" ? `timed out after ${u.timeoutMs} ms` : e.message)
        : String(e);
      if (!retry || attempt >= u.retries) {
        const [start, end] = bounds(c);
        const message = `chunk ${c} (bytes ${start}-${end - 1}) of ${u.url}: ${msg}` +
          (retry ? ` (after ${attempt + 1} attempts)` : "");
        stats[STAT.fetchErrors]++;
        const bytes = new TextEncoder().encode(message).subarray(0, errorBuf.length);
        errorBuf.set(bytes);
        Atomics.store(ctrl, CTRL.errorLen, bytes.length);
        done(c, false);
        return -1;
      }
      stats[STAT.fetchRetries]++;
      return Math.min(2000, 50 * 2 ** attempt) * (0.5 + Math.random());
    },
  };
}

/** Starts fetching for a url source; returns at once (the thread is terminated at close). */
export function fetchLoop(
  u: UrlInit,
  stats: Float64Array,
  ctrl: Int32Array,
  errorBuf: Uint8Array,
  ports: { on(ev: "message", f: (c: number) => void): void }[],
): void {
  const store = chunkStore(u, stats, ctrl, errorBuf);
  const push = fetchQueue(store);
  if (u.fetchPath === "raw") {
    stats[STAT.fetchPath] = FETCH_PATH.raw;
    void runRaw(store, new Int32Array(u.ring), (pending) => {
      // The raw path met an answer it does not handle: fetch() from now on, the ring polled.
      stats[STAT.fetchPath] = FETCH_PATH.fetch;
      for (const c of pending) push(c);
      const ring = new Int32Array(u.ring);
      const efd = new Uint8Array(8);
      const poll = (): void => {
        if (store.stopped()) return;
        libc.read(u.reqFd, efd, 8);
        takeRing(ring, push);
        setTimeout(poll, 2);
      };
      poll();
    });
    return;
  }
  stats[STAT.fetchPath] = FETCH_PATH.fetch;
  // Requests come from the serving thread (and from a standby once it serves): chunk indices.
  for (const port of ports) port.on("message", push);
}

/**
 * Takes the chunk indices pushed into a request ring (see UrlInit.ring), in order, each to `f`.
 * An entry reserved but not yet written ends the pass: its producer signals the eventfd after.
 */
export function takeRing(ring: Int32Array, f: (c: number) => void): void {
  const mask = ring.length - 3;
  for (;;) {
    const h = ring[1];
    const i = 2 + (h & mask);
    const c = Atomics.load(ring, i);
    if (c < 0) return;
    Atomics.store(ring, i, -1);
    ring[1] = (h + 1) | 0;
    f(c);
  }
}

/** The fetch() path: a queue of chunks, up to `concurrency` fetches in flight. */
function fetchQueue(store: ChunkStore): (c: number) => void {
  const u = store.u;
  const queue: number[] = [];
  let inflight = 0;
  // Bun's fetch queues requests behind busy keep-alive connections to the same host (measured: 4
  // parallel 4 MiB ranges from nginx took 105-118 ms, one after another; with a connection each,
  // 40-58 ms): ask for a connection per request there.
  const closeHeader: Record<string, string> = libc.runtime === "bun" ? { Connection: "close" } : {};

  async function oneChunk(c: number): Promise<void> {
    if (store.fromCacheDir(c)) return; // the cache directory first
    const [start, end] = store.bounds(c);
    const n = end - start;
    for (let attempt = 0;; attempt++) {
      const t0 = performance.now();
      let r: Response | undefined;
      try {
        store.requested();
        r = await fetch(u.url, {
          headers: { ...u.headers, ...closeHeader, Range: `bytes=${start}-${end - 1}` },
          signal: AbortSignal.timeout(u.timeoutMs),
        });
        checkAnswer(u, start, end, {
          status: r.status,
          statusText: r.statusText,
          contentRange: r.headers.get("content-range"),
          etag: r.headers.get("etag"),
        });
        // Streamed straight into the slot (no whole-body buffer); too many bytes is an error too.
        const dest = store.slot(c);
        let got = 0;
        const reader = r.body!.getReader();
        r = undefined;
        for (;;) {
          const { done: eof, value } = await reader.read();
          if (eof) break;
          if (got + value.length > n) {
            await reader.cancel();
            throw tooLong(u, start, n);
          }
          dest.set(value, got);
          got += value.length;
        }
        if (got !== n) throw shortBody(u, start, got, n);
        store.landed(c, got, t0);
        return;
      } catch (e) {
        await r?.body?.cancel().catch(() => {});
        const backoff = store.failed(c, attempt, e);
        if (backoff < 0) return;
        await new Promise((res) => setTimeout(res, backoff));
      }
    }
  }

  const pump = (): void => {
    while (inflight < u.concurrency && queue.length > 0) {
      inflight++;
      void oneChunk(queue.shift()!).finally(() => {
        inflight--;
        pump();
      });
    }
  };
  return (c: number) => {
    queue.push(c);
    pump();
  };
}

/** The cache directory's key of a source: the object (url, ETag, length) and the chunk size. */
export function cacheKey(u: { url: string; etag: string | null; length: number; chunkSize: number }): string {
  return createHash("sha256").update(`${u.url}\n${u.etag}\n${u.length}\n${u.chunkSize}`).digest("hex").slice(
    0,
    32,
  );
}
