/**
 * The snapshot benchmark (issue 8), in one run, under Deno and Bun:
 *
 * 1. `diff`: 1 GiB of anonymous memory, every page written first, 1% of the pages dirtied at random
 *    between snapshots. Time to take the next layer with `DirtyTracker.diff` against (a) copying the
 *    whole region to a file (`full-copy`, what "a full snapshot every time" costs), (b) the
 *    soft-dirty method as CRIU does it (`soft-dirty`: write "4" to /proc/self/clear_refs, dirty,
 *    read /proc/self/pagemap, test bit 55 of each entry, write those pages, clear again) and (c)
 *    writing exactly the dirty pages (`dirty-only`, the lower bound: the bench knows the pages).
 * 2. `restore`: a 256 MiB WebAssembly.Memory snapshot (one full layer, every page written), touched
 *    fully (in order) and at random 10%, from the start of the restore call until the touch is
 *    done: lazy `restore(dir, { into })` (adaptive readahead), eager `restore(dir, { into, eager:
 *    true })`, each also with `verify: "none"`, and `mmap` of the base file over the memory
 *    (`MAP_FIXED | MAP_PRIVATE`, on the WebAssembly.Memory's own address). Page cache warm.
 *
 *   deno run -A bench/snapshot.ts [--quick] [--rounds N] [--parts diff,restore] [--runtimes deno,bun]
 *                                 [--dir D] [--lock FILE] [--diff-mib N] [--restore-mib N]
 *
 * The runner starts one child per (round, part, runtime), `flock FILE <runtime> bench/snapshot.ts
 * --child PART ...`, so a timed child never overlaps another benchmark that takes the same lock
 * (default /tmp/uffd-bench.lock; each hold is a few seconds). A child sets up, warms up, then
 * measures every implementation once, in an order rotated by the round, and prints one JSON line.
 * The runner prints tables (median, min, max over rounds; ratios of medians within a runtime),
 * the targets, and as the LAST line one JSON object with every run.
 * @module
 */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { DirtyTracker, FaultServer, Mapping, pageSize, restore, snapshot } from "../mod.ts";
import { libc } from "../ffi/mod.ts";
import { cstring } from "../src/memory.ts";
import { layerDigests } from "../src/snapshot/digest.ts";
import { dataExtents } from "../src/server/sources.ts";
import { permutation } from "./common.ts";

const root = fileURLToPath(new URL("..", import.meta.url));
const MiB = 2 ** 20;
const PS = pageSize;

const NR_pwrite64 = 18;
const NR_fdatasync = 75;
const NR_lseek = 8;
const O_RDONLY = 0;
const O_WRONLY = 1;
const O_CREAT = 0o100;
const O_TRUNC = 0o1000;
const O_CLOEXEC = 0o2000000;
const PROT_RW = 3;
const MAP_PRIVATE = 0x02;
const MAP_FIXED = 0x10;
const MAP_ANONYMOUS = 0x20;

const DIFF_IMPLS = ["diff", "full-copy", "soft-dirty", "dirty-only"] as const;
const RESTORE_IMPLS = ["lazy", "lazy-noverify", "lazy-warm", "eager", "eager-noverify", "mmap"] as const;
/** Read one word per page (in order, or a random 10% of the pages); `-rw`: and write it back + 1. */
const TOUCHES = ["full", "full-rw", "rand10", "rand10-rw"] as const;
const RUNTIMES = ["deno", "bun"] as const;

// ---- helpers shared by the children --------------------------------------------------------------

function fail(message: string): never {
  console.error(`bench/snapshot: ${message}`);
  process.exit(3);
}

function openFile(path: string, flags: number): number {
  const fd = libc.open(cstring(path), flags | O_CLOEXEC, 0o644);
  if (fd < 0) fail(`open ${path}: errno ${libc.errno()}`);
  return fd;
}

/** pwrite of [address + off, + len) to the file at `off` (a loop: pwrite may write less). */
function pwriteRange(fd: number, address: number, off: number, len: number): void {
  for (let done = 0; done < len;) {
    const n = libc.syscall(NR_pwrite64, fd, address + off + done, Math.min(len - done, 1 << 30), off + done);
    if (n <= 0) fail(`pwrite: ${n < 0 ? `errno ${libc.errno()}` : "wrote nothing"}`);
    done += n;
  }
}

