/**
 * `uffd firecracker`: a page-fault handler for one Firecracker snapshot restore. Listens on the
 * socket, serves the VMM's guest memory from the memory file and diff layers until the VMM hangs
 * up, then prints a summary.
 * @module
 */
import process from "node:process";
import { parseArgs } from "node:util";
import {
  FirecrackerListener,
  type FirecrackerServeOptions,
  type FirecrackerSummary,
} from "../src/firecracker.ts";
import { loadWorkingSet, saveWorkingSet } from "../src/server/working_set.ts";
import { openUrlSource } from "../src/server/url.ts";
import { UffdError } from "../src/errors.ts";

/** Help text of the command. */
export const FIRECRACKER_USAGE = `Usage: uffd firecracker --socket PATH --mem-file PATH [options]

Serves one Firecracker snapshot restore (mem_backend {"backend_type": "Uffd", "backend_path": PATH}):
listens on PATH, takes the VMM's userfaultfd and regions, serves guest memory from the memory file
(and diff layers) until the VMM exits, then prints a summary and exits 0.

  --socket PATH              the Unix socket to listen on (a stale socket there is replaced)
  --mem-file PATH            the snapshot's memory file
  --mem-url URL              or the memory file over HTTP (S3/GCS presigned URLs, nginx, any server that
                             answers Range with 206): fetched in chunks into a memory cache
  --chunk-size BYTES         HTTP range size and cache chunk (default 2097152)
  --cache-dir DIR            keep fetched chunks there: a later restore of the same object fetches nothing
  --cache-mib N              memory cache size (default 256)
  --concurrency N            range requests in flight (default 8)
  --fetch-timeout-ms N       per request (default 10000); --fetch-retries N (default 3)
  --layer PATH               a diff snapshot on top (repeatable, bottom first): a page comes from the
                             topmost file with data there; holes fall through; a hole everywhere is zeros
  --readahead N|adaptive     pages placed per fault (default adaptive: doubles on sequential faults to 64)
  --record FILE              write the pages installed on demand, in first-touch order (a working set)
  --prefetch FILE            install that working set right after the handshake (demand faults first)
  --populate                 read the memory file and layers ahead in the background while serving, as
                             Firecracker's example handler does with MAP_POPULATE (a cold page cache is
                             then read in large requests; costs page cache for the whole file)
  --populate-sync            the same, all of it at the handshake, as MAP_POPULATE does (serving meanwhile:
                             the example handler's exact design, for comparisons)
  --kill-on-error            SIGKILL the VMM on a fatal handler error, so the guest never hangs silently
  --accept-timeout-ms N      give up when no VMM connects in time (default: wait)
  --handshake-timeout-ms N   how long the handshake may take once connected (default 5000)
  --json                     print the summary as JSON

Exit status: 0 served until the VMM hung up; 1 a fatal error while serving; 2 usage; 3 the restore
could not start (bad handshake, a memory file that does not fit the regions, no connection).`;

function fail(code: number, message: string): number {
  console.error(`uffd firecracker: ${message}`);
  return code;
}

function mib(n: number): string {
  return `${(n / 1048576).toFixed(1)} MiB`;
}

/** The summary as the command prints it. */
export function formatSummary(s: FirecrackerSummary): string {
  const lines = [
    `served VMM pid ${s.vmmPid}: ${s.regions} region(s), ${mib(s.guestBytes)} of ${s.pageSize}-byte pages; ` +
    `ended by ${s.end}${s.error ? `: ${s.error}` : ""}${s.killed ? " (VMM killed)" : ""}`,
    `faults ${s.faults}, pages ${s.pages} (${
      mib(s.bytes)
    }), prefetched ${s.prefetched}, zero pages ${s.zeroPages}, ` +
    `removed ${s.removed}`,
    `eexist ${s.eexist}, eagain ${s.eagain}, errors ${s.errors}; handshake ${s.handshakeMs.toFixed(1)} ms, ` +
    `time to serve ${s.serveMs.toFixed(1)} ms` +
    (s.prefetched ? `, prefetch installed in ${s.prefetchMs.toFixed(1)} ms` : ""),
  ];
  if (s.workingSetPages) lines.push(`working set: ${s.workingSetPages} pages recorded`);
  if (s.requests !== undefined) {
    lines.push(
      `fetched ${mib(s.fetchedBytes ?? 0)} in ${s.requests} range requests (mean ${
        (s.fetchMeanMs ?? 0).toFixed(1)
      } ms, worst ${(s.fetchMaxMs ?? 0).toFixed(1)} ms), ${s.cacheHits} chunks from the cache directory, ` +
        `${s.fetchRetries} retries`,
    );
  }
  return lines.join("\n");
}

