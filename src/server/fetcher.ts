/**
 * The fetcher thread of a `url` source: HTTP range requests into the server's chunk cache.
 *
 * How the synchronous fault loop and the asynchronous fetches meet: the serving thread never
 * waits on the network. For a fault on a chunk that is not cached it picks a cache slot, marks the
 * chunk FETCHING, sends its index to this thread and parks the fault; then it
 * goes on serving other faults (of cached chunks) and blocks in poll() on the userfaultfd, its stop
 * descriptor and a completion eventfd. The request is a message on a MessagePort straight to this
 * thread (one per chunk, never per fault; not through the main thread, which may itself be blocked
 * on a fault). This thread's event loop runs the fetches, keeps up to `concurrency` in flight, writes each body
 * straight into the chunk's slot, marks it READY (or FAILED, with the reason in the error buffer),
 * and signals the eventfd. The serving thread then resolves the faults parked on that chunk with a
 * COPY from the slot: from then on the chunk is an address source.
 *
 * Checks on every response: 206 with a Content-Range naming exactly the bytes asked for (a 200 is a
 * server that ignores Range), the whole body, the same ETag and length as when the source was
 * opened, and optionally a SHA-256 per chunk. Timeouts, connection failures and short bodies are
 * retried with exponential backoff; a changed object or a checksum mismatch is not. A chunk that
 * fails is resolved by the server's `onError` policy (poison by default), never with zeros.
 * @module
 */
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { libc } from "../../ffi/mod.ts";
import { CHUNK_STATE, CTRL, STAT, STATE, type UrlInit } from "./layout.ts";