/** Writes the given pages (sorted ascending) of [address, +length) into a new sparse file. */
function writePages(path: string, address: number, length: number, sorted: ArrayLike<number>): void {
  const fd = openFile(path, O_WRONLY | O_CREAT | O_TRUNC);
  if (libc.ftruncate(fd, length) !== 0) fail(`ftruncate ${path}: errno ${libc.errno()}`);
  for (let i = 0; i < sorted.length;) {
    let j = i + 1;
    while (j < sorted.length && sorted[j] === sorted[j - 1] + 1) j++; // adjacent pages: one pwrite
    pwriteRange(fd, address, sorted[i] * PS, (j - i) * PS);
    i = j;
  }
  libc.close(fd);
}

/** fdatasync of a file (untimed: so that writeback never overlaps the next timed step). */
function syncFile(path: string): void {
  const fd = openFile(path, O_RDONLY);
  libc.syscall(NR_fdatasync, fd);
  libc.close(fd);
}

/** Reads a whole file through a 1 MiB buffer (warms the page cache). */
function readThrough(path: string): void {
  const fd = openFile(path, O_RDONLY);
  const buf = new Uint8Array(MiB);
  const a = libc.addressOf(buf);
  for (let off = 0;; off += MiB) {
    const n = libc.preadAddr(fd, a, MiB, off);
    if (n <= 0) break;
  }
  libc.close(fd);
}

/** A small deterministic PRNG (xorshift32). */
function rng(seed: number): () => number {
  let x = (seed * 2654435761 + 0x9e3779b9) >>> 0 || 1;
  return () => {
    x = (x ^ (x << 13)) >>> 0;
    x = (x ^ (x >>> 17)) >>> 0;
    x = (x ^ (x << 5)) >>> 0;
    return x;
  };
}

/** `count` distinct random pages of [0, pages), sorted. */
function randomPages(pages: number, count: number, seed: number): Uint32Array {
  const next = rng(seed);
  const picked = new Uint8Array(pages);
  const out = new Uint32Array(count);
  for (let n = 0; n < count;) {
    const p = next() % pages;
    if (picked[p]) continue;
    picked[p] = 1;
    out[n++] = p;
  }
  return out.sort();
}

/** Writes one word in each of the pages (a value that differs from what is there). */
function dirty(w: Uint32Array, list: Uint32Array, salt: number): void {
  for (let i = 0; i < list.length; i++) w[list[i] * (PS / 4) + (i & 1023)] ^= salt | 1;
}

function fsType(dir: string): string {
  try {
    // The first line: a mount point can be listed twice (/dev/shm: "tmpfs\ntmpfs").
    const out = execFileSync("findmnt", ["-n", "-o", "FSTYPE", "-T", dir], { encoding: "utf8" });
    return out.trim().split("\n")[0];
  } catch {
    try {
      return execFileSync("stat", ["-f", "-c", "%T", dir], { encoding: "utf8" }).trim();
    } catch {
      return "?";
    }
  }
}

/** A full garbage collection where the runtime offers one (frees the memories of earlier steps). */
function collect(): void {
  const g = globalThis as unknown as { gc?: () => void; Bun?: { gc(force: boolean): void } };
  if (g.Bun) g.Bun.gc(true);
  else g.gc?.();
}

function runtimeVersion(): string {
  return libc.runtime === "bun" ? `bun ${process.versions.bun}` : `deno ${process.versions.deno}`;
}

// ---- soft-dirty ------------------------------------------------------------------------------------

function clearRefs(): void {
  const fd = openFile("/proc/self/clear_refs", O_WRONLY);
  if (libc.write(fd, new Uint8Array([0x34]), 1) !== 1) fail(`clear_refs: errno ${libc.errno()}`);
  libc.close(fd);
}

/** Reads the pagemap entries of [address, + pages) into `buf` (2 words per entry). */
function readPagemap(fd: number, address: number, pages: number, buf: Uint32Array): void {
  const bytes = pages * 8;
  const a = libc.addressOf(buf);
  for (let done = 0; done < bytes;) {
    const n = libc.preadAddr(fd, a + done, bytes - done, (address / PS) * 8 + done);
    if (n <= 0) fail(`pread /proc/self/pagemap: errno ${libc.errno()}`);
    done += n;
  }
}