/** Runs `uffd firecracker ...`; resolves with the exit status. */
export async function runFirecracker(args: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        socket: { type: "string" },
        "mem-file": { type: "string" },
        "mem-url": { type: "string" },
        "chunk-size": { type: "string" },
        "cache-dir": { type: "string" },
        "cache-mib": { type: "string" },
        concurrency: { type: "string" },
        "fetch-timeout-ms": { type: "string" },
        "fetch-retries": { type: "string" },
        layer: { type: "string", multiple: true },
        readahead: { type: "string" },
        record: { type: "string" },
        prefetch: { type: "string" },
        populate: { type: "boolean" },
        "populate-sync": { type: "boolean" },
        "kill-on-error": { type: "boolean" },
        "accept-timeout-ms": { type: "string" },
        "handshake-timeout-ms": { type: "string" },
        json: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    return fail(2, `${e instanceof Error ? e.message : String(e)}\n\n${FIRECRACKER_USAGE}`);
  }
  if (values.help) {
    console.log(FIRECRACKER_USAGE);
    return 0;
  }
  if (!values.socket) return fail(2, `--socket PATH is required\n\n${FIRECRACKER_USAGE}`);
  if (!values["mem-file"] === !values["mem-url"]) {
    return fail(2, `give --mem-file PATH or --mem-url URL (one of them)\n\n${FIRECRACKER_USAGE}`);
  }
  if (values["mem-url"] && values.layer?.length) {
    return fail(2, "--layer works with --mem-file: HTTP does not tell a diff layer's holes from its data");
  }
  type IntOption =
    | "accept-timeout-ms"
    | "handshake-timeout-ms"
    | "chunk-size"
    | "cache-mib"
    | "concurrency"
    | "fetch-timeout-ms"
    | "fetch-retries";
  const ms = (name: IntOption, min = 1): number | undefined => {
    const v = values[name];
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new RangeError(`--${name} must be a whole number >= ${min}`);
    return n;
  };
  let readahead: FirecrackerServeOptions["readahead"] = "adaptive";
  const options: FirecrackerServeOptions = values["mem-file"]
    ? { memFile: values["mem-file"], layers: values.layer ?? [] }
    : {};
  try {
    if (values.readahead !== undefined && values.readahead !== "adaptive") {
      const n = Number(values.readahead);
      if (!Number.isInteger(n) || n < 1) {
        throw new RangeError(`--readahead must be a whole number >= 1 or adaptive`);
      }
      readahead = n;
    }
    options.readahead = readahead;
    options.acceptTimeoutMs = ms("accept-timeout-ms");
    options.handshakeTimeoutMs = ms("handshake-timeout-ms");
    options.killOnError = values["kill-on-error"] ?? false;
    options.record = values.record !== undefined;
    options.populate = values["populate-sync"] ? "sync" : values.populate ?? false;
    if (values.prefetch !== undefined) options.prefetch = loadWorkingSet(values.prefetch);
    if (values["mem-url"]) {
      const cacheMib = ms("cache-mib");
      const probe = {
        chunkSize: ms("chunk-size"),
        cacheBytes: cacheMib === undefined ? undefined : cacheMib << 20,
        cacheDir: values["cache-dir"],
        concurrency: ms("concurrency"),
        timeoutMs: ms("fetch-timeout-ms"),
        retries: ms("fetch-retries", 0),
      };
      try {
        // Probed before listening: a server that cannot serve ranges fails now, not mid-restore.
        options.source = await openUrlSource(values["mem-url"], probe);
      } catch (e) {
        return fail(3, e instanceof Error ? e.message : String(e));
      }
    }
  } catch (e) {
    return fail(2, e instanceof Error ? e.message : String(e));
  }
  const abort = new AbortController();
  const onSignal = (): void => abort.abort();
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  options.signal = abort.signal;
  let listener: FirecrackerListener;
  try {
    listener = FirecrackerListener.listen(values.socket, { fetcher: options.source?.kind === "url" });
  } catch (e) {
    return fail(3, e instanceof Error ? e.message : String(e));
  }
  try {
    console.error(`uffd firecracker: listening on ${listener.path}`);
    let session;
    try {
      session = await listener.accept(options);
    } catch (e) {
      return fail(3, e instanceof UffdError || e instanceof Error ? e.message : String(e));
    } finally {
      listener.close(); // one VMM per run: the path goes away once it is connected
    }
    console.error(
      `uffd firecracker: serving VMM pid ${session.vmmPid}: ${session.regions.length} region(s) of ` +
        `${session.regions[0].pageSize}-byte pages` +
        (options.prefetch ? `, prefetching ${options.prefetch.runs.length} run(s)` : ""),
    );
    session.prefetched.then((p) => {
      if (p) {
        console.error(`uffd firecracker: prefetch installed: ${p.pages} page(s) in ${p.ms.toFixed(1)} ms`);
      }
    });
    const summary = await session.done;
    if (values.record !== undefined) {
      try {
        saveWorkingSet(values.record, session.workingSet());
      } catch (e) {
        return fail(
          1,
          `cannot write the working set to ${values.record}: ${e instanceof Error ? e.message : e}`,
        );
      }
    }
    console.log(values.json ? JSON.stringify(summary) : formatSummary(summary));
    return summary.end === "error" ? 1 : 0;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}
