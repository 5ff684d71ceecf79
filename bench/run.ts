/**
 * The fault-server benchmark: the C handler (bench/native/handler.c) against the same
 * scenarios with this library under Deno, Bun and Node, interleaved (C, deno, bun, node, C, ...),
 * pinned to one CPU and unpinned. Node runs the compiled tree (`node scripts/build.mjs --tests`
 * builds .node/, which this does first).
 *
 *   deno run -A bench/run.ts [--quick] [--scenarios a,b] [--rounds N] [--pages N] [--warmup N]
 *                            [--no-unpinned] [--no-pinned] [--no-heap | --heap] [--heap-faults N]
 *                            [--unpinned-pages N] [--impls c,deno,bun,node]
 *
 * Prints a table per pinning and, as the LAST line, one JSON object with every result.
 * @module
 */
import { execFileSync, spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import process from "node:process";
import { SCENARIOS, TWO_PROCESS } from "./common.ts";

const root = fileURLToPath(new URL("..", import.meta.url));
const HANDLER = "bench/native/build/handler";
const IMPLS = ["c", "deno", "bun", "node"] as const;
type Impl = typeof IMPLS[number];
/** The runtimes (every impl but C). */
const RUNTIMES = ["deno", "bun", "node"] as const;
/** Scenarios that compare the library with C (the rest are references and two-process diagnostics). */
const SAME_DESIGN = SCENARIOS.filter(
  (s) => s !== "zero-fill" && s !== "memcpy-4k" && !(TWO_PROCESS as readonly string[]).includes(s),
);

interface Options {
  quick: boolean;
  scenarios: string[];
  rounds: number;
  pages: number;
  unpinnedPages: number;
  pinnings: boolean[];
  warmup: number;
  heap: boolean;
  heapFaults: number;
  impls: Impl[];
}

function parseArgs(argv: string[]): Options {
  const quick = argv.includes("--quick");
  const value = (name: string): string | undefined => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : argv.find((a) => a.startsWith(name + "="))?.slice(name.length + 1);
  };
  const scenarios = value("--scenarios")?.split(",").map((s) => s.trim()).filter(Boolean) ?? [...SCENARIOS];
  for (const s of scenarios) {
    if (!(SCENARIOS as readonly string[]).includes(s)) {
      throw new Error(`unknown scenario ${s}; known: ${SCENARIOS.join(", ")}`);
    }
  }
  const impls = (value("--impls")?.split(",").map((s) => s.trim()).filter(Boolean) ?? [...IMPLS]) as Impl[];
  for (const i of impls) {
    if (!(IMPLS as readonly string[]).includes(i)) {
      throw new Error(`unknown impl ${i}; known: ${IMPLS.join(", ")}`);
    }
  }
  if (!impls.includes("c")) impls.unshift("c"); // the ratios need it
  const pinnings = [
    ...(argv.includes("--no-pinned") ? [] : [true]),
    ...(argv.includes("--no-unpinned") ? [] : [false]),
  ];
  return {
    quick,
    scenarios,
    rounds: Number(value("--rounds") ?? (quick ? 2 : 5)),
    pages: Number(value("--pages") ?? (quick ? 2048 : 65536)),
    warmup: Number(value("--warmup") ?? value("--pages") ?? (quick ? 2048 : 65536)),
    // Unpinned, a fault costs ~50 us (cross-CPU wake-up of a halted vCPU): fewer pages suffice.
    unpinnedPages: Number(value("--unpinned-pages") ?? (quick ? 2048 : 16384)),
    pinnings,
    heap: !argv.includes("--no-heap") && (value("--scenarios") === undefined || argv.includes("--heap")),
    heapFaults: Number(value("--heap-faults") ?? (quick ? 100_000 : 1_000_000)),
    impls,
  };
}

interface RunResult {
  scenario: string;
  impl: string;
  pages: number;
  seconds: number;
  usPerPage: number;
  faults?: number;
  [k: string]: unknown;
}

