/**
 * The url page source against `curl`: a memory file served by a real nginx on loopback (started
 * like tests/helpers/nginx.ts, with the config it writes), restored through
 * `FaultServer.start({ source: await openUrlSource(url), readahead: "adaptive" })` and touched one
 * byte per page, against `curl -s -o /dev/null URL` downloading the same file in the same run.
 *
 *   deno run -A bench/url.ts [--quick] [--rounds N] [--mib N] [--runtimes deno,bun] [--no-variants]
 *                            [--cases seq-warm,fetch-ranges,...]
 *
 * Each round takes `flock /tmp/uffd-bench.lock` once per runtime (other benchmarks share the
 * machine) and runs in that hold: the curl baseline (`--curl`: three downloads to /dev/null, timed
 * with performance.now() around a spawnSync, TTFB from curl's `%{time_starttransfer}`, and three into
 * /dev/shm as a reference), then the library cases in a child under that runtime (`--child`): a
 * sequential touch of every page (warm threads: `FaultServer.warm(1, { fetcher: true })` then ~200 ms
 * before the timed part; and cold: the child's first server), a random 10% touch without and with the
 * prefetch of a working set recorded once (`record: true`, `readahead: 1`), the sequential touch with
 * other `concurrency`, `chunkSize` and `cacheBytes`, and diagnostics that move the same bytes without
 * the fault server (fetch() into fresh or written-before memory, read(2) over libc sockets with
 * bench/url_raw.ts, first writes into fresh memory, the fault server from memory). Per case: the CPU
 * of every thread of the child and of nginx's worker (/proc schedstat), and from nginx's access log
 * (`$msec $request_time`) the requests it served and how long it took over each.
 *
 * Prints the tables and, as the LAST line, one JSON object with every run.
 * @module
 */