/** Starts fetching for a url source; resolves never (the thread is terminated at close). */
export function fetchLoop(
  u: UrlInit,
  stats: Float64Array,
  ctrl: Int32Array,
  errorBuf: Uint8Array,
  ports: { on(ev: "message", f: (c: number) => void): void }[],
): void {
  const state = new Int32Array(u.state);
  const slotOf = new Int32Array(u.slotOf);
  const one = new BigUint64Array([1n]);
  const queue: number[] = [];
  // Bun's fetch queues requests behind busy keep-alive connections to the same host (measured: 4
  // parallel 4 MiB ranges from nginx took 105-118 ms, one after another; with a connection each,
  // 40-58 ms): ask for a connection per request there.
  const closeHeader: Record<string, string> = libc.runtime === "bun" ? { Connection: "close" } : {};
  let inflight = 0;
  const dir = u.cacheDir ? join(u.cacheDir, cacheKey(u)) : undefined;
  if (dir) mkdirSync(dir, { recursive: true });

  const record = (message: string): void => {
    stats[STAT.fetchErrors]++;
    const bytes = new TextEncoder().encode(message).subarray(0, errorBuf.length);
    errorBuf.set(bytes);
    Atomics.store(ctrl, CTRL.errorLen, bytes.length);
  };

  const done = (c: number, ok: boolean): void => {
    Atomics.store(state, c, ok ? CHUNK_STATE.ready : CHUNK_STATE.failed);
    // Once the server stops, its eventfd is about to be closed: never write to a reused number.
    if (Atomics.load(ctrl, CTRL.state) < STATE.stopped) libc.write(u.doneFd, one, 8);
  };

  async function one_chunk(c: number): Promise<void> {
    const start = c * u.chunkSize;
    const end = Math.min(u.length, start + u.chunkSize); // exclusive
    const slot = slotOf[c];
    const dest = new Uint8Array(u.cache, u.cacheOffset + slot * u.chunkSize, u.chunkSize);
    // The cache directory first (a later restore reuses what an earlier one fetched).
    if (dir) {
      try {
        const b = readFileSync(join(dir, String(c)));
        if (b.length === end - start && checksumOk(c, b)) {
          dest.set(b);
          dest.fill(0, b.length);
          stats[STAT.cacheHits]++;
          done(c, true);
          return;
        }
      } catch {
        // not cached yet
      }
    }
    for (let attempt = 0;; attempt++) {
      const t0 = performance.now();
      let retry = true;
      try {
        stats[STAT.fetchRequests]++;
        const r = await fetch(u.url, {
          headers: { ...u.headers, ...closeHeader, Range: `bytes=${start}-${end - 1}` },
          signal: AbortSignal.timeout(u.timeoutMs),
        });
        if (r.status === 200) {
          retry = false;
          await r.body?.cancel();
          throw new Error(
            `${u.url} answered 200 (the whole object) to a Range request: the server does not serve ranges`,
          );
        }
        if (r.status !== 206) {
          retry = r.status >= 500 || r.status === 429;
          await r.body?.cancel();
          throw new Error(`${u.url} answered ${r.status} ${r.statusText} to bytes ${start}-${end - 1}`);
        }
        const range = r.headers.get("content-range") ?? "";
        const m = range.match(/^bytes (\d+)-(\d+)\/(\d+|\*)$/);
        const etag = r.headers.get("etag");
        if (m && m[3] !== "*" && Number(m[3]) !== u.length) {
          retry = false;
          await r.body?.cancel();
          throw new Error(
            `${u.url} changed: its length is now ${m[3]}, was ${u.length} when the restore began`,
          );
        }
        if (u.etag !== null && etag !== null && etag !== u.etag) {
          retry = false;
          await r.body?.cancel();
          throw new Error(`${u.url} changed: ETag ${etag}, was ${u.etag} when the restore began`);
        }
        if (!m || Number(m[1]) !== start || Number(m[2]) !== end - 1) {
          retry = false;
          await r.body?.cancel();
          throw new Error(`${u.url} sent Content-Range "${range}" for bytes ${start}-${end - 1}`);
        }
        // Streamed straight into the slot (no whole-body buffer); too many bytes is an error too.
        let got = 0;
        const reader = r.body!.getReader();
        for (;;) {
          const { done: eof, value } = await reader.read();
          if (eof) break;
          if (got + value.length > end - start) {
            await reader.cancel();
            retry = false;
            throw new Error(`${u.url} sent more than the ${end - start} bytes asked for at ${start}`);
          }
          dest.set(value, got);
          got += value.length;
        }
        if (got !== end - start) {
          throw new Error(`${u.url} sent a short body: ${got} of ${end - start} bytes at ${start}`);
        }
        const body = dest.subarray(0, got);
        if (!checksumOk(c, body)) {
          retry = false;
          throw new Error(`${u.url} bytes ${start}-${end - 1} do not match their SHA-256 in the manifest`);
        }
        dest.fill(0, got);
        const us = (performance.now() - t0) * 1000;
        stats[STAT.fetchBytes] += body.length;
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
        return;
      } catch (e) {
        const msg = e instanceof Error
          ? (e.name === "TimeoutError" ? `timed out after ${u.timeoutMs} ms` : e.message)
          : String(e);
        if (!retry || attempt >= u.retries) {
          record(
            `chunk ${c} (bytes ${start}-${end - 1}) of ${u.url}: ${msg}` +
              (retry ? ` (after ${attempt + 1} attempts)` : ""),
          );
          done(c, false);
          return;
        }
        stats[STAT.fetchRetries]++;
        const backoff = Math.min(2000, 50 * 2 ** attempt) * (0.5 + Math.random());
        await new Promise((r) => setTimeout(r, backoff));
      }
    }
  }

  function checksumOk(c: number, bytes: Uint8Array): boolean {
    const want = u.sha256?.[c];
    if (!want) return true;
    return createHash("sha256").update(bytes).digest("hex") === want;
  }

  const pump = (): void => {
    while (inflight < u.concurrency && queue.length > 0) {
      inflight++;
      void one_chunk(queue.shift()!).finally(() => {
        inflight--;
        pump();
      });
    }
  };
  // Requests come from the serving thread (and from a standby once it serves): chunk indices.
  for (const port of ports) {
    port.on("message", (c: number) => {
      queue.push(c);
      pump();
    });
  }
}

/** The cache directory's key of a source: the object (url, ETag, length) and the chunk size. */
export function cacheKey(u: { url: string; etag: string | null; length: number; chunkSize: number }): string {
  return createHash("sha256").update(`${u.url}\n${u.etag}\n${u.length}\n${u.chunkSize}`).digest("hex").slice(
    0,
    32,
  );
}
