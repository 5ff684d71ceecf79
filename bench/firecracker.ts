/**
 * The Firecracker restore benchmark: a snapshot of `--mib` MiB (default 256) restored by the VMM
 * fixture (tests/fixtures/fc_vmm.c) with real KVM vCPUs, touched fully and at random 10%, served by
 *
 * - `file`: Firecracker's File backend (guest RAM a MAP_PRIVATE mmap of the memory file, no handler);
 * - `c`: bench/native/fc_handler.c, Firecracker's on-demand example (one 4 KiB COPY per fault);
 * - `deno-ondemand`, `bun-ondemand`: `cli.ts firecracker --readahead 1` (one COPY per fault, as C);
 * - `deno-cdesign`, `bun-cdesign`: `--readahead 1 --populate-sync`: C's whole design, the memory
 *   file's page tables populated at the handshake as its MAP_POPULATE does (the same-design target);
 * - `deno-populate`, `bun-populate`: the default with `--populate` (the files read ahead in the background);
 * - `deno`, `bun`: `cli.ts firecracker` with its default (adaptive readahead);
 * - `deno-prefetch`, `bun-prefetch`: `cli.ts firecracker --prefetch WS`, WS recorded (`--record`,
 *   `--readahead 1`) by a first restore of the same workload before the timed rounds;
 *
 * interleaved within each round (file, c, deno..., bun...), pinned (`taskset -c 0` on the VMM and
 * the handler) and unpinned, with a warm page cache (the file read once before each run) and a cold
 * one (`sync; echo 3 > /proc/sys/vm/drop_caches` before each run, root only). The metric is the
 * VMM's `touchMs` (first KVM_RUN until every vCPU is done); the VMM starts once the handler
 * listens. Every run's guest reads are checked page by page against the memory file.
 *
 *   deno run -A bench/firecracker.ts [--quick] [--rounds N] [--mib N] [--no-2vcpu]
 *        [--workloads all,random10,all-2vcpu] [--caches warm,cold] [--no-pinned] [--no-unpinned]
 *        [--impls file,c,deno-ondemand,...] [--settle-ms N] [--rev REV | --worktree]
 *
 * Every timed group (one round of one workload, cache state and pinning: all implementations) runs
 * holding `flock /tmp/uffd-bench.lock`, so another benchmark on this machine never measures at the
 * same time. Prints a table per (workload, cache, pinning), the targets of issue 7 with met/missed,
 * and as the LAST line one JSON object with every run.
 * @module
 */