function command(
  impl: Impl,
  scenario: string,
  pages: number,
  warmup: number,
  pinned: boolean,
  extra: string[] = [],
): string[] {
  const args = [scenario, String(pages), `--warmup=${warmup}`, ...extra];
  const cmd = impl === "c"
    ? [HANDLER, scenario, String(pages), String(warmup)]
    : impl === "deno"
    ? ["node_modules/.bin/deno", "run", "-A", "bench/ts_scenarios.ts", ...args]
    : impl === "bun"
    ? ["node_modules/.bin/bun", "run", "bench/ts_scenarios.ts", ...args]
    : ["node", ".node/bench/ts_scenarios.js", ...args];
  return pinned ? ["taskset", "-c", "0", ...cmd] : cmd;
}

function runOnce(cmd: string[], timeoutMs = 180_000): RunResult | { error: string } {
  const r = spawnSync(cmd[0], cmd.slice(1), { cwd: root, encoding: "utf8", timeout: timeoutMs });
  const lines = (r.stdout ?? "").trim().split("\n").filter((l) => l.startsWith("{"));
  if (r.status !== 0 || lines.length === 0) {
    const why = r.error ? String(r.error) : `exit ${r.status ?? r.signal}`;
    return {
      error: `${cmd.join(" ")}: ${why}: ${(r.stderr ?? "").trim().split("\n").slice(-3).join(" | ")}`,
    };
  }
  return JSON.parse(lines[lines.length - 1]) as RunResult;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

interface Row {
  scenario: string;
  impl: Impl;
  pinned: boolean;
  runs: number[];
  errors: string[];
  median: number;
  min: number;
  max: number;
  pagesPerSec: number;
  faultsPerSec: number;
  ratioToC: number | null;
  /** Process CPU per page (getrusage, all threads), per run: not inflated by time stolen by other tenants. */
  cpuRuns: number[];
  cpuMedian: number;
  cpuRatioToC: number | null;
  faultSec: number[];
  last?: RunResult;
  /** Every run's result (for the two-process CPU split). */
  all?: RunResult[];
}

function machine(): Record<string, string> {
  const sh = (c: string, a: string[]): string => {
    try {
      return execFileSync(c, a, { cwd: root, encoding: "utf8" }).trim();
    } catch {
      return "?";
    }
  };
  const cpu = readFileSync("/proc/cpuinfo", "utf8").match(/model name\s*:\s*(.*)/)?.[1] ?? "?";
  const dirty = sh("git", ["status", "--porcelain", "src", "ffi", "mod.ts"]) !== "";
  return {
    nproc: sh("nproc", []),
    kernel: sh("uname", ["-r"]),
    cpu,
    date: new Date().toISOString(),
    deno: sh("node_modules/.bin/deno", ["--version"]).split("\n")[0],
    bun: sh("node_modules/.bin/bun", ["--version"]),
    node: sh("node", ["--version"]),
    koffi: JSON.parse(readFileSync(`${root}/node_modules/koffi/package.json`, "utf8")).version,
    cc: sh("cc", ["--version"]).split("\n")[0],
    commit: sh("git", ["rev-parse", "--short", "HEAD"]) + (dirty ? "+dirty(src)" : ""),
    load: readFileSync("/proc/loadavg", "utf8").trim(),
  };
}

function fmt(x: number, digits = 2): string {
  return Number.isFinite(x) ? x.toFixed(digits) : "-";
}

function table(rows: Row[], pinned: boolean): string {
  const head = [
    "scenario",
    "impl",
    "pinned",
    "median us/page",
    "min",
    "max",
    "pages/s",
    "faults/s",
    "TS/C",
    "cpu us/page",
    "TS/C cpu",
  ];
  const body = rows.filter((r) => r.pinned === pinned).map((r) => [
    r.scenario,
    r.impl,
    pinned ? "yes" : "no",
    fmt(r.median),
    fmt(r.min),
    fmt(r.max),
    Number.isFinite(r.pagesPerSec) ? String(Math.round(r.pagesPerSec)) : "-",
    Number.isFinite(r.faultsPerSec) ? String(Math.round(r.faultsPerSec)) : "-",
    r.ratioToC === null ? "" : fmt(r.ratioToC),
    fmt(r.cpuMedian),
    r.cpuRatioToC === null ? "" : fmt(r.cpuRatioToC),
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]): string =>
    "| " + cells.map((c, i) => (i < 3 ? c.padEnd(w[i]) : c.padStart(w[i]))).join(" | ") + " |";
  return [
    line(head),
    "|" + w.map((n, i) => (i < 3 ? "-".repeat(n + 1) + "-" : "-".repeat(n + 1) + ":")).join("|") + "|",
  ]
    .concat(body.map(line)).join("\n");
}

/** Renders a markdown table: the first `left` columns left-aligned, the rest right-aligned. */
function markdown(head: string[], body: string[][], left: number): string {
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]): string =>
    "| " + cells.map((c, i) => (i < left ? c.padEnd(w[i]) : c.padStart(w[i]))).join(" | ") + " |";
  const rule = "|" + w.map((n, i) => "-".repeat(n + 1) + (i < left ? "-" : ":")).join("|") + "|";
  return [line(head), rule, ...body.map(line)].join("\n");
}