/** Pages whose pagemap entry has bit 55 (soft-dirty) set. */
function softDirtyPages(buf: Uint32Array, pages: number, out: Uint32Array): number {
  let n = 0;
  for (let p = 0; p < pages; p++) if (buf[2 * p + 1] & (1 << 23)) out[n++] = p;
  return n;
}

/** Whether this kernel reports soft-dirty bits (CONFIG_MEM_SOFT_DIRTY). */
function softDirtyWorks(): boolean {
  using m = Mapping.anonymous(4 * PS);
  const b = m.bytes();
  b[0] = 1;
  b[PS] = 1;
  clearRefs();
  b[PS] = 2; // page 1 written after the clear, page 0 not
  const fd = openFile("/proc/self/pagemap", O_RDONLY);
  const buf = new Uint32Array(8);
  readPagemap(fd, m.address, 4, buf);
  libc.close(fd);
  const bit = (p: number): number => (buf[2 * p + 1] >>> 23) & 1;
  return bit(1) === 1 && bit(0) === 0;
}

// ---- child: diff -------------------------------------------------------------------------------------

interface Measurement {
  impl: string;
  touch?: string;
  ms: number;
  [k: string]: unknown;
}

function childDiff(dirRoot: string, mib: number, round: number): Record<string, unknown> {
  const length = mib * MiB;
  const pages = length / PS;
  const count = Math.max(1, Math.round(pages / 100));
  const dir = mkdtempSync(join(dirRoot, "uffd-bench-diff-"));
  const results: Measurement[] = [];
  const info: Record<string, unknown> = {};
  try {
    // A: tracked by the DirtyTracker; B: the same, untracked, for the other methods.
    using a = Mapping.anonymous(length);
    using b = Mapping.anonymous(length);
    const wa = new Uint32Array(a.bytes().buffer, a.bytes().byteOffset, length / 4);
    const wb = new Uint32Array(b.bytes().buffer, b.bytes().byteOffset, length / 4);
    let t = performance.now();
    for (let p = 0; p < pages; p++) {
      wa.fill(p + 1, p * 1024, p * 1024 + 1024);
      wb.fill(p + 1, p * 1024, p * 1024 + 1024);
    }
    info.fillMs = performance.now() - t;
    const snap = join(dir, "snap");
    using tracker = DirtyTracker.start(a);
    t = performance.now();
    const base = tracker.snapshot(snap);
    info.baseMs = performance.now() - t;
    info.basePages = base.layers[0].pages;
    syncFile(join(snap, "base.mem"));
    const supported = softDirtyWorks();
    info.softDirtySupported = supported;
    const pagemapFd = openFile("/proc/self/pagemap", O_RDONLY);
    const pm = new Uint32Array(pages * 2);
    const found = new Uint32Array(pages);
    let seed = round * 1000 + 1;

    const measure = (impl: string, timed: boolean): void => {
      const list = randomPages(pages, count, seed++);
      const salt = seed * 7919;
      const m: Measurement = { impl, ms: 0, pages: count };
      let out: string | undefined;
      if (impl === "diff") {
        dirty(wa, list, salt);
        t = performance.now();
        const layer = tracker.diff(snap);
        m.ms = performance.now() - t;
        out = join(snap, layer.file);
        if (layer.pages !== count) fail(`diff: layer holds ${layer.pages} pages, ${count} were written`);
        // Where the time goes (measured after, untimed): re-hash the layer as describe() does.
        const map = Mapping.file(out);
        const size = libc.syscall(NR_lseek, map.fd, 0, 2);
        let t1 = performance.now();
        const ext = dataExtents(map.fd, size);
        m.extentsMs = performance.now() - t1;
        t1 = performance.now();
        layerDigests(map.bytes(), ext, size, base.chunkSize);
        m.hashMs = performance.now() - t1;
        t1 = performance.now();
        layerDigests(map.bytes(), ext, size, 64 * MiB); // the same bytes in 16 chunks, not 1024
        m.hash64MiBChunksMs = performance.now() - t1;
        map.close();
        t1 = performance.now();
        tracker.written(); // a PAGEMAP_SCAN over the range, nothing written: its cost alone
        m.scanMs = performance.now() - t1;
      } else if (impl === "full-copy") {
        dirty(wb, list, salt);
        out = join(dir, "full.mem");
        t = performance.now();
        const fd = openFile(out, O_WRONLY | O_CREAT | O_TRUNC);
        pwriteRange(fd, b.address, 0, length);
        libc.close(fd);
        m.ms = performance.now() - t;
      } else if (impl === "soft-dirty") {
        clearRefs(); // clean from here (untimed: the previous take re-armed it, but others wrote B)
        dirty(wb, list, salt);
        out = join(dir, "softdirty.mem");
        t = performance.now();
        readPagemap(pagemapFd, b.address, pages, pm);
        const n = softDirtyPages(pm, pages, found);
        const t1 = performance.now();
        // Without CONFIG_MEM_SOFT_DIRTY bit 55 is never set: write the known pages instead (the
        // measured time is then a floor of the method: no PTE is write-protected by clear_refs).
        const write = supported ? found.subarray(0, n) : list;
        writePages(out, b.address, length, write);
        const t2 = performance.now();
        clearRefs(); // re-arm for the next interval
        m.ms = performance.now() - t;
        m.pagemapMs = t1 - t;
        m.writeMs = t2 - t1;
        m.clearMs = performance.now() - t2;
        m.found = n;
        if (supported && n < count) fail(`soft-dirty: found ${n} pages, ${count} were written`);
        m.supported = supported;
      } else {
        dirty(wb, list, salt);
        out = join(dir, "dirty.mem");
        t = performance.now();
        writePages(out, b.address, length, list);
        m.ms = performance.now() - t;
      }
      syncFile(out);
      if (impl !== "diff") rmSync(out);
      if (timed) results.push(m);
    };

    // Warm-up: one untimed take of each cheap method (the JIT compiles the paths once).
    for (const impl of ["diff", "soft-dirty", "dirty-only"]) measure(impl, false);
    const k = round % DIFF_IMPLS.length;
    for (const impl of [...DIFF_IMPLS.slice(k), ...DIFF_IMPLS.slice(0, k)]) measure(impl, true);
    libc.close(pagemapFd);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return { part: "diff", mib, pages, dirtyPages: count, fs: fsType(dirRoot), ...info, results };
}

// ---- child: restore ----------------------------------------------------------------------------------

function childRestore(dirRoot: string, mib: number, round: number): Promise<Record<string, unknown>> {
  const length = mib * MiB;
  const pages = length / PS;
  const wasmPages = length / 65536;
  const dir = mkdtempSync(join(dirRoot, "uffd-bench-restore-"));
  const expect = (p: number): number => (Math.imul(p, 2654435761) + 12345) >>> 0;
  const results: Measurement[] = [];
  const info: Record<string, unknown> = {};
  const run = async (): Promise<void> => {
    {
      const src = new WebAssembly.Memory({ initial: wasmPages });
      const w = new Uint32Array(src.buffer);
      for (let p = 0; p < pages; p++) w.fill(expect(p), p * 1024, p * 1024 + 1024);
      const t = performance.now();
      const m = snapshot(src, dir);
      info.snapshotMs = performance.now() - t;
      info.basePages = m.layers[0].pages;
    }
    const basePath = join(dir, "base.mem");
    syncFile(basePath);
    const order = permutation(pages);
    const touches: Record<string, Uint32Array> = {
      full: Uint32Array.from({ length: pages }, (_, i) => i),
      rand10: order.slice(0, Math.floor(pages / 10)),
    };
    touches["full-rw"] = touches.full;
    touches["rand10-rw"] = touches.rand10;
    /** Reads the first word of each page in `list` (and writes it + 1) and counts the wrong ones. */
    const touch = (memory: WebAssembly.Memory, list: Uint32Array, write: boolean): number => {
      const w = new Uint32Array(memory.buffer);
      let bad = 0;
      for (let i = 0; i < list.length; i++) {
        const k = list[i] * 1024;
        const v = w[k];
        if (v !== expect(list[i])) bad++;
        if (write) w[k] = v + 1;
      }
      return bad;
    };

    const measure = async (impl: string, touchName: string, timed: boolean): Promise<void> => {
      collect();
      readThrough(basePath); // warm page cache
      if (impl === "lazy-warm") {
        FaultServer.warm(1); // the server's threads start ahead (untimed), as a restore handler may do
        await new Promise((r) => setTimeout(r, 500));
      }
      const into = new WebAssembly.Memory({ initial: wasmPages });
      const list = touches[touchName];
      const write = touchName.endsWith("-rw");
      const m: Measurement = { impl, touch: touchName, ms: 0, touched: list.length };
      let bad = 0;
      const cpu0 = process.cpuUsage();
      if (impl === "mmap") {
        const addr = libc.addressOf(new Uint8Array(into.buffer, 0, 1));
        const t = performance.now();
        const fd = libc.open(cstring(basePath), O_RDONLY | O_CLOEXEC, 0);
        const got = libc.mmap(addr, length, PROT_RW, MAP_FIXED | MAP_PRIVATE, fd, 0);
        libc.close(fd);
        if (got !== addr) {
          fail(`mmap MAP_FIXED over the WebAssembly.Memory: got ${got}, errno ${libc.errno()}`);
        }
        bad = touch(into, list, write);
        m.ms = performance.now() - t;
        // Give the runtime back anonymous memory at that address before it frees or reuses it.
        const back = libc.mmap(addr, length, PROT_RW, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (back !== addr) fail(`mmap back to anonymous memory: errno ${libc.errno()}`);
      } else {
        const options = {
          into,
          ...(impl.startsWith("eager") ? { eager: true } : {}),
          ...(impl.endsWith("noverify") || impl === "lazy-warm" ? { verify: "none" as const } : {}),
        };
        const t = performance.now();
        const r = await restore(dir, options);
        m.startMs = performance.now() - t;
        bad = touch(into, list, write);
        m.ms = performance.now() - t;
        if (r.server) {
          const st = r.server.stats; // live counters (they can trail by one)
          m.faults = st.faults;
          m.placed = st.pages;
          m.meanLatencyUs = st.meanLatencyUs;
          // complete(), not close(): close() poisons the pages never placed, and Bun's GC writes the
          // first page of a WebAssembly.Memory it frees: a SIGBUS that kills the process.
          await r.complete();
        }
      }
      const cpu = process.cpuUsage(cpu0);
      m.cpuMs = (cpu.user + cpu.system) / 1000; // the whole process, every thread
      m.sysMs = cpu.system / 1000;
      if (bad !== 0) fail(`${impl} ${touchName}: ${bad} pages did not hold the snapshot's bytes`);
      if (timed) results.push(m);
    };

    for (const impl of RESTORE_IMPLS) await measure(impl, "rand10", false); // warm-up, untimed
    const k = round % RESTORE_IMPLS.length;
    for (const touchName of TOUCHES) {
      for (const impl of [...RESTORE_IMPLS.slice(k), ...RESTORE_IMPLS.slice(0, k)]) {
        await measure(impl, touchName, true);
      }
    }
  };
  return run().then(
    () => ({ part: "restore", mib, pages, fs: fsType(dirRoot), ...info, results }),
  ).finally(() => rmSync(dir, { recursive: true, force: true }));
}

// ---- runner --------------------------------------------------------------------------------------------

interface Options {
  quick: boolean;
  rounds: number;
  parts: string[];
  runtimes: string[];
  dir: string;
  lock: string;
  diffMib: number;
  restoreMib: number;
}

function parseArgs(argv: string[]): Options {
  const quick = argv.includes("--quick");
  const value = (name: string): string | undefined => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : argv.find((a) => a.startsWith(name + "="))?.slice(name.length + 1);
  };
  const list = (name: string, all: readonly string[]): string[] => {
    const v = value(name)?.split(",").map((s) => s.trim()).filter(Boolean) ?? [...all];
    for (const x of v) {
      if (!all.includes(x)) throw new Error(`${name}: unknown ${x}; known: ${all.join(", ")}`);
    }
    return v;
  };
  return {
    quick,
    rounds: Number(value("--rounds") ?? (quick ? 2 : 5)),
    parts: list("--parts", ["diff", "restore"]),
    runtimes: list("--runtimes", RUNTIMES),
    dir: value("--dir") ?? tmpdir(),
    lock: value("--lock") ?? "/tmp/uffd-bench.lock",
    diffMib: Number(value("--diff-mib") ?? (quick ? 64 : 1024)),
    restoreMib: Number(value("--restore-mib") ?? (quick ? 32 : 256)),
  };
}

interface ChildResult {
  part: string;
  runtime: string;
  version: string;
  round: number;
  results: Measurement[];
  [k: string]: unknown;
}

/** One child under the lock: its JSON line, or why it failed (a string). */
function runChild(o: Options, part: string, runtime: string, round: number): ChildResult | string {
  const mib = part === "diff" ? o.diffMib : o.restoreMib;
  const script = ["bench/snapshot.ts", "--child", part, "--round", String(round), "--mib", String(mib)];
  const args = [...script, "--dir", o.dir];
  const cmd = runtime === "deno"
    ? ["node_modules/.bin/deno", "run", "-A", "--v8-flags=--expose-gc", ...args]
    : ["node_modules/.bin/bun", "run", ...args];
  const r = spawnSync("flock", [o.lock, ...cmd], { cwd: root, encoding: "utf8", timeout: 300_000 });
  const lines = (r.stdout ?? "").trim().split("\n").filter((l) => l.startsWith("{"));
  if (r.status !== 0 || lines.length === 0) {
    const why = r.error ? String(r.error) : `exit ${r.status ?? r.signal}`;
    return `${cmd.join(" ")}: ${why}: ${(r.stderr ?? "").trim().split("\n").slice(-3).join(" | ")}`;
  }
  return JSON.parse(lines[lines.length - 1]) as ChildResult;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

const f = (x: number, d = 1): string => (Number.isFinite(x) ? x.toFixed(d) : "-");

function markdown(head: string[], rows: string[][], right: boolean[]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]): string =>
    `| ${cells.map((c, i) => (right[i] ? c.padStart(w[i]) : c.padEnd(w[i]))).join(" | ")} |`;
  const sep = `| ${w.map((n, i) => (right[i] ? "-".repeat(n - 1) + ":" : "-".repeat(n))).join(" | ")} |`;
  return [line(head), sep, ...rows.map(line)].join("\n");
}

