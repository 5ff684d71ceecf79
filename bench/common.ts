/**
 * Pattern, checksum and permutation shared by the TS scenarios; the C handler
 * (bench/native/handler.c) computes exactly the same numbers.
 * @module
 */
import { readdirSync, readFileSync } from "node:fs";
import process from "node:process";

/** Bytes per page on x86-64. */
export const PS = 4096;

/** Fills `w` with the source pattern: word i is (i * 2654435761 + 12345) mod 2^32. */
export function fillPattern(w: Uint32Array): void {
  for (let i = 0; i < w.length; i++) w[i] = (Math.imul(i, 2654435761 | 0) + 12345) >>> 0;
}

/** s = s * 31 + w[i] over all words, mod 2^32. */
export function checksum(w: Uint32Array): number {
  let s = 0;
  for (let i = 0; i < w.length; i++) s = (Math.imul(s, 31) + w[i]) >>> 0;
  return s;
}

/** A Fisher-Yates permutation of [0, n) driven by xorshift32 (seed 0x9e3779b9). */
export function permutation(n: number): Uint32Array {
  const order = new Uint32Array(n);
  let x = 0x9e3779b9;
  for (let i = 0; i < n; i++) order[i] = i;
  for (let i = n - 1; i > 0; i--) {
    x = (x ^ (x << 13)) >>> 0;
    x = (x ^ (x >>> 17)) >>> 0;
    x = (x ^ (x << 5)) >>> 0;
    const j = x % (i + 1);
    const t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
  return order;
}

/** Words of a byte view (the view must be 4-byte aligned, a page multiple). */
export function words(b: Uint8Array): Uint32Array {
  return new Uint32Array(b.buffer, b.byteOffset, b.byteLength >>> 2);
}

/** Every scenario, in the order the runner prints them. */
export const SCENARIOS = [
  "seq-copy-4k",
  "rand-copy-4k",
  "seq-copy-64k",
  "seq-adaptive",
  "move",
  "continue",
  "zeropage",
  "wp-roundtrip",
  "threads-4",
  "remote-threads-4",
  "remote-min-4",
  "remote-workers-4",
  "zero-fill",
  "memcpy-4k",
] as const;

/**
 * The two-process variants of threads-4 (toucher and handler in different processes, the uffd
 * passed over a Unix socket), which take threads-4 apart: in `remote-threads-4` the touchers are
 * always a C process's 4 pthreads and the handler is C or the runtime's FaultServer (the handler's
 * cost alone); in `remote-workers-4` the handler is always the C one and the touchers are C
 * pthreads or the runtime's 4 Workers (the touchers' cost alone); `remote-min-4` is remote-threads-4 with
 * the least a JavaScript handler can do (bench/ts_min_handler.ts) in place of the FaultServer (the
 * runtime's own cost: its thread and FFI calls). Diagnostics, not targets.
 */
export const TWO_PROCESS = ["remote-threads-4", "remote-min-4", "remote-workers-4"] as const;

/** A scenario name. */
export type Scenario = typeof SCENARIOS[number];

/** CPU time of one thread of this process, from /proc/self/task/<tid>/{comm,schedstat,stat}. */
export interface ThreadTime {
  /** Thread id. */
  tid: number;
  /** Thread name. */
  comm: string;
  /** Time on CPU, ns (schedstat). */
  ns: number;
  /** User time, clock ticks. */
  user: number;
  /** System time, clock ticks. */
  sys: number;
}

/** A snapshot of the CPU time of every thread of this process. */
export function threadTimes(): Map<number, ThreadTime> {
  const out = new Map<number, ThreadTime>();
  for (const t of readdirSync("/proc/self/task")) {
    try {
      const dir = `/proc/self/task/${t}`;
      const stat = readFileSync(`${dir}/stat`, "utf8");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      out.set(Number(t), {
        tid: Number(t),
        comm: readFileSync(`${dir}/comm`, "utf8").trim(),
        ns: Number(readFileSync(`${dir}/schedstat`, "utf8").split(" ")[0]),
        user: Number(f[11]),
        sys: Number(f[12]),
      });
    } catch {
      // the thread exited meanwhile
    }
  }
  return out;
}

/**
 * CPU per page of each thread that ran between two snapshots (busiest first, at most 6):
 * `{name, us, user, sys}` where `us` is CPU microseconds per page and user/sys the tick split.
 */
export function cpuPerPage(
  before: Map<number, ThreadTime>,
  after: Map<number, ThreadTime>,
  pages: number,
): { name: string; us: number; user: number; sys: number }[] {
  const rows = [];
  for (const [tid, a] of after) {
    const b = before.get(tid) ?? { ns: 0, user: 0, sys: 0 };
    const ns = a.ns - b.ns;
    if (ns <= 0) continue;
    rows.push({
      name: tid === process.pid ? `main(${a.comm})` : a.comm,
      us: Number((ns / 1000 / pages).toFixed(3)),
      user: a.user - b.user,
      sys: a.sys - b.sys,
    });
  }
  return rows.sort((x, y) => y.us - x.us).slice(0, 6);
}