/** One row per scenario: every impl's median side by side, then each runtime's ratio to C (wall, CPU). */
function summary(rows: Row[], pinned: boolean, impls: Impl[]): string {
  const name = (i: Impl): string => (i === "c" ? "C" : i[0].toUpperCase() + i.slice(1));
  const rts = impls.filter((i) => i !== "c");
  const head = [
    "scenario",
    ...impls.map((i) => `${name(i)} us/page`),
    ...rts.map((i) => `${name(i)}/C`),
    ...rts.map((i) => `${name(i)}/C cpu`),
  ];
  const scenarios = [...new Set(rows.filter((r) => r.pinned === pinned).map((r) => r.scenario))];
  const body = scenarios.map((sc) => {
    const get = (i: Impl): Row | undefined =>
      rows.find((r) => r.scenario === sc && r.impl === i && r.pinned === pinned);
    const ratio = (x: number | null | undefined): string => (x === null || x === undefined ? "-" : fmt(x));
    return [
      sc,
      ...impls.map((i) => fmt(get(i)?.median ?? NaN)),
      ...rts.map((i) => ratio(get(i)?.ratioToC)),
      ...rts.map((i) => ratio(get(i)?.cpuRatioToC)),
    ];
  });
  return markdown(head, body, 1);
}

/** The two-process scenarios' CPU split: the handler's process and the toucher's (medians). */
function twoProcessTable(rows: Row[], pinned: boolean): string {
  const body: string[][] = [];
  for (const r of rows) {
    if (r.pinned !== pinned || !(TWO_PROCESS as readonly string[]).includes(r.scenario) || !r.last) continue;
    const all = r.all ?? [];
    const med = (k: string): string => {
      const xs = all.map((x) => x[k]).filter((x): x is number => typeof x === "number");
      return xs.length ? fmt(median(xs)) : "-";
    };
    body.push([
      r.scenario,
      r.impl,
      String(r.last.handler ?? "-"),
      String(r.last.toucher ?? "-"),
      fmt(r.median),
      med("handlerCpuUsPerPage"),
      med("toucherCpuUsPerPage"),
      fmt(r.cpuMedian),
      r.ratioToC === null ? "" : fmt(r.ratioToC),
    ]);
  }
  if (body.length === 0) return "";
  const head = [
    "scenario",
    "impl",
    "handler",
    "toucher",
    "median us/page",
    "handler cpu us/page",
    "toucher cpu us/page",
    "cpu us/page",
    "TS/C",
  ];
  return markdown(head, body, 4);
}