function machine(): Record<string, string> {
  const sh = (c: string, a: string[]): string => {
    try {
      return execFileSync(c, a, { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
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
    memory: readFileSync("/proc/meminfo", "utf8").match(/MemTotal:\s*(.*)/)?.[1] ?? "?",
    date: new Date().toISOString(),
    deno: sh("node_modules/.bin/deno", ["--version"]).split("\n")[0],
    bun: sh("node_modules/.bin/bun", ["--version"]),
    // UFFD_BENCH_COMMIT: the commit of a clean export (git archive) the bench runs from.
    commit: process.env.UFFD_BENCH_COMMIT ??
      (sh("git", ["rev-parse", "--short", "HEAD"]) + (dirty ? "+dirty(src)" : "")),
    load: readFileSync("/proc/loadavg", "utf8").trim(),
  };
}

function runner(o: Options): void {
  const started = performance.now();
  mkdirSync(o.dir, { recursive: true });
  const m = machine();
  const fs = fsType(o.dir);
  console.log(
    `snapshot bench: ${o.rounds} rounds, parts ${o.parts.join(",")}, runtimes ${o.runtimes.join(",")}, ` +
      `diff ${o.diffMib} MiB, restore ${o.restoreMib} MiB, files in ${o.dir} (${fs}), lock ${o.lock}`,
  );
  console.log(`machine: ${JSON.stringify(m)}`);
  const runs: ChildResult[] = [];
  const errors: string[] = [];
  for (let round = 0; round < o.rounds; round++) {
    for (const part of o.parts) {
      // Alternate which runtime goes first.
      const rts = round % 2 ? [...o.runtimes].reverse() : o.runtimes;
      for (const runtime of rts) {
        const t = performance.now();
        const r = runChild(o, part, runtime, round);
        if (typeof r === "string") {
          errors.push(r);
          console.log(`round ${round} ${part} ${runtime}: ERROR ${r}`);
          continue;
        }
        runs.push(r);
        console.log(
          `round ${round} ${part} ${runtime} (${((performance.now() - t) / 1000).toFixed(1)} s): ` +
            r.results.map((x) => `${x.impl}${x.touch ? `/${x.touch}` : ""} ${f(x.ms)} ms`).join(", "),
        );
      }
    }
  }

  type Stat = { median: number; min: number; max: number; n: number; rows: Measurement[] };
  const stat = (part: string, runtime: string, impl: string, touch?: string): Stat => {
    const rows = runs.filter((r) => r.part === part && r.runtime === runtime).flatMap((r) => r.results)
      .filter((x) => x.impl === impl && x.touch === touch);
    const ms = rows.map((x) => x.ms);
    return { median: median(ms), min: Math.min(...ms), max: Math.max(...ms), n: ms.length, rows };
  };
  const med = (rows: Measurement[], k: string): number => median(rows.map((x) => Number(x[k])));
  const targets: { name: string; runtime: string; value: number; limit: number; met: boolean }[] = [];
  const target = (name: string, runtime: string, value: number, limit: number): string => {
    const met = value <= limit;
    targets.push({ name, runtime, value, limit, met });
    return `${runtime}: ${name} = ${f(value, 2)} (target <= ${limit}): ${met ? "met" : "MISSED"}`;
  };
  const out: string[] = [];

  if (o.parts.includes("diff")) {
    const rows: string[][] = [];
    for (const rt of o.runtimes) {
      const d = stat("diff", rt, "diff");
      const lower = stat("diff", rt, "dirty-only");
      for (const impl of DIFF_IMPLS) {
        const s = stat("diff", rt, impl);
        if (s.n === 0) continue;
        const extra = impl === "diff"
          ? `scan ${f(med(s.rows, "scanMs"))}, extents ${f(med(s.rows, "extentsMs"))}, hash ${
            f(med(s.rows, "hashMs"))
          } (in 64 MiB chunks ${f(med(s.rows, "hash64MiBChunksMs"))})`
          : impl === "soft-dirty"
          ? `pagemap ${f(med(s.rows, "pagemapMs"))}, write ${f(med(s.rows, "writeMs"))}, clear_refs ${
            f(med(s.rows, "clearMs"))
          }${s.rows[0].supported ? "" : " (floor: no soft-dirty bits)"}`
          : "";
        rows.push([
          rt,
          impl,
          f(s.median, 2),
          f(s.min, 2),
          f(s.max, 2),
          f(s.median / lower.median, 2),
          f(s.median / d.median, 2),
          extra,
        ]);
      }
    }
    const r0 = runs.find((r) => r.part === "diff");
    out.push(
      `\n### Diff: ${o.diffMib} MiB, ${r0?.dirtyPages ?? "?"} pages (1%) dirtied at random, files on ${
        r0?.fs ?? fs
      }\n`,
    );
    out.push(markdown(
      ["runtime", "method", "median ms", "min", "max", "/ dirty-only", "/ diff", "parts (medians, ms)"],
      rows,
      [false, false, true, true, true, true, true, false],
    ));
    out.push("");
    for (const rt of o.runtimes) {
      const d = stat("diff", rt, "diff").median;
      out.push(target("diff / dirty-only", rt, d / stat("diff", rt, "dirty-only").median, 2));
      out.push(target("diff / soft-dirty", rt, d / stat("diff", rt, "soft-dirty").median, 1));
    }
  }

  if (o.parts.includes("restore")) {
    const g = (rt: string, impl: string, touch: string): Stat => stat("restore", rt, impl, touch);
    const r0 = runs.find((r) => r.part === "restore");
    out.push(
      `\n### Restore: ${o.restoreMib} MiB WebAssembly.Memory, one full layer, page cache warm, files on ${
        r0?.fs ?? fs
      }\n`,
    );
    out.push("Time from the restore call until the touch is done, ms: median (min-max) over the rounds.\n");
    const rows: string[][] = [];
    for (const rt of o.runtimes) {
      for (const impl of RESTORE_IMPLS) {
        const cells = TOUCHES.map((t) => {
          const s = g(rt, impl, t);
          return s.n ? `${f(s.median)} (${f(s.min)}-${f(s.max)})` : "-";
        });
        rows.push([rt, impl, ...cells]);
      }
    }
    out.push(markdown(["runtime", "method", ...TOUCHES], rows, [false, false, true, true, true, true]));
    out.push("\nRatios of medians (below 1: the first is faster).\n");
    const ratio = (rt: string, a: string, b: string, t: string): string =>
      f(g(rt, a, t).median / g(rt, b, t).median, 2);
    const rrows: string[][] = [];
    for (const rt of o.runtimes) {
      for (const t of TOUCHES) {
        rrows.push([
          rt,
          t,
          ratio(rt, "lazy", "eager", t),
          ratio(rt, "lazy", "mmap", t),
          ratio(rt, "lazy-noverify", "eager-noverify", t),
          ratio(rt, "lazy-noverify", "mmap", t),
          ratio(rt, "lazy-warm", "eager-noverify", t),
          ratio(rt, "lazy-warm", "mmap", t),
        ]);
      }
    }
    out.push(markdown(
      [
        "runtime",
        "touch",
        "lazy / eager",
        "lazy / mmap",
        "lazy-noverify / eager-noverify",
        "lazy-noverify / mmap",
        "lazy-warm / eager-noverify",
        "lazy-warm / mmap",
      ],
      rrows,
      [false, false, true, true, true, true, true, true],
    ));
    out.push(
      "\nLazy restores, medians: restore() until it resolved, faults, pages placed, mean fault latency,",
    );
    out.push("CPU of the whole process (all threads) during the timed part.\n");
    const lrows: string[][] = [];
    for (const rt of o.runtimes) {
      for (const t of TOUCHES) {
        for (const impl of RESTORE_IMPLS.filter((i) => i.startsWith("lazy"))) {
          const s = g(rt, impl, t);
          if (!s.n) continue;
          lrows.push([
            rt,
            t,
            impl,
            f(med(s.rows, "startMs")),
            f(med(s.rows, "faults"), 0),
            f(med(s.rows, "placed"), 0),
            f(med(s.rows, "meanLatencyUs")),
            f(med(s.rows, "cpuMs")),
            f(med(s.rows, "sysMs")),
          ]);
        }
      }
    }
    out.push(markdown(
      ["runtime", "touch", "method", "start ms", "faults", "placed", "fault us", "cpu ms", "sys ms"],
      lrows,
      [false, false, false, true, true, true, true, true, true],
    ));
    out.push("");
    for (const rt of o.runtimes) {
      for (const rw of ["", "-rw"]) {
        const q = (impl: string, t: string): number => g(rt, impl, t + rw).median;
        out.push(target(`lazy / eager, rand10${rw}`, rt, q("lazy", "rand10") / q("eager", "rand10"), 1));
        out.push(target(`lazy / mmap, rand10${rw}`, rt, q("lazy", "rand10") / q("mmap", "rand10"), 1));
        out.push(target(`lazy / mmap, full${rw}`, rt, q("lazy", "full") / q("mmap", "full"), 1.5));
      }
    }
  }
  const wall = (performance.now() - started) / 1000;
  console.log(out.join("\n"));
  console.log(`\nwall time ${wall.toFixed(0)} s${errors.length ? `, ${errors.length} errors` : ""}`);
  console.log(JSON.stringify({ machine: m, options: o, fs, wallSeconds: wall, targets, errors, runs }));
  if (errors.length) process.exit(1);
}

// ---- entry ----------------------------------------------------------------------------------------------

const argv = process.argv.slice(2);
const ci = argv.indexOf("--child");
if (ci >= 0) {
  const part = argv[ci + 1];
  const num = (name: string, d: number): number => {
    const i = argv.indexOf(name);
    return i >= 0 ? Number(argv[i + 1]) : d;
  };
  const di = argv.indexOf("--dir");
  const dir = di >= 0 ? argv[di + 1] : tmpdir();
  const round = num("--round", 0);
  const res = part === "diff"
    ? childDiff(dir, num("--mib", 1024), round)
    : part === "restore"
    ? await childRestore(dir, num("--mib", 256), round)
    : fail(`unknown part ${part}`);
  console.log(JSON.stringify({ ...res, runtime: libc.runtime, version: runtimeVersion(), round }));
  process.exit(0);
} else {
  runner(parseArgs(argv));
}