import { execFileSync, spawnSync } from "node:child_process";
import { readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import process from "node:process";
import type { WorkingSet } from "../mod.ts";

const root = fileURLToPath(new URL("..", import.meta.url));
const PS = 4096;
const MiB = 1 << 20;
const LOCK = "/tmp/uffd-bench.lock";
const MADV_HUGEPAGE = 14;
const RUNTIMES = ["deno", "bun"] as const;
type Runtime = typeof RUNTIMES[number];

/** The file's u32 word i (a murmur3 finalizer of i): any byte tells its page from its neighbours. */
function word(i: number): number {
  let h = Math.imul(i ^ 0x9e3779b9, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** The byte at the start of page p (what the touch reads). */
function expectedByte(p: number): number {
  return word(p * (PS / 4)) & 0xff;
}

/** 10% of the pages in a random order (xorshift32 Fisher-Yates, fixed seed). */
function randomPages(pages: number): Uint32Array {
  const order = new Uint32Array(pages);
  for (let i = 0; i < pages; i++) order[i] = i;
  let x = 0x2545f491;
  for (let i = pages - 1; i > 0; i--) {
    x = (x ^ (x << 13)) >>> 0;
    x = (x ^ (x >>> 17)) >>> 0;
    x = (x ^ (x << 5)) >>> 0;
    const j = x % (i + 1);
    const t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
  return order.slice(0, Math.round(pages / 10));
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** Wall clock in ms with sub-ms resolution (comparable with nginx's $msec). */
const epochMs = (): number => performance.timeOrigin + performance.now();

// ---------------------------------------------------------------------------------------------
// CPU accounting: this process's threads and nginx's worker, from /proc (schedstat, ns).

/** CPU ns of every thread of this process: tid -> [name, ns]. */
function threads(): Map<number, [string, number]> {
  const out = new Map<number, [string, number]>();
  for (const t of readdirSync("/proc/self/task")) {
    try {
      const ns = Number(readFileSync(`/proc/self/task/${t}/schedstat`, "utf8").split(" ")[0]);
      out.set(Number(t), [readFileSync(`/proc/self/task/${t}/comm`, "utf8").trim(), ns]);
    } catch {
      // the thread ended meanwhile
    }
  }
  return out;
}

/** CPU ns of a process's main thread (nginx's worker is single-threaded), or 0. */
function pidNs(pid: number): number {
  try {
    return Number(readFileSync(`/proc/${pid}/schedstat`, "utf8").split(" ")[0]);
  } catch {
    return 0;
  }
}

/** Transparent huge page faults so far: [allocated, fell back to 4 KiB]. */
function thpFaults(): [number, number] {
  const v = readFileSync("/proc/vmstat", "utf8");
  const get = (k: string): number => Number(v.match(new RegExp(`^${k} (\\d+)$`, "m"))?.[1] ?? 0);
  return [get("thp_fault_alloc"), get("thp_fault_fallback")];
}

/** CPU ms used between two snapshots: the total and the busiest threads ("name:ms"). */
function cpuBetween(
  a: Map<number, [string, number]>,
  b: Map<number, [string, number]>,
): { cpuMs: number; threads: string[] } {
  const rows: [string, number][] = [];
  let total = 0;
  for (const [tid, [name, ns]] of b) {
    const d = (ns - (a.get(tid)?.[1] ?? 0)) / 1e6;
    total += d;
    if (d >= 1) rows.push([tid === process.pid ? "main" : `${name}#${tid % 1000}`, d]);
  }
  rows.sort((x, y) => y[1] - x[1]);
  return { cpuMs: total, threads: rows.slice(0, 5).map(([n, d]) => `${n}:${d.toFixed(0)}`) };
}

/** Client-side overlap of request intervals: at most and on average over their span. */
function inFlight(spans: [number, number][]): { maxInFlight: number; meanInFlight: number } {
  const ev: [number, number][] = [];
  for (const [a, b] of spans) ev.push([a, 1], [b, -1]);
  ev.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  let cur = 0;
  let most = 0;
  for (const [, d] of ev) most = Math.max(most, cur += d);
  const busy = spans.reduce((s, [a, b]) => s + (b - a), 0);
  const span = Math.max(...spans.map((x) => x[1])) - Math.min(...spans.map((x) => x[0]));
  return { maxInFlight: most, meanInFlight: span > 0 ? busy / span : 0 };
}

// ---------------------------------------------------------------------------------------------
// --curl URL NGINXPID: the baseline, one download.

function curlOnce(url: string, nginxPid: number, out = "/dev/null"): Record<string, unknown> {
  const stat = (): number => {
    const f = readFileSync("/proc/self/stat", "utf8");
    const v = f.slice(f.lastIndexOf(")") + 2).split(" ");
    return (Number(v[13]) + Number(v[14])) * 10; // cutime + cstime, ticks of 10 ms
  };
  const c0 = stat();
  const n0 = pidNs(nginxPid);
  const from = epochMs();
  const t0 = performance.now();
  const r = spawnSync("curl", [
    "-s",
    "-o",
    out,
    "-w",
    "%{time_starttransfer} %{time_total} %{size_download}",
    url,
  ], { encoding: "utf8" });
  const ms = performance.now() - t0;
  const to = epochMs();
  if (r.status !== 0) throw new Error(`curl exited ${r.status}: ${r.stderr}`);
  const [ttfb, total, size] = r.stdout.trim().split(" ").map(Number);
  if (out !== "/dev/null") rmSync(out, { force: true });
  return {
    impl: "curl",
    case: out === "/dev/null" ? "curl" : "curl-tmpfs",
    from,
    to,
    ms,
    ttfbMs: ttfb * 1000,
    curlTotalMs: total * 1000,
    bytes: size,
    cpuMs: stat() - c0,
    nginxCpuMs: (pidNs(nginxPid) - n0) / 1e6,
    load: readFileSync("/proc/loadavg", "utf8").split(" ")[0],
  };
}

// ---------------------------------------------------------------------------------------------
// --child URL NGINXPID: the library cases under this runtime, one JSON line each.

type Kind =
  | "seq"
  | "rand-record"
  | "rand"
  | "rand-prefetch"
  | "fetch-whole"
  | "fetch-ranges"
  | "raw-ranges"
  | "fault-in"
  | "seq-memory";

interface CaseSpec {
  name: string;
  kind: Kind;
  warm?: boolean;
  chunkMiB?: number;
  concurrency?: number;
  /** Diagnostics: write into memory faulted in before (else fresh shared memory, like the cache). */
  prefaulted?: boolean;
  /** fetch-ranges: ask for a connection per request (what fetcher.ts does under Bun). */
  close?: boolean;
  /** Diagnostics: fresh memory with MADV_HUGEPAGE (2 MiB faults) instead of 4 KiB pages. */
  thp?: boolean;
  /** seq: the url source's cacheBytes. */
  cacheMiB?: number;
}

/** Cases of one child, in order (the cold one first: nothing of the server is loaded yet). */
function cases(variants: boolean, runtime: string): CaseSpec[] {
  const list: CaseSpec[] = [
    { name: "seq-cold", kind: "seq" },
    { name: "seq-warm", kind: "seq", warm: true },
    { name: "rand-record", kind: "rand-record", warm: true },
    { name: "rand", kind: "rand", warm: true },
    { name: "rand-prefetch", kind: "rand-prefetch", warm: true },
  ];
  if (variants) {
    for (const c of [4, 16]) list.push({ name: `seq-c${c}`, kind: "seq", warm: true, concurrency: c });
    for (const m of [1, 4]) list.push({ name: `seq-cs${m}`, kind: "seq", warm: true, chunkMiB: m });
  }
  // The chunk cache smaller than the file: its slots are reused, so most chunks land in memory
  // that was written before (the default 256 MiB cache gives every chunk of this file fresh memory).
  list.push({ name: "seq-cache32", kind: "seq", warm: true, cacheMiB: 32 });
  // Where the time goes: the same bytes without the fault server.
  const bun = runtime === "bun";
  list.push(
    { name: "fetch-whole", kind: "fetch-whole", prefaulted: true },
    { name: "fetch-ranges", kind: "fetch-ranges", close: bun },
    { name: "fetch-ranges-pre", kind: "fetch-ranges", close: bun, prefaulted: true },
    ...(bun ? [{ name: "fetch-ranges-pre-keepalive", kind: "fetch-ranges" as const, prefaulted: true }] : []),
    { name: "fetch-ranges-thp", kind: "fetch-ranges", close: bun, thp: true },
    { name: "raw-ranges", kind: "raw-ranges" },
    { name: "raw-ranges-pre", kind: "raw-ranges", prefaulted: true },
    { name: "raw-ranges-thp", kind: "raw-ranges", thp: true },
    // What writing into never-touched memory costs by itself: one write per page of fresh memory.
    { name: "fault-in", kind: "fault-in" },
    // The fault server alone: the same sequential touch from the file's bytes in memory (no network).
    { name: "seq-memory", kind: "seq-memory", warm: true },
  );
  return list;
}

/** One byte of each listed page (or of every page when `order` is null), into `got`. */
function touch(
  mem: Uint8Array,
  order: Uint32Array | null,
  n: number,
  got: Uint8Array,
  stamps: Float64Array,
  every: number,
): void {
  for (let k = 0; k < n; k++) {
    const p = order === null ? k : order[k];
    got[k] = mem[p * PS];
    if (k % every === 0) stamps[k / every] = performance.now();
  }
}

/** Range GETs as fetcher.ts makes them (streamed into `dest`), `concurrency` in flight. */
async function fetchRanges(
  url: string,
  dest: Uint8Array,
  chunk: number,
  concurrency: number,
  close: boolean,
): Promise<{ requests: number; spans: [number, number][]; headersMs: number[] }> {
  const n = Math.ceil(dest.length / chunk);
  const spans: [number, number][] = [];
  const headersMs: number[] = [];
  let next = 0;
  const one = async (c: number): Promise<void> => {
    const start = c * chunk;
    const end = Math.min(dest.length, start + chunk);
    const t0 = performance.now();
    const r = await fetch(url, {
      headers: { ...(close ? { Connection: "close" } : {}), Range: `bytes=${start}-${end - 1}` },
    });
    headersMs[c] = performance.now() - t0;
    if (r.status !== 206) throw new Error(`status ${r.status}`);
    const reader = r.body!.getReader();
    let got = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      dest.set(value, start + got);
      got += value.length;
    }
    if (got !== end - start) throw new Error(`short body ${got}`);
    spans[c] = [t0, performance.now()];
  };
  await Promise.all(
    Array.from({ length: Math.min(n, concurrency) }, async () => {
      while (next < n) await one(next++);
    }),
  );
  return { requests: n, spans, headersMs };
}

async function child(url: string, nginxPid: number, variants: boolean, only?: string[]): Promise<void> {
  const { alignedSharedBytes, FaultServer, openUrlSource } = await import("../mod.ts");
  const { libc } = await import("../ffi/mod.ts");
  const { rawRanges } = await import("./url_raw.ts");
  // The touch loop compiled before anything is timed.
  {
    const local = new Uint8Array(64 * PS);
    const got = new Uint8Array(64);
    const st = new Float64Array(64);
    for (let i = 0; i < 3000; i++) touch(local, null, 64, got, st, 8);
  }
  const probe = await openUrlSource(url);
  const length = probe.length;
  // The file's bytes in shared memory, for seq-memory (made before that case's timed part).
  let fileBytes: Uint8Array | undefined;
  const memoryCopy = (): Uint8Array => fileBytes!;
  const pages = length / PS;
  const randOrder = randomPages(pages);
  let ws: WorkingSet | undefined;
  const list = cases(variants, libc.runtime).filter((c) => !only || only.includes(c.name));
  // rand-prefetch needs the working set that rand-record records.
  if (only?.includes("rand-prefetch") && !only.includes("rand-record")) {
    list.unshift(cases(false, libc.runtime).find((c) => c.name === "rand-record")!);
  }
  for (const spec of list) {
    if (spec.kind === "seq-memory" && !fileBytes) {
      const b = alignedSharedBytes(length);
      const w = new Uint32Array(b.buffer, b.byteOffset, length / 4);
      for (let i = 0; i < w.length; i++) w[i] = word(i);
      fileBytes = b;
    }
    let warmThreads = 0;
    if (spec.warm) {
      FaultServer.warm(1, { fetcher: true });
      await sleep(200);
      warmThreads = FaultServer.warmThreads;
    }
    const chunkSize = (spec.chunkMiB ?? 2) * MiB;
    const concurrency = spec.concurrency ?? 8;
    const base = {
      impl: libc.runtime,
      case: spec.name,
      kind: spec.kind,
      chunkMiB: chunkSize / MiB,
      concurrency,
      warm: spec.warm ?? false,
      warmThreads,
    };
    if (spec.kind === "fault-in") {
      const dest = alignedSharedBytes(length);
      const th0 = threads();
      const t0 = performance.now();
      for (let i = 0; i < length; i += PS) dest[i] = 1;
      const ms = performance.now() - t0;
      const cpu = cpuBetween(th0, threads());
      console.log(
        JSON.stringify({ ...base, pages, bytes: length, ms, usPerPage: (ms * 1000) / pages, ...cpu }),
      );
      continue;
    }
    if (spec.kind === "fetch-whole" || spec.kind === "fetch-ranges" || spec.kind === "raw-ranges") {
      // Fresh shared memory, as the url source's chunk cache is (alignedSharedBytes).
      const dest = alignedSharedBytes(length, spec.thp ? 2 * MiB : PS);
      const address = libc.addressOf(dest);
      if (spec.thp) libc.madvise(address, length, MADV_HUGEPAGE);
      if (spec.prefaulted) { for (let i = 0; i < length; i += PS) dest[i] = 1; }
      const th0 = threads();
      const n0 = pidNs(nginxPid);
      const h0 = thpFaults();
      const from = epochMs();
      const t0 = performance.now();
      let r: { requests: number; spans: [number, number][]; headersMs?: number[] };
      if (spec.kind === "fetch-whole") r = await fetchRanges(url, dest, length, 1, false);
      else if (spec.kind === "fetch-ranges") {
        r = await fetchRanges(url, dest, chunkSize, concurrency, !!spec.close);
      } else r = rawRanges(url, address, length, chunkSize, concurrency);
      const ms = performance.now() - t0;
      const to = epochMs();
      const cpu = cpuBetween(th0, threads());
      const nginxCpuMs = (pidNs(nginxPid) - n0) / 1e6;
      const h1 = thpFaults();
      let bad = 0;
      for (let p = 0; p < pages; p++) if (dest[p * PS] !== expectedByte(p)) bad++;
      const means = r.spans.map(([a, b]) => b - a);
      console.log(JSON.stringify({
        ...base,
        prefaulted: !!spec.prefaulted,
        thp: !!spec.thp,
        connectionClose: !!spec.close,
        pages,
        bytes: length,
        ms,
        from,
        to,
        bad,
        requests: r.requests,
        fetchMeanMs: means.reduce((x, y) => x + y, 0) / means.length,
        fetchMaxMs: Math.max(...means),
        headersMeanMs: r.headersMs ? r.headersMs.reduce((x, y) => x + y, 0) / r.headersMs.length : undefined,
        ...inFlight(r.spans),
        ...cpu,
        nginxCpuMs,
        thpAlloc: h1[0] - h0[0],
        thpFallback: h1[1] - h0[1],
        load: readFileSync("/proc/loadavg", "utf8").split(" ")[0],
      }));
      await sleep(100);
      continue;
    }
    const order = spec.kind === "seq" || spec.kind === "seq-memory" ? null : randOrder;
    const n = order === null ? pages : order.length;
    const got = new Uint8Array(n);
    const every = order === null ? chunkSize / PS : 64;
    const stamps = new Float64Array(Math.ceil(n / every) + 1);
    const th0 = threads();
    const n0 = pidNs(nginxPid);
    const h0 = thpFaults();
    const from = epochMs();
    const t0 = performance.now();
    const source = spec.kind === "seq-memory"
      ? { kind: "bytes" as const, data: memoryCopy() }
      : await openUrlSource(url, {
        chunkSize,
        ...(spec.concurrency ? { concurrency: spec.concurrency } : {}),
        ...(spec.cacheMiB ? { cacheBytes: spec.cacheMiB * MiB } : {}),
      });
    const t1 = performance.now();
    const server = await FaultServer.start({
      source,
      readahead: spec.kind === "rand-record" ? 1 : "adaptive",
      ...(spec.kind === "rand-record" ? { record: true } : {}),
      ...(spec.kind === "rand-prefetch" ? { prefetch: ws } : {}),
    });
    const t2 = performance.now();
    const mem = server.bytes();
    touch(mem, order, n, got, stamps, every);
    const t3 = performance.now();
    const to = epochMs();
    const cpu = cpuBetween(th0, threads());
    const nginxCpuMs = (pidNs(nginxPid) - n0) / 1e6;
    const h1 = thpFaults();
    if (spec.kind === "rand-record") ws = server.workingSet();
    server.close();
    const s = server.stats;
    let bad = 0;
    for (let k = 0; k < n; k++) if (got[k] !== expectedByte(order === null ? k : order[k])) bad++;
    // Consumer-side: the gaps between the stamps (one per chunk sequentially, per 64 pages at random).
    const gaps: number[] = [];
    for (let i = 1; i < stamps.length && stamps[i] > 0; i++) gaps.push(stamps[i] - stamps[i - 1]);
    const fetchPhase = t3 - t1; // the fetcher's requests all happen between start and the touch's end
    console.log(JSON.stringify({
      ...base,
      cacheMiB: spec.cacheMiB ?? 256,
      pages: n,
      bytes: n * PS,
      ms: t3 - t0,
      openMs: t1 - t0,
      startMs: t2 - t1,
      touchMs: t3 - t2,
      ttfbMs: stamps[0] - t0,
      firstPageMs: stamps[0] - t2,
      from,
      to,
      bad,
      faults: s.faults,
      pagesPlaced: s.pages,
      requests: s.requests,
      fetchedBytes: s.fetchedBytes,
      memoryHits: s.memoryHits,
      fetchMeanMs: s.fetchMeanMs,
      fetchMaxMs: s.fetchMaxMs,
      // Little's law: request time over the fetch phase = requests in flight on average.
      meanInFlight: fetchPhase > 0 ? (s.requests * s.fetchMeanMs) / fetchPhase : 0,
      fetchRetries: s.fetchRetries,
      fetchErrors: s.fetchErrors,
      prefetched: s.prefetched,
      prefetchMs: s.prefetchMs,
      wsPages: ws ? ws.runs.reduce((a, [, c]) => a + c, 0) : 0,
      gapMedianMs: median(gaps),
      gapMaxMs: gaps.length ? Math.max(...gaps) : 0,
      gaps: order === null ? gaps.map((g) => Number(g.toFixed(2))) : undefined,
      ...cpu,
      nginxCpuMs,
      thpAlloc: h1[0] - h0[0],
      thpFallback: h1[1] - h0[1],
      load: readFileSync("/proc/loadavg", "utf8").split(" ")[0],
      lastError: server.lastError,
    }));
    await sleep(100);
  }
  FaultServer.coolDown();
}

// ---------------------------------------------------------------------------------------------
// The parent: nginx, the file, the rounds, the tables.

interface Options {
  quick: boolean;
  rounds: number;
  mib: number;
  runtimes: Runtime[];
  variants: boolean;
  cases?: string[];
}

function parseArgs(argv: string[]): Options {
  const quick = argv.includes("--quick");
  const value = (name: string): string | undefined => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : argv.find((a) => a.startsWith(name + "="))?.slice(name.length + 1);
  };
  const runtimes = (value("--runtimes") ?? "deno,bun").split(",").filter(Boolean) as Runtime[];
  for (const r of runtimes) if (!RUNTIMES.includes(r)) throw new Error(`unknown runtime ${r}`);
  return {
    quick,
    rounds: Number(value("--rounds") ?? (quick ? 2 : 5)),
    mib: Number(value("--mib") ?? (quick ? 64 : 256)),
    runtimes,
    variants: !argv.includes("--no-variants"),
    cases: value("--cases")?.split(",").filter(Boolean),
  };
}

type Result = Record<string, unknown> & { impl: string; case: string; ms: number };

/**
 * Runs the commands one after another in one hold of the benchmark lock (however long the wait
 * for it; each command at most 110 s); returns their JSON lines and what failed.
 */
function locked(cmds: string[][]): { results: Result[]; errors: string[] } {
  const q = (a: string): string => `'${a.replaceAll("'", "'\\''")}'`;
  const script = cmds.map((c, i) =>
    `timeout -k 5 110 ${c.map(q).join(" ")} || echo "step ${i} (${c.slice(0, 4).join(" ")}) failed: $?" >&2`
  ).join("; ");
  const r = spawnSync("flock", [LOCK, "sh", "-c", script], {
    cwd: root,
    encoding: "utf8",
    timeout: 3_600_000,
    maxBuffer: 64 << 20,
  });
  const results = (r.stdout ?? "").split("\n").filter((l) => l.startsWith("{")).map((l) =>
    JSON.parse(l) as Result
  );
  const errors = (r.stderr ?? "").split("\n").filter((l) => / failed: /.test(l) || /error/i.test(l));
  if (r.status !== 0 || r.error) errors.push(`flock: ${r.error ?? `exit ${r.status ?? r.signal}`}`);
  return { results, errors };
}

/**
 * nginx's side of the range requests logged in [from, to]: how many, how long nginx took over
 * each ($request_time: until the last byte went into the socket), and how many it had at once.
 */
function nginxSide(
  reqs: { start: number; end: number; range: string }[],
  from: number,
  to: number,
): { nginxRequests: number; nginxMeanMs: number; nginxMaxAtOnce: number } {
  const rs = reqs.filter((q) => q.range !== "bytes=0-0" && q.end >= from - 1 && q.end <= to + 50);
  if (rs.length === 0) return { nginxRequests: 0, nginxMeanMs: 0, nginxMaxAtOnce: 0 };
  const ev: [number, number][] = [];
  for (const q of rs) ev.push([q.start, 1], [q.end, -1]);
  ev.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let cur = 0;
  let most = 0;
  for (const [, d] of ev) most = Math.max(most, cur += d);
  const busy = rs.reduce((a, q) => a + (q.end - q.start), 0);
  return { nginxRequests: rs.length, nginxMeanMs: busy / rs.length, nginxMaxAtOnce: most };
}

function machine(): Record<string, string> {
  const sh = (c: string, a: string[]): string => {
    try {
      return execFileSync(c, a, { cwd: root, encoding: "utf8" }).trim();
    } catch {
      return "?";
    }
  };
  const dirty = sh("git", ["status", "--porcelain", "src", "ffi", "mod.ts"]) !== "";
  return {
    nproc: sh("nproc", []),
    kernel: sh("uname", ["-r"]),
    cpu: readFileSync("/proc/cpuinfo", "utf8").match(/model name\s*:\s*(.*)/)?.[1] ?? "?",
    date: new Date().toISOString(),
    deno: sh("node_modules/.bin/deno", ["--version"]).split("\n")[0],
    bun: sh("node_modules/.bin/bun", ["--version"]),
    curl: sh("curl", ["--version"]).split("\n")[0].split(" ").slice(0, 2).join(" "),
    nginx: spawnSync("/usr/sbin/nginx", ["-v"], { encoding: "utf8" }).stderr.trim(),
    commit: sh("git", ["rev-parse", "--short", "HEAD"]) + (dirty ? "+dirty(src)" : ""),
    load: readFileSync("/proc/loadavg", "utf8").trim(),
  };
}

function fmt(x: number | undefined, d = 1): string {
  return typeof x === "number" && Number.isFinite(x) ? x.toFixed(d) : "-";
}

function table(head: string[], body: string[][], left = 2): string {
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]): string =>
    "| " + cells.map((c, i) => (i < left ? c.padEnd(w[i]) : c.padStart(w[i]))).join(" | ") + " |";
  return [line(head), "|" + w.map((n, i) => "-".repeat(n + 1) + (i < left ? "-" : ":")).join("|") + "|"]
    .concat(body.map(line)).join("\n");
}

interface Row {
  impl: string;
  case: string;
  runs: Result[];
}

/** nginx's worker process (the master's only child). */
function nginxWorker(root: string): number {
  const master = Number(readFileSync(join(root, "..", "nginx.pid"), "utf8").trim());
  const kids = readFileSync(`/proc/${master}/task/${master}/children`, "utf8").trim().split(/\s+/).map(
    Number,
  );
  return kids[0] ?? master;
}

async function parent(opt: Options): Promise<void> {
  const started = performance.now();
  const env = machine();
  const { startNginx } = await import("../tests/helpers/nginx.ts");
  const ng = await startNginx();
  const bytes = opt.mib * MiB;
  {
    const w = new Uint32Array(bytes / 4);
    for (let i = 0; i < w.length; i++) w[i] = word(i);
    writeFileSync(join(ng.root, "mem"), new Uint8Array(w.buffer));
  }
  const url = `${ng.base}/ok/mem`;
  let worker = 0;
  for (let i = 0; i < 100 && worker === 0; i++) {
    try {
      worker = nginxWorker(ng.root);
    } catch {
      await sleep(20);
    }
  }
  console.error(
    `nginx at ${ng.base} (worker ${worker}), ${opt.mib} MiB file, ${opt.rounds} rounds, ${
      opt.runtimes.join(",")
    }`,
  );
  const rows: Row[] = [];
  const errors: string[] = [];
  const add = (r: Result): void => {
    let row = rows.find((x) => x.impl === r.impl && x.case === r.case);
    if (!row) rows.push(row = { impl: r.impl, case: r.case, runs: [] });
    row.runs.push(r);
  };
  const self = "bench/url.ts";
  const noVar = [
    ...(opt.variants ? [] : ["--no-variants"]),
    ...(opt.cases ? ["--cases", opt.cases.join(",")] : []),
  ];
  let held: number[] = [];
  try {
    // The file into the page cache, and nginx's first answers, before anything is timed.
    spawnSync("curl", ["-s", "-o", "/dev/null", url]);
    for (let round = 0; round < opt.rounds; round++) {
      // One hold of the lock per runtime: curl, then that runtime's cases (each hold well under 2 min).
      for (const rt of opt.runtimes) {
        const steps: string[][] = [
          ["node_modules/.bin/deno", "run", "-A", self, "--curl", url, String(worker)],
          rt === "deno"
            ? ["node_modules/.bin/deno", "run", "-A", self, "--child", url, String(worker), ...noVar]
            : ["node_modules/.bin/bun", "run", self, "--child", url, String(worker), ...noVar],
        ];
        const t = performance.now();
        const { results, errors: errs } = locked(steps);
        const reqs = ng.requests();
        for (const r of results) {
          if (typeof r.from === "number") Object.assign(r, nginxSide(reqs, r.from as number, r.to as number));
          if (r.impl === "curl") r.pairedWith = rt;
          r.round = round + 1;
          add(r);
        }
        const h = results.length > 0
          ? (Math.max(...results.map((r) => Number(r.to ?? 0))) - Number(results[0].from ?? 0)) / 1000
          : NaN;
        held = [...held, h];
        for (const e of errs) {
          errors.push(`round ${round + 1} ${rt}: ${e}`);
          console.error(`round ${round + 1} ${rt}: FAILED ${e}`);
        }
        console.error(
          `round ${round + 1} ${rt} (${((performance.now() - t) / 1000).toFixed(1)} s with the lock wait, ~${
            h.toFixed(0)
          } s measuring): ` + results.map((r) => `${r.impl} ${r.case} ${r.ms.toFixed(0)}`).join(", "),
        );
      }
    }
  } finally {
    await ng.stop();
  }

  // ---- tables ----
  const stat = (row: Row | undefined, k: string): { med: number; min: number; max: number } => {
    const xs = (row?.runs ?? []).map((r) => r[k]).filter((x): x is number => typeof x === "number");
    return { med: median(xs), min: Math.min(...xs), max: Math.max(...xs) };
  };
  const get = (impl: string, c: string): Row | undefined => rows.find((r) => r.impl === impl && r.case === c);
  /** The run whose time is the median (for its thread split). */
  const medianRun = (row: Row): Result => {
    const s = [...row.runs].sort((a, b) => a.ms - b.ms);
    return s[(s.length - 1) >> 1];
  };
  const curl = get("curl", "curl");
  const curlMs = stat(curl, "ms").med;
  const mibs = (ms: number, b: number): string => fmt(b / MiB / (ms / 1000), 0);
  const summary: Record<string, unknown>[] = [];
  const med = (row: Row, k: string, d = 1): string => fmt(stat(row, k).med, d);

  const seqHead = [
    "impl",
    "case",
    "median ms",
    "min",
    "max",
    "MiB/s",
    "vs curl",
    "TTFB ms",
    "open ms",
    "start ms",
    "first page ms",
    "requests",
    "fetch mean ms",
    "fetch max ms",
    "in flight",
    "CPU ms",
    "nginx CPU ms",
    "CPU vs curl",
  ];
  const cpuAll = (row: Row | undefined): number =>
    median((row?.runs ?? []).map((r) => Number(r.cpuMs ?? NaN) + Number(r.nginxCpuMs ?? NaN)));
  const curlCpu = cpuAll(get("curl", "curl"));
  const seqRow = (row: Row | undefined): string[] | undefined => {
    if (!row) return undefined;
    const t = stat(row, "ms");
    const lib = row.impl !== "curl";
    const ratio = curlMs / t.med;
    summary.push({
      impl: row.impl,
      case: row.case,
      medianMs: t.med,
      ratioToCurl: lib ? ratio : undefined,
      cpuRatioToCurl: lib ? curlCpu / cpuAll(row) : undefined,
      ttfbMs: stat(row, "ttfbMs").med,
    });
    return [
      row.impl,
      row.case,
      fmt(t.med),
      fmt(t.min),
      fmt(t.max),
      mibs(t.med, row.runs[0].bytes as number),
      lib ? fmt(ratio, 2) : "",
      med(row, "ttfbMs", 2),
      lib ? med(row, "openMs", 1) : "",
      lib ? med(row, "startMs", 1) : "",
      lib ? med(row, "firstPageMs", 1) : "",
      lib ? med(row, "requests", 0) : "1",
      lib ? med(row, "fetchMeanMs") : "",
      lib ? med(row, "fetchMaxMs") : "",
      lib ? med(row, "meanInFlight", 1) : "",
      med(row, "cpuMs", 0),
      med(row, "nginxCpuMs", 0),
      lib ? fmt(curlCpu / cpuAll(row), 2) : "",
    ];
  };
  const seqBody = [seqRow(curl)];
  seqBody.push(seqRow(get("curl", "curl-tmpfs")));
  for (const rt of opt.runtimes) {
    for (const c of ["seq-warm", "seq-cold", "seq-memory"]) seqBody.push(seqRow(get(rt, c)));
  }
  const seqTable = table(seqHead, seqBody.filter((x): x is string[] => x !== undefined));

  const randHead = [
    "impl",
    "case",
    "median ms",
    "min",
    "max",
    "pages",
    "faults",
    "requests",
    "fetched MiB",
    "prefetched",
    "prefetch ms",
    "fetch mean ms",
    "in flight",
    "CPU ms",
  ];
  const randBody: string[][] = [];
  for (const rt of opt.runtimes) {
    for (const c of ["rand-record", "rand", "rand-prefetch"]) {
      const row = get(rt, c);
      if (!row) continue;
      const t = stat(row, "ms");
      summary.push({ impl: rt, case: c, medianMs: t.med, faults: stat(row, "faults").med });
      randBody.push([
        rt,
        c,
        fmt(t.med),
        fmt(t.min),
        fmt(t.max),
        med(row, "pages", 0),
        med(row, "faults", 0),
        med(row, "requests", 0),
        fmt(stat(row, "fetchedBytes").med / MiB, 0),
        med(row, "prefetched", 0),
        med(row, "prefetchMs"),
        med(row, "fetchMeanMs"),
        med(row, "meanInFlight", 1),
        med(row, "cpuMs", 0),
      ]);
    }
  }
  const randTable = table(randHead, randBody);

  const varHead = [
    "impl",
    "concurrency",
    "chunk MiB",
    "cache MiB",
    "median ms",
    "min",
    "max",
    "MiB/s",
    "vs curl",
    "TTFB ms",
    "requests",
    "fetch mean ms",
    "in flight",
    "CPU ms",
  ];
  const varBody: string[][] = [];
  for (const rt of opt.runtimes) {
    if (!get(rt, "seq-c4")) continue;
    for (const c of ["seq-c4", "seq-warm", "seq-c16", "seq-cs1", "seq-cs4", "seq-cache32"]) {
      const row = get(rt, c);
      if (!row) continue;
      const t = stat(row, "ms");
      summary.push({ impl: rt, case: c, medianMs: t.med, ratioToCurl: curlMs / t.med });
      varBody.push([
        rt,
        String(row.runs[0].concurrency),
        String(row.runs[0].chunkMiB),
        String(row.runs[0].cacheMiB),
        fmt(t.med),
        fmt(t.min),
        fmt(t.max),
        mibs(t.med, row.runs[0].bytes as number),
        fmt(curlMs / t.med, 2),
        med(row, "ttfbMs", 1),
        med(row, "requests", 0),
        med(row, "fetchMeanMs"),
        med(row, "meanInFlight", 1),
        med(row, "cpuMs", 0),
      ]);
    }
  }
  const varTable = varBody.length ? table(varHead, varBody, 4) : "";

  const diagHead = [
    "impl",
    "case",
    "median ms",
    "min",
    "max",
    "MiB/s",
    "vs curl",
    "requests",
    "request mean ms",
    "to headers ms",
    "in flight max",
    "in flight mean",
    "CPU ms",
    "nginx CPU ms",
    "THP faults",
    "busiest threads, ms (median run)",
  ];
  const diagBody: string[][] = [];
  const cpuRow = (row: Row | undefined): void => {
    if (!row) return;
    const t = stat(row, "ms");
    const lib = row.impl !== "curl";
    summary.push({
      impl: row.impl,
      case: row.case,
      medianMs: t.med,
      ratioToCurl: lib ? curlMs / t.med : undefined,
    });
    diagBody.push([
      row.impl,
      row.case,
      fmt(t.med),
      fmt(t.min),
      fmt(t.max),
      mibs(t.med, row.runs[0].bytes as number),
      lib ? fmt(curlMs / t.med, 2) : "",
      lib ? med(row, "requests", 0) : "1",
      lib ? med(row, "fetchMeanMs") : "",
      row.runs[0].headersMeanMs !== undefined ? med(row, "headersMeanMs") : "",
      lib && row.runs[0].maxInFlight !== undefined ? med(row, "maxInFlight", 0) : "",
      lib ? med(row, "meanInFlight", 1) : "",
      med(row, "cpuMs", 0),
      med(row, "nginxCpuMs", 0),
      lib
        ? `${med(row, "thpAlloc", 0)}${
          stat(row, "thpFallback").med > 0 ? ` (${med(row, "thpFallback", 0)} fell back)` : ""
        }`
        : "",
      ((medianRun(row).threads as string[] | undefined) ?? []).join(" "),
    ]);
  };
  cpuRow(curl);
  cpuRow(get("curl", "curl-tmpfs"));
  for (const rt of opt.runtimes) {
    for (
      const c of [
        "fetch-whole",
        "fetch-ranges-pre-keepalive",
        "fetch-ranges-pre",
        "fetch-ranges",
        "fetch-ranges-thp",
        "raw-ranges-pre",
        "raw-ranges",
        "raw-ranges-thp",
        "fault-in",
        "seq-memory",
        "seq-warm",
        "seq-cache32",
      ]
    ) cpuRow(get(rt, c));
  }
  const diagTable = table(diagHead, diagBody);

  const targets: Record<string, unknown> = {};
  for (const rt of opt.runtimes) {
    const w = get(rt, "seq-warm");
    if (!w) continue;
    const ratio = curlMs / stat(w, "ms").med;
    targets[`seq_${rt}`] = {
      target: "sequential touch (warm threads) throughput >= 0.8 of curl's download",
      met: ratio >= 0.8,
      ratio: Number(ratio.toFixed(3)),
      cpuRatio: Number((curlCpu / cpuAll(w)).toFixed(3)),
      ttfbMs: Number(stat(w, "ttfbMs").med.toFixed(2)),
      curlTtfbMs: Number(stat(curl, "ttfbMs").med.toFixed(2)),
    };
  }
  const bad = rows.flatMap((r) => r.runs).filter((r) => typeof r.bad === "number" && (r.bad as number) > 0);
  const wall = (performance.now() - started) / 1000;

  console.log(
    `\nmachine: ${env.nproc} CPUs, ${env.cpu}, kernel ${env.kernel}; ${env.deno}, Bun ${env.bun}, ${env.curl}, ${env.nginx}; commit ${env.commit}; ${env.date}; load before ${env.load}`,
  );
  console.log(
    `${opt.mib} MiB from nginx on loopback, ${opt.rounds} rounds, wall ${wall.toFixed(0)} s (measuring ~${
      fmt(held.reduce((a, b) => a + b, 0), 0)
    } s under the lock)\n`,
  );
  console.log(`Sequential touch of every page (readahead "adaptive"; chunk 2 MiB, concurrency 8)\n`);
  console.log(seqTable);
  console.log(`\nRandom 10% touch (${Math.round(bytes / PS / 10)} pages)\n`);
  console.log(randTable);
  if (varTable) console.log(`\nSequential, other concurrency and chunk sizes (warm threads)\n\n${varTable}`);
  console.log(`\nWhere the time goes: the same bytes without the fault server\n\n${diagTable}`);
  console.log("\nTargets:");
  for (const [k, v] of Object.entries(targets)) console.log(`  ${k}: ${JSON.stringify(v)}`);
  if (bad.length) console.log(`WRONG BYTES in ${bad.length} runs`);
  if (errors.length) console.log(`errors:\n  ${errors.join("\n  ")}`);
  console.log(JSON.stringify({ env, options: opt, wallSeconds: wall, targets, summary, errors, rows }));
  if (bad.length) process.exitCode = 3;
}

const argv = process.argv.slice(2);
if (argv[0] === "--curl") {
  // Three downloads each: to /dev/null (the baseline), and into memory (tmpfs pages allocated and
  // filled, as a restore must fill its memory), a reference.
  for (let i = 0; i < 3; i++) {
    console.log(JSON.stringify(curlOnce(argv[1], Number(argv[2]))));
    console.log(JSON.stringify(curlOnce(argv[1], Number(argv[2]), `/dev/shm/uffd-bench-url-${process.pid}`)));
  }
} else if (argv[0] === "--child") {
  const k = argv.indexOf("--cases");
  await child(
    argv[1],
    Number(argv[2]),
    !argv.includes("--no-variants"),
    k > 0 ? argv[k + 1].split(",") : undefined,
  );
  process.exit(0);
} else {
  await parent(parseArgs(argv));
}