function main(): void {
  const opt = parseArgs(process.argv.slice(2));
  const started = performance.now();
  const env = machine();
  console.error(`building ${HANDLER}`);
  execFileSync("mkdir", ["-p", "bench/native/build"], { cwd: root });
  execFileSync("cc", ["-O2", "-pthread", "-o", HANDLER, "bench/native/handler.c"], {
    cwd: root,
    stdio: "inherit",
  });
  if (opt.impls.includes("node")) {
    console.error("building .node/ (node scripts/build.mjs --tests)");
    execFileSync("node", ["scripts/build.mjs", "--tests"], {
      cwd: root,
      stdio: ["ignore", "ignore", "inherit"],
    });
  }

  const rows: Row[] = [];
  const get = (scenario: string, impl: Impl, pinned: boolean): Row => {
    let r = rows.find((x) => x.scenario === scenario && x.impl === impl && x.pinned === pinned);
    if (!r) {
      r = {
        scenario,
        impl,
        pinned,
        runs: [],
        errors: [],
        median: NaN,
        min: NaN,
        max: NaN,
        pagesPerSec: NaN,
        faultsPerSec: NaN,
        ratioToC: null,
        cpuRuns: [],
        cpuMedian: NaN,
        cpuRatioToC: null,
        faultSec: [],
      };
      rows.push(r);
    }
    return r;
  };

  const total = opt.scenarios.length * opt.rounds * opt.pinnings.length * opt.impls.length;
  let done = 0;
  for (const scenario of opt.scenarios) {
    for (let round = 0; round < opt.rounds; round++) {
      for (const pinned of opt.pinnings) {
        for (const impl of opt.impls) {
          const pages = pinned ? opt.pages : opt.unpinnedPages;
          const res = runOnce(command(impl, scenario, pages, Math.min(opt.warmup, pages), pinned));
          const row = get(scenario, impl, pinned);
          done++;
          if ("error" in res) {
            row.errors.push(String(res.error));
            console.error(
              `[${done}/${total}] ${scenario} ${impl} ${pinned ? "pinned" : "unpinned"}: FAILED ${res.error}`,
            );
            continue;
          }
          row.runs.push(res.usPerPage);
          row.last = res;
          (row.all ??= []).push(res);
          const faults = typeof res.faults === "number" ? res.faults : res.pages;
          row.faultSec.push(faults / res.seconds);
          if (typeof res.cpuUsPerPage === "number") row.cpuRuns.push(res.cpuUsPerPage);
          console.error(
            `[${done}/${total}] ${scenario} ${impl} ${pinned ? "pinned" : "unpinned"}: ${
              res.usPerPage.toFixed(2)
            } us/page`,
          );
        }
      }
    }
  }
  for (const r of rows) {
    if (r.runs.length === 0) continue;
    r.median = median(r.runs);
    r.min = Math.min(...r.runs);
    r.max = Math.max(...r.runs);
    r.pagesPerSec = 1e6 / r.median;
    r.faultsPerSec = median(r.faultSec);
    if (r.cpuRuns.length) r.cpuMedian = median(r.cpuRuns);
  }
  for (const r of rows) {
    if (r.impl === "c") continue;
    const c = rows.find((x) => x.scenario === r.scenario && x.impl === "c" && x.pinned === r.pinned);
    r.ratioToC = c && Number.isFinite(c.median) && Number.isFinite(r.median) ? c.median / r.median : null;
    r.cpuRatioToC = c && Number.isFinite(c.cpuMedian) && Number.isFinite(r.cpuMedian)
      ? c.cpuMedian / r.cpuMedian
      : null;
  }

  // Worker heap growth over ~1,000,000 faults, pinned (the fault rate is ~6x higher there).
  const heap: Record<string, unknown>[] = [];
  if (opt.heap) {
    for (const impl of RUNTIMES.filter((i) => opt.impls.includes(i))) {
      console.error(`heap ${impl}: ${opt.heapFaults} faults`);
      const res = runOnce(command(impl, "heap", opt.pages, 0, true, [`--faults=${opt.heapFaults}`]), 300_000);
      heap.push({ impl, ...res });
    }
  }

  // Targets.
  const pinnedRatios = (impl: Impl): { scenario: string; ratio: number | null }[] =>
    SAME_DESIGN.filter((s) => opt.scenarios.includes(s)).map((s) => ({
      scenario: s,
      ratio: rows.find((r) => r.scenario === s && r.impl === impl && r.pinned)?.ratioToC ?? null,
    }));
  const targets: Record<string, unknown> = {};
  for (const impl of RUNTIMES.filter((i) => opt.impls.includes(i))) {
    const rs = pinnedRatios(impl);
    const below = rs.filter((x) => x.ratio === null || x.ratio < 0.95);
    targets[`sameDesign_${impl}`] = {
      target: "pinned TS/C throughput >= 0.95 in every same-design scenario",
      met: rs.length > 0 && below.length === 0,
      worst: rs.reduce<{ scenario: string; ratio: number | null } | null>(
        (w, x) => (w === null || (x.ratio ?? -1) < (w.ratio ?? -1) ? x : w),
        null,
      ),
      below: below.map((x) => `${x.scenario} ${x.ratio === null ? "n/a" : x.ratio.toFixed(3)}`),
    };
  }
  const zf = rows.find((r) => r.scenario === "zero-fill" && r.impl === "c" && r.pinned);
  for (const impl of opt.impls) {
    const ad = rows.find((r) => r.scenario === "seq-adaptive" && r.impl === impl && r.pinned);
    if (zf && ad) {
      targets[`adaptive_${impl}`] = {
        target: "pinned seq-adaptive us/page <= kernel zero-fill (C) us/page",
        met: ad.median <= zf.median,
        adaptiveUsPerPage: Number(ad.median.toFixed(3)),
        zeroFillUsPerPage: Number(zf.median.toFixed(3)),
      };
    }
  }
  for (const h of heap) {
    const g = (h as { heapGrowth?: number }).heapGrowth;
    targets[`heap_${h.impl}`] = {
      target: "Worker JS heap growth < 1 MiB over ~1,000,000 faults",
      met: typeof g === "number" && g < 1 << 20,
      growthBytes: g ?? null,
      faults: (h as { faults?: number }).faults ?? null,
    };
  }

  console.log(
    `uffd fault-server benchmark: ${opt.pages} pages per pinned run (${opt.unpinnedPages} unpinned), ${opt.rounds} rounds, interleaved ${
      opt.impls.join("/")
    }`,
  );
  console.log(Object.entries(env).map(([k, v]) => `${k}: ${v}`).join("\n"));
  for (const pinned of opt.pinnings) {
    console.log(`\n${pinned ? "Pinned (taskset -c 0: toucher and handler share one CPU)" : "Unpinned"}\n`);
    console.log(table(rows, pinned));
    console.log(`\n${pinned ? "Pinned" : "Unpinned"}, side by side (median us/page; ratios C/runtime)\n`);
    console.log(summary(rows, pinned, opt.impls));
    const two = twoProcessTable(rows, pinned);
    if (two) {
      console.log(`\n${pinned ? "Pinned" : "Unpinned"}, two processes: CPU per page by process\n\n${two}`);
    }
  }
  if (heap.length) {
    console.log("\nWorker heap over ~1,000,000 faults (pinned):");
    for (const h of heap) {
      const x = h as Record<string, number | string>;
      console.log(
        "error" in x
          ? `  ${x.impl}: FAILED ${x.error}`
          : `  ${x.impl}: ${x.faults} faults, heapStart ${x.heapStart}, heapNow ${x.heapNow}, growth ${x.heapGrowth} bytes`,
      );
    }
  }
  console.log("\nTargets:");
  for (const [k, v] of Object.entries(targets)) {
    const t = v as { met: boolean };
    console.log(`  ${t.met ? "MET   " : "MISSED"} ${k}: ${JSON.stringify({ ...t, met: undefined })}`);
  }
  const errors = rows.flatMap((r) => r.errors);
  if (errors.length) {
    console.log(`\n${errors.length} failed runs:`);
    for (const e of errors.slice(0, 20)) console.log("  " + e);
  }
  console.log(`\nwall time ${((performance.now() - started) / 1000).toFixed(0)} s`);
  console.log(JSON.stringify({
    machine: env,
    options: opt,
    results: rows.map(({ last: _last, all: _all, ...r }) => ({
      ...r,
      median: Number(fmt(r.median, 4)),
      min: Number(fmt(r.min, 4)),
      max: Number(fmt(r.max, 4)),
      pagesPerSec: Math.round(r.pagesPerSec),
      faultsPerSec: Math.round(r.faultsPerSec),
      ratioToC: r.ratioToC === null ? null : Number(r.ratioToC.toFixed(4)),
      cpuMedian: Number(fmt(r.cpuMedian, 4)),
      cpuRatioToC: r.cpuRatioToC === null ? null : Number(r.cpuRatioToC.toFixed(4)),
      faultSec: undefined,
    })),
    heap,
    targets,
  }));
  if (errors.length) process.exitCode = 1;
}

main();