import { execFileSync, spawnSync } from "node:child_process";
import {
  closeSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import process from "node:process";
import { expectedHashes, readResults, writePatternFile } from "../tests/helpers/vmm.ts";
import { BenchLock, type Child, fmt, lastJson, markdownTable, median, startChild } from "./fc_common.ts";

const root = fileURLToPath(new URL("..", import.meta.url));
const BUILD = "bench/native/build";
const VMM = `${BUILD}/fc_vmm`;
const C_HANDLER = `${BUILD}/fc_handler`;
const DENO = "node_modules/.bin/deno";
const BUN = "node_modules/.bin/bun";
const LOCK = "/tmp/uffd-bench.lock";
/** What the handlers and the fixtures are built from (exported from the measured revision). */
const LIB_PATHS = [
  "cli.ts",
  "cli",
  "mod.ts",
  "src",
  "ffi",
  "deno.json",
  "tests/fixtures/fc_vmm.c",
  "bench/native/fc_handler.c",
];
const PS = 4096;
/** The seed of `--touch random:10:SEED`, the same in every run. */
const SEED = 7;
/** The seed of the memory file's pattern. */
const FILE_SEED = 20251;
/** Release and retake the lock between runs once a hold is this long (the other benchmark waits). */
const MAX_HOLD_MS = 90_000;

const IMPLS = [
  "file",
  "c",
  "deno-ondemand",
  "deno-cdesign",
  "deno",
  "deno-populate",
  "deno-prefetch",
  "bun-ondemand",
  "bun-cdesign",
  "bun",
  "bun-populate",
  "bun-prefetch",
] as const;
type Impl = typeof IMPLS[number];
type Runtime = "deno" | "bun";
const RUNTIMES: Runtime[] = ["deno", "bun"];
type Cache = "warm" | "cold";

interface Workload {
  name: string;
  touch: string;
  vcpus: number;
}
const WORKLOADS: Workload[] = [
  { name: "all", touch: "all", vcpus: 1 },
  { name: "random10", touch: `random:10:${SEED}`, vcpus: 1 },
  { name: "all-2vcpu", touch: "all", vcpus: 2 },
];

interface Options {
  quick: boolean;
  rounds: number;
  mib: number;
  workloads: string[];
  caches: Cache[];
  pinnings: boolean[];
  impls: Impl[];
  /** Diagnostic: wait this long after the handler listens before the VMM starts (default 0). */
  settleMs: number;
  /** The library revision measured (`git archive REV` into a private directory), or null: the working tree. */
  rev: string | null;
}

function parseArgs(argv: string[]): Options {
  const value = (name: string): string | undefined => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : argv.find((a) => a.startsWith(name + "="))?.slice(name.length + 1);
  };
  const list = <T extends string>(name: string, known: readonly T[], def: T[]): T[] => {
    const v = value(name);
    if (v === undefined) return def;
    const xs = v.split(",").map((s) => s.trim()).filter(Boolean);
    for (const x of xs) {
      if (!known.includes(x as T)) throw new Error(`${name}: unknown ${x}; known: ${known.join(", ")}`);
    }
    return xs as T[];
  };
  const quick = argv.includes("--quick");
  const names = WORKLOADS.map((w) => w.name);
  const defWorkloads = argv.includes("--no-2vcpu") ? names.filter((n) => n !== "all-2vcpu") : names;
  const num = (name: string, def: number): number => {
    const v = value(name);
    const n = v === undefined ? def : Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a whole number >= 1 (got ${v})`);
    return n;
  };
  return {
    quick,
    rounds: num("--rounds", quick ? 2 : 5),
    mib: num("--mib", quick ? 64 : 256),
    workloads: list("--workloads", names, defWorkloads),
    caches: list<Cache>("--caches", ["warm", "cold"], ["warm", "cold"]),
    pinnings: [
      ...(argv.includes("--no-pinned") ? [] : [true]),
      ...(argv.includes("--no-unpinned") ? [] : [false]),
    ],
    impls: list<Impl>("--impls", IMPLS, [...IMPLS]),
    settleMs: value("--settle-ms") === undefined ? 0 : num("--settle-ms", 0),
    rev: argv.includes("--worktree") ? null : value("--rev") ?? "HEAD",
  };
}

const sh = (c: string, a: string[]): string => {
  try {
    return execFileSync(c, a, { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }).trim();
  } catch {
    return "?";
  }
};

function machine(rev: string | null): Record<string, string> {
  const cpu = readFileSync("/proc/cpuinfo", "utf8").match(/model name\s*:\s*(.*)/)?.[1] ?? "?";
  const dirty = sh("git", ["status", "--porcelain", ...LIB_PATHS]).split("\n").filter(Boolean)
    .map((l) => l.slice(3));
  return {
    nproc: sh("nproc", []),
    kernel: sh("uname", ["-r"]),
    cpu,
    date: new Date().toISOString(),
    deno: sh(DENO, ["--version"]).split("\n")[0],
    bun: sh(BUN, ["--version"]),
    cc: sh("cc", ["--version"]).split("\n")[0],
    library: rev === null
      ? `working tree at ${sh("git", ["rev-parse", "--short", "HEAD"])}` +
        (dirty.length ? ` with uncommitted changes to ${dirty.join(", ")}` : "")
      : `${sh("git", ["rev-parse", "--short", rev])} (git archive ${rev}: committed files only)`,
    load: readFileSync("/proc/loadavg", "utf8").trim(),
  };
}

/**
 * Where the memory file goes: /tmp unless it is tmpfs (drop_caches cannot evict tmpfs pages, so a
 * cold run would be warm), then /var/tmp, then bench/native/build (gitignored).
 */
function memoryDir(): { dir: string; fs: string; why: string } {
  const tried: string[] = [];
  for (const d of ["/tmp", "/var/tmp", join(root, BUILD)]) {
    const fs = sh("stat", ["-f", "-c", "%T", d]);
    if (fs !== "?" && fs !== "tmpfs" && fs !== "ramfs") {
      return {
        dir: d,
        fs,
        why: tried.length
          ? `${tried.join(", ")}; ${d} is ${fs} (disk-backed)`
          : `${d} is ${fs} (disk-backed)`,
      };
    }
    tried.push(`${d} is ${fs}`);
  }
  throw new Error(`no disk-backed directory for the memory file: ${tried.join(", ")}`);
}

/** Whether drop_caches can be written (by writing it once: as root it drops the caches). */
function dropCachesUsable(): string | undefined {
  try {
    spawnSync("sync");
    writeFileSync("/proc/sys/vm/drop_caches", "3");
    return undefined;
  } catch (e) {
    return `cannot write /proc/sys/vm/drop_caches (${
      e instanceof Error ? e.message : String(e)
    }; needs root): cold runs skipped`;
  }
}

function dropCaches(): number {
  const t = performance.now();
  const r = spawnSync("sync");
  if (r.status !== 0) throw new Error(`sync failed: ${r.stderr}`);
  writeFileSync("/proc/sys/vm/drop_caches", "3");
  return performance.now() - t;
}

/** Reads the whole file (puts it in the page cache). */
function readWhole(path: string): number {
  const t = performance.now();
  const fd = openSync(path, "r");
  const buf = new Uint8Array(1 << 20);
  try {
    while (readSync(fd, buf, 0, buf.length, null) > 0) { /* read */ }
  } finally {
    closeSync(fd);
  }
  return performance.now() - t;
}

/** One restore. */
interface RunRecord {
  round: number;
  workload: string;
  vcpus: number;
  cache: Cache;
  pinned: boolean;
  impl: Impl | "deno-record" | "bun-record";
  touchMs?: number;
  /** The VMM's setup (uffd, mappings, KVM) and its connect + sendmsg, ms. */
  vmmSetupMs?: number;
  vmmHandshakeMs?: number;
  pages?: number;
  /** Handler summary fields. */
  faults?: number;
  placed?: number;
  prefetched?: number;
  prefetchMs?: number;
  handshakeMs?: number;
  serveMs?: number;
  workingSetPages?: number;
  /** The page-cache preparation before the VMM started: drop (cold) or read (warm), ms. */
  cacheMs?: number;
  /** Pages whose guest reads were checked against the memory file. */
  verified?: number;
  error?: string;
}

interface Ctx {
  opt: Options;
  /** The library's cli.ts run by the handlers. */
  cli: string;
  memFile: string;
  bytes: number;
  work: string;
  /** Expected page hash by page index. */
  expected: Uint32Array;
  /** Working-set file by `${workload}/${runtime}`. */
  ws: Map<string, string>;
}

function handlerCommand(ctx: Ctx, impl: string, wl: Workload, sock: string, extra: string[] = []): string[] {
  if (impl === "c") return [C_HANDLER, "--socket", sock, "--mem-file", ctx.memFile];
  const rt = impl.split("-")[0] as Runtime;
  const args = ["firecracker", "--socket", sock, "--mem-file", ctx.memFile, "--json"];
  if (impl.endsWith("-ondemand")) args.push("--readahead", "1");
  if (impl.endsWith("-cdesign")) args.push("--readahead", "1", "--populate-sync");
  if (impl.endsWith("-populate")) args.push("--populate");
  if (impl.endsWith("-prefetch")) {
    const ws = ctx.ws.get(`${wl.name}/${rt}`);
    if (!ws) throw new Error(`no working set recorded for ${wl.name} ${rt}`);
    args.push("--prefetch", ws);
  }
  args.push(...extra);
  return rt === "deno"
    ? [DENO, "run", "--allow-ffi", "--allow-read", "--allow-write", ctx.cli, ...args]
    : [BUN, "run", ctx.cli, ...args];
}

const pin = (pinned: boolean, cmd: string[]): string[] => (pinned ? ["taskset", "-c", "0", ...cmd] : cmd);
const num = (x: unknown): number | undefined => (typeof x === "number" ? x : undefined);
const tail = (s: string): string => s.trim().split("\n").slice(-3).join(" | ");

/** Checks the VMM's `--out` records against the memory file; resolves with the pages checked. */
function verify(ctx: Ctx, out: string, pages: number): number {
  const recs = readResults(out);
  if (recs.length !== pages) throw new Error(`--out has ${recs.length} records for ${pages} pages touched`);
  let bad = 0;
  let first = -1;
  for (const r of recs) {
    if (
      r.phase !== 1 || r.offset % PS !== 0 || r.offset >= ctx.bytes || r.hash !== ctx.expected[r.offset / PS]
    ) {
      if (bad++ === 0) first = r.offset;
    }
  }
  if (bad) {
    throw new Error(`content mismatch: ${bad} of ${recs.length} pages differ, first at offset ${first}`);
  }
  return recs.length;
}

/** One restore: the handler (until it listens), the cache preparation, then the VMM. */
async function runOne(
  ctx: Ctx,
  round: number,
  impl: RunRecord["impl"],
  wl: Workload,
  cache: Cache,
  pinned: boolean,
): Promise<RunRecord> {
  const rec: RunRecord = { round, workload: wl.name, vcpus: wl.vcpus, cache, pinned, impl };
  const sock = join(ctx.work, "fc.sock");
  const out = join(ctx.work, "out.bin");
  rmSync(sock, { force: true });
  rmSync(out, { force: true });
  let handler: Child | undefined;
  let vmm: Child | undefined;
  try {
    if (impl !== "file") {
      const extra = impl.endsWith("-record")
        ? ["--readahead", "1", "--record", ctx.ws.get(`${wl.name}/${impl.split("-")[0]}`)!]
        : [];
      const cmd = pin(
        pinned,
        handlerCommand(ctx, impl.endsWith("-record") ? impl.split("-")[0] : impl, wl, sock, extra),
      );
      handler = startChild(cmd, root);
      await handler.waitFor(/listening/, "stderr", 30_000).catch((e) => {
        throw new Error(`handler ${cmd.join(" ")}: ${e.message}: ${tail(handler!.stderr())}`);
      });
      if (ctx.opt.settleMs > 0) await new Promise((r) => setTimeout(r, ctx.opt.settleMs));
    }
    rec.cacheMs = cache === "cold" ? dropCaches() : readWhole(ctx.memFile);
    const vmmArgs = impl === "file"
      ? ["--mode", "file", "--mem-file", ctx.memFile]
      : ["--mode", "kvm", "--socket", sock];
    vmmArgs.push(
      "--regions",
      String(ctx.bytes),
      "--vcpus",
      String(wl.vcpus),
      "--touch",
      wl.touch,
      "--out",
      out,
      "--timeout-ms",
      "120000",
    );
    vmm = startChild(pin(pinned, [VMM, ...vmmArgs]), root);
    const ve = await vmm.exitWithin(150_000);
    if (!ve || ve.code !== 0) {
      throw new Error(`fc_vmm ${ve ? `exit ${ve.code ?? ve.signal}` : "timed out"}: ${tail(vmm.stderr())}`);
    }
    const done = lastJson(vmm.stdout(), (o) => o.event === "done");
    if (!done) throw new Error(`fc_vmm printed no done line: ${tail(vmm.stdout())}`);
    rec.touchMs = num(done.touchMs);
    rec.vmmSetupMs = num(done.setupMs);
    rec.vmmHandshakeMs = num(done.handshakeMs);
    rec.pages = num(done.pages);
    if (handler) {
      const he = await handler.exitWithin(20_000);
      if (!he || he.code !== 0) {
        throw new Error(
          `handler ${he ? `exit ${he.code ?? he.signal}` : "did not exit"}: ${tail(handler.stderr())}`,
        );
      }
      const s = lastJson(handler.stdout());
      if (!s) throw new Error(`handler printed no summary: ${tail(handler.stdout())}`);
      rec.faults = num(s.faults);
      rec.placed = num(s.pages);
      rec.prefetched = num(s.prefetched) ?? 0;
      rec.prefetchMs = num(s.prefetchMs) ?? 0;
      rec.handshakeMs = num(s.handshakeMs);
      rec.serveMs = num(s.serveMs);
      if (impl.endsWith("-record")) rec.workingSetPages = num(s.workingSetPages);
    }
    rec.verified = verify(ctx, out, rec.pages ?? 0);
  } catch (e) {
    rec.error = e instanceof Error ? e.message : String(e);
    handler?.kill();
    vmm?.kill();
    await Promise.all([handler?.exited, vmm?.exited]);
  }
  return rec;
}

/** Summary of one (workload, cache, pinning, impl). */
interface Row {
  workload: string;
  cache: Cache;
  pinned: boolean;
  impl: Impl;
  runs: number[];
  errors: string[];
  median: number;
  min: number;
  max: number;
  /** file median / this median (> 1: faster than the File backend). */
  vsFile: number | null;
  /** On-demand rows: C median / this median. */
  cOverTs: number | null;
  faults: number;
  placed: number;
  prefetched: number;
  handshakeMs: number;
  serveMs: number;
  verified: number;
  /** Prefetch rows: the working set, and the first restore (the recording run) it came from. */
  workingSetPages?: number;
  recordFaults?: number;
  faultReduction?: number;
  /** ondemand median / this median: the first restore's design, timed in the same rounds. */
  speedupVsFirst?: number | null;
  /** default (adaptive) median / this median. */
  speedupVsDefault?: number | null;
}

function summarize(runs: RunRecord[], records: RunRecord[]): Row[] {
  const rows: Row[] = [];
  const keys = new Set(runs.map((r) => `${r.workload}|${r.cache}|${r.pinned}|${r.impl}`));
  for (const k of keys) {
    const rs = runs.filter((r) => `${r.workload}|${r.cache}|${r.pinned}|${r.impl}` === k);
    const ok = rs.filter((r) => !r.error && r.touchMs !== undefined);
    const t = ok.map((r) => r.touchMs!);
    const m = (f: (r: RunRecord) => number | undefined): number =>
      median(ok.map(f).filter((x) => x !== undefined));
    rows.push({
      workload: rs[0].workload,
      cache: rs[0].cache,
      pinned: rs[0].pinned,
      impl: rs[0].impl as Impl,
      runs: t,
      errors: rs.filter((r) => r.error).map((r) => `round ${r.round}: ${r.error}`),
      median: median(t),
      min: t.length ? Math.min(...t) : NaN,
      max: t.length ? Math.max(...t) : NaN,
      vsFile: null,
      cOverTs: null,
      faults: m((r) => r.faults),
      placed: m((r) => r.placed),
      prefetched: m((r) => r.prefetched),
      handshakeMs: m((r) => r.handshakeMs),
      serveMs: m((r) => r.serveMs),
      verified: ok.filter((r) => (r.verified ?? 0) > 0).length,
    });
  }
  const find = (r: Row, impl: string): Row | undefined =>
    rows.find((x) =>
      x.workload === r.workload && x.cache === r.cache && x.pinned === r.pinned && x.impl === impl
    );
  const ratio = (a: Row | undefined, b: Row): number | null =>
    a && Number.isFinite(a.median) && Number.isFinite(b.median) ? a.median / b.median : null;
  for (const r of rows) {
    if (r.impl !== "file") r.vsFile = ratio(find(r, "file"), r);
    if (r.impl.endsWith("-ondemand") || r.impl.endsWith("-cdesign")) r.cOverTs = ratio(find(r, "c"), r);
    if (r.impl.endsWith("-prefetch")) {
      const rt = r.impl.split("-")[0];
      const rec = records.find((x) => x.workload === r.workload && x.impl === `${rt}-record` && !x.error);
      r.workingSetPages = rec?.workingSetPages;
      r.recordFaults = rec?.faults;
      r.faultReduction = rec?.faults ? 1 - r.faults / rec.faults : undefined;
      r.speedupVsFirst = ratio(find(r, `${rt}-ondemand`), r);
      r.speedupVsDefault = ratio(find(r, rt), r);
    }
  }
  const order = (r: Row): number =>
    WORKLOADS.findIndex((w) => w.name === r.workload) * 1000 + (r.cache === "warm" ? 0 : 100) +
    (r.pinned ? 0 : 10) + IMPLS.indexOf(r.impl);
  return rows.sort((a, b) => order(a) - order(b));
}

function tables(rows: Row[], opt: Options): string {
  const out: string[] = [];
  for (const wl of opt.workloads) {
    for (const cache of opt.caches) {
      for (const pinned of opt.pinnings) {
        const rs = rows.filter((r) => r.workload === wl && r.cache === cache && r.pinned === pinned);
        if (!rs.length) continue;
        const w = WORKLOADS.find((x) => x.name === wl)!;
        out.push(
          `\n#### ${wl} (--touch ${w.touch}, ${w.vcpus} vCPU${w.vcpus > 1 ? "s" : ""}), ${cache} cache, ${
            pinned ? "pinned (taskset -c 0)" : "unpinned"
          }\n`,
        );
        const head = [
          "impl",
          "median ms",
          "min",
          "max",
          "file/impl",
          "C/TS",
          "faults",
          "pages",
          "prefetched",
          "handshake ms",
          "serve ms",
          "ws pages",
          "fewer faults",
          "x vs on-demand",
          "x vs default",
        ];
        const body = rs.map((r) => [
          r.impl + (r.errors.length ? ` (${r.errors.length} failed)` : ""),
          fmt(r.median),
          fmt(r.min),
          fmt(r.max),
          fmt(r.vsFile, 2),
          r.cOverTs === null ? "" : fmt(r.cOverTs, 2),
          r.impl === "file" ? "" : fmt(r.faults, 0),
          r.impl === "file" ? "" : fmt(r.placed, 0),
          r.impl === "file" || r.impl === "c" ? "" : fmt(r.prefetched, 0),
          r.impl === "file" || r.impl === "c" ? "" : fmt(r.handshakeMs),
          r.impl === "file" ? "" : fmt(r.serveMs),
          r.workingSetPages === undefined ? "" : String(r.workingSetPages),
          r.faultReduction === undefined ? "" : `${(r.faultReduction * 100).toFixed(1)}%`,
          r.speedupVsFirst === undefined ? "" : fmt(r.speedupVsFirst, 2),
          r.speedupVsDefault === undefined ? "" : fmt(r.speedupVsDefault, 2),
        ]);
        out.push(markdownTable(head, body));
      }
    }
  }
  return out.join("\n");
}

interface Case {
  what: string;
  value: number | null;
  ok: boolean;
}
interface Target {
  target: string;
  met: boolean;
  cases: Case[];
}

function targets(rows: Row[], opt: Options): Record<string, Target> {
  const out: Record<string, Target> = {};
  const get = (wl: string, cache: Cache, pinned: boolean, impl: string): Row | undefined =>
    rows.find((r) => r.workload === wl && r.cache === cache && r.pinned === pinned && r.impl === impl);
  const add = (key: string, target: string, cases: Case[]): void => {
    if (cases.length) out[key] = { target, met: cases.every((c) => c.ok), cases };
  };
  for (const rt of RUNTIMES) {
    for (const pinned of opt.pinnings) {
      const p = pinned ? "pinned" : "unpinned";
      // 1. on demand, same design as the C handler (its MAP_POPULATE included, when that row ran)
      const same = opt.impls.includes(`${rt}-cdesign` as Impl) ? `${rt}-cdesign` : `${rt}-ondemand`;
      const od: Case[] = [];
      for (const wl of opt.workloads) {
        for (const cache of opt.caches) {
          const r = get(wl, cache, pinned, same);
          if (r && r.cOverTs !== undefined) {
            od.push({
              what: `${wl}/${cache}`,
              value: r.cOverTs,
              ok: r.cOverTs !== null && r.cOverTs >= 0.95,
            });
          }
        }
      }
      add(
        `ondemand_${rt}_${p}`,
        `${rt} ${same === `${rt}-cdesign` ? "--readahead 1 --populate-sync" : "--readahead 1"}, ${p}: ` +
          "C/TS restore time >= 0.95",
        od,
      );
      // 2. full sequential touch with readahead
      const ra: Case[] = [];
      for (const cache of opt.caches) {
        const r = get("all", cache, pinned, rt);
        if (!r) continue;
        ra.push(
          cache === "warm"
            ? {
              what: "all/warm: impl/file <= 1.5",
              value: r.vsFile && 1 / r.vsFile,
              ok: !!r.vsFile && 1 / r.vsFile <= 1.5,
            }
            : {
              what: "all/cold: impl/file < 1",
              value: r.vsFile && 1 / r.vsFile,
              ok: !!r.vsFile && r.vsFile > 1,
            },
        );
      }
      add(
        `readahead_${rt}_${p}`,
        `${rt} default (adaptive readahead), full touch, ${p}: within 1.5x of File warm, faster than File cold`,
        ra,
      );
      // 3. second restore with --prefetch, random 10%
      const pf: Case[] = [];
      for (const cache of opt.caches) {
        const r = get("random10", cache, pinned, `${rt}-prefetch`);
        if (!r) continue;
        pf.push({
          what: `random10/${cache}: fewer faults >= 90%`,
          value: r.faultReduction ?? null,
          ok: (r.faultReduction ?? 0) >= 0.9,
        });
        pf.push({
          what: `random10/${cache}: x faster than the first restore (on-demand) >= 3`,
          value: r.speedupVsFirst ?? null,
          ok: (r.speedupVsFirst ?? 0) >= 3,
        });
        pf.push({
          what: `random10/${cache}: impl/file <= 1.2`,
          value: r.vsFile && 1 / r.vsFile,
          ok: !!r.vsFile && 1 / r.vsFile <= 1.2,
        });
      }
      add(
        `prefetch_${rt}_${p}`,
        `${rt} --prefetch, random 10%, ${p}: >= 90% fewer faults, >= 3x faster than the first, within 1.2x of File`,
        pf,
      );
    }
  }
  return out;
}

async function main(): Promise<void> {
  const opt = parseArgs(process.argv.slice(2));
  const started = performance.now();
  const env = machine(opt.rev);
  const lock = new BenchLock(LOCK);
  const work = mkdtempSync("/tmp/uffd-fc-bench-");
  // The library as committed (others may be editing the working tree while this runs).
  let lib = root;
  if (opt.rev !== null) {
    lib = join(work, "lib");
    mkdirSync(lib);
    const r = spawnSync("bash", [
      "-c",
      `set -o pipefail; git archive "$1" -- "\${@:2}" | tar -x -C "$0"`,
      lib,
      opt.rev,
      ...LIB_PATHS,
    ], {
      cwd: root,
      encoding: "utf8",
    });
    if (r.status !== 0) throw new Error(`git archive ${opt.rev} failed: ${r.stderr}`);
  }
  mkdirSync(join(root, BUILD), { recursive: true });
  for (const [src, bin] of [["tests/fixtures/fc_vmm.c", VMM], ["bench/native/fc_handler.c", C_HANDLER]]) {
    console.error(`building ${bin} from ${join(lib, src)}`);
    execFileSync("cc", ["-O2", "-Wall", "-Werror", "-pthread", "-o", bin, join(lib, src)], {
      cwd: root,
      stdio: "inherit",
    });
  }
  const probe = spawnSync(join(root, VMM), ["--probe-kvm"], { encoding: "utf8", timeout: 10_000 });
  if (probe.status !== 0) throw new Error(`KVM unusable: ${(probe.stderr || `exit ${probe.status}`).trim()}`);

  const mem = memoryDir();
  const bytes = opt.mib * 1048576;
  const memFile = join(mem.dir, `uffd-fc-bench-${opt.mib}m-${process.pid}.mem`);
  const noCold = opt.caches.includes("cold") ? await lock.with(() => dropCachesUsable()) : undefined;
  if (noCold) {
    console.error(noCold);
    opt.caches = opt.caches.filter((c) => c !== "cold");
  }
  console.error(`memory file ${memFile}: ${mem.why}`);
  // Writing 256 MiB and syncing it is heavy I/O: done holding the lock.
  const writeMs = await lock.with(() => {
    const t = performance.now();
    writePatternFile(memFile, bytes, FILE_SEED);
    spawnSync("sync");
    return performance.now() - t;
  });
  const expected = Uint32Array.from(
    expectedHashes([memFile], Array.from({ length: bytes / PS }, (_, i) => i * PS), PS),
  );
  const ctx: Ctx = { opt, cli: join(lib, "cli.ts"), memFile, bytes, work, expected, ws: new Map() };
  const workloads = WORKLOADS.filter((w) => opt.workloads.includes(w.name));
  const runs: RunRecord[] = [];
  const records: RunRecord[] = [];
  let failed = 0;
  const cleanup = (): void => {
    rmSync(work, { recursive: true, force: true });
    rmSync(memFile, { force: true });
  };
  process.on("exit", cleanup);

  try {
    // The first restores: record each workload's working set once per runtime (warm, unpinned).
    const prefetching = RUNTIMES.filter((rt) => opt.impls.includes(`${rt}-prefetch` as Impl));
    for (const wl of workloads) {
      if (!prefetching.length) break;
      await lock.with(async () => {
        for (const rt of prefetching) {
          ctx.ws.set(`${wl.name}/${rt}`, join(work, `ws-${wl.name}-${rt}.json`));
          const r = await runOne(ctx, -1, `${rt}-record`, wl, "warm", false);
          records.push(r);
          console.error(
            `record ${wl.name} ${rt}: ${
              r.error
                ? `FAILED ${r.error}`
                : `${fmt(r.touchMs)} ms, ${r.faults} faults, working set ${r.workingSetPages} pages`
            }`,
          );
          if (r.error) failed++;
        }
      });
    }

    const groups = opt.rounds * workloads.length * opt.caches.length * opt.pinnings.length;
    let g = 0;
    for (let round = 0; round < opt.rounds; round++) {
      for (const wl of workloads) {
        for (const cache of opt.caches) {
          for (const pinned of opt.pinnings) {
            g++;
            const waited = await lock.acquire();
            let since = performance.now();
            try {
              const line: string[] = [];
              for (const impl of opt.impls) {
                if (impl.endsWith("-prefetch") && !ctx.ws.has(`${wl.name}/${impl.split("-")[0]}`)) continue;
                if (performance.now() - since > MAX_HOLD_MS) {
                  await lock.release();
                  await lock.acquire();
                  since = performance.now();
                }
                const r = await runOne(ctx, round, impl, wl, cache, pinned);
                runs.push(r);
                if (r.error) {
                  failed++;
                  console.error(
                    `  ${impl} ${wl.name} ${cache} ${pinned ? "pinned" : "unpinned"}: FAILED ${r.error}`,
                  );
                }
                line.push(`${impl} ${r.error ? "FAILED" : fmt(r.touchMs)}`);
              }
              console.error(
                `[${g}/${groups}] round ${round + 1} ${wl.name} ${cache} ${pinned ? "pinned" : "unpinned"} ` +
                  `(lock waited ${(waited / 1000).toFixed(1)} s, held ${
                    ((performance.now() - since) / 1000).toFixed(1)
                  } s): ` +
                  line.join(", "),
              );
            } finally {
              await lock.release();
            }
          }
        }
      }
    }
  } finally {
    cleanup();
  }

  const rows = summarize(runs, records);
  const tg = targets(rows, opt);
  const wall = (performance.now() - started) / 1000;
  console.log(
    `uffd Firecracker restore benchmark: ${opt.mib} MiB snapshot (${
      bytes / PS
    } pages), ${opt.rounds} rounds, ` +
      `interleaved ${opt.impls.join(", ")}; metric: the VMM's touchMs (first KVM_RUN to every vCPU done)`,
  );
  console.log(Object.entries(env).map(([k, v]) => `${k}: ${v}`).join("\n"));
  console.log(
    `memory file: ${mem.dir} (${mem.why}), written and synced in ${
      (writeMs / 1000).toFixed(1)
    } s; cold runs: ${
      noCold ?? "sync; echo 3 > /proc/sys/vm/drop_caches before each run (after the handler listens)"
    }`,
  );
  console.log(
    `benchmark lock ${LOCK}: waited ${(lock.waitedMs / 1000).toFixed(0)} s, held ${
      (lock.heldMs / 1000).toFixed(0)
    } s, ` +
      `longest hold ${(lock.longestHoldMs / 1000).toFixed(1)} s`,
  );
  if (records.length) {
    console.log(
      "\n#### First restores (record: --readahead 1 --record, warm cache, unpinned; not timed rounds)\n",
    );
    console.log(markdownTable(
      ["workload", "runtime", "touch ms", "faults", "working-set pages", "verified pages"],
      records.map((r) => [
        r.workload,
        r.impl.split("-")[0],
        r.error ? "FAILED" : fmt(r.touchMs),
        fmt(r.faults, 0),
        String(r.workingSetPages ?? "-"),
        String(r.verified ?? "-"),
      ]),
      2,
    ));
  }
  console.log(tables(rows, opt));
  console.log(
    "\nfile/impl: File backend ms / impl ms (> 1 = faster than File). C/TS: C ms / TS ms. fewer faults: vs the " +
      "recording restore. x vs on-demand: the same runtime's --readahead 1 row (the first restore's design) / this.",
  );
  console.log("\nTargets (issue 7):");
  for (const [k, t] of Object.entries(tg)) {
    console.log(`  ${t.met ? "MET   " : "MISSED"} ${k}: ${t.target}`);
    for (const c of t.cases) {
      console.log(`           ${c.ok ? "ok  " : "miss"} ${c.what}: ${fmt(c.value, 3)}`);
    }
  }
  const errors = [...records, ...runs].filter((r) => r.error);
  if (errors.length) {
    console.log(`\n${errors.length} failed runs:`);
    for (const e of errors.slice(0, 20)) {
      console.log(
        `  ${e.impl} ${e.workload} ${e.cache} ${
          e.pinned ? "pinned" : "unpinned"
        } round ${e.round}: ${e.error}`,
      );
    }
  }
  const verified = [...records, ...runs].filter((r) => (r.verified ?? 0) > 0).length;
  console.log(`\ncontent checked page by page in ${verified} of ${records.length + runs.length} runs`);
  console.log(`wall time ${wall.toFixed(0)} s`);
  console.log(JSON.stringify({
    machine: env,
    options: opt,
    memory: { dir: mem.dir, fs: mem.fs, bytes, pattern: FILE_SEED, touchSeed: SEED },
    coldCache: noCold ?? "drop_caches before each run",
    wallSeconds: Math.round(wall),
    lock: { path: LOCK, waitedMs: Math.round(lock.waitedMs), heldMs: Math.round(lock.heldMs) },
    records,
    results: rows.map((r) => ({
      ...r,
      median: Number(fmt(r.median, 3)),
      min: Number(fmt(r.min, 3)),
      max: Number(fmt(r.max, 3)),
      vsFile: r.vsFile === null ? null : Number(r.vsFile.toFixed(4)),
      cOverTs: r.cOverTs === null ? null : Number(r.cOverTs.toFixed(4)),
    })),
    targets: tg,
    runs,
  }));
  if (failed) process.exitCode = 1;
}

await main();
