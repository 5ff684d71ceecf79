/**
 * Snapshot a running WebAssembly instance's memory, take a diff, and restore it lazily into a new
 * instance of the same module, which then computes exactly what the original does.
 *
 *   deno run --allow-ffi --allow-read --allow-write examples/wasm_snapshot.ts [--mib N]
 *   bun run examples/wasm_snapshot.ts [--mib N]
 *
 * The module is assembled by hand below (no toolchain). It imports its memory and exports
 * `step(n)`: n rounds of a 32-bit LCG whose state lives in memory word 0; each round rewrites one
 * word at a pseudo-random address from the word's old value, and folds the old value into the
 * state (so what comes next depends on the memory's contents, not only on the seed); and
 * `checksum()`: h = h * 31 + word over every word of memory. All of the program's state is in
 * its memory: a restored memory must make a new instance continue exactly where the old one was.
 *
 * Steps: run, `DirtyTracker.start(memory)` + `tracker.snapshot(dir)` (the base), run more,
 * `tracker.diff(dir)` (only the pages written since), `inspectSnapshot(dir)`, then
 * `restore(dir, { into })` into a fresh `WebAssembly.Memory` (lazy: each page is served on its
 * first touch by a FaultServer running in its own Worker, so this thread runs wasm over the memory
 * being restored) and compare the two instances. Works in a temporary directory it removes.
 */
import { mkdtempSync, rmSync } from "node:fs";
import process from "node:process";
import { DirtyTracker, inspectSnapshot, pageSize, restore } from "../mod.ts";

// ---- The module, byte by byte -------------------------------------------------------------------

/** Unsigned LEB128. */
function uleb(n: number): number[] {
  const out = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
}

/** Signed LEB128 of a 32-bit integer (the immediate of i32.const). */
function sleb(n: number): number[] {
  const out = [];
  n |= 0;
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) {
      out.push(b);
      return out;
    }
    out.push(b | 0x80);
  }
}

/** A length-prefixed vector or section body. */
const sized = (bytes: number[]): number[] => [...uleb(bytes.length), ...bytes];
const name = (s: string): number[] => sized([...new TextEncoder().encode(s)]);
const section = (id: number, body: number[]): number[] => [id, ...sized(body)];

// Opcodes used.
const I32 = 0x7f;
const BLOCK = 0x02, LOOP = 0x03, BR = 0x0c, BR_IF = 0x0d, END = 0x0b, VOID = 0x40;
const GET = 0x20, SET = 0x21;
const LOAD = 0x28, STORE = 0x36, MEMSIZE = 0x3f;
const CONST = 0x41, EQZ = 0x45, GE_U = 0x4f;
const ADD = 0x6a, SUB = 0x6b, MUL = 0x6c, REM_U = 0x70, AND = 0x71, XOR = 0x73;
const SHL = 0x74, SHR_U = 0x76, ROTL = 0x77;
const mem = (offset = 0): number[] => [0x02, ...uleb(offset)]; // align 4, offset
const c = (n: number): number[] => [CONST, ...sleb(n)];

// (func $step (param $n i32) (local $s i32) (local $a i32) (local $size i32) (local $old i32)
//   (local.set $size (i32.shl (memory.size) (i32.const 16)))
//   (local.set $s (i32.load (i32.const 0)))
//   (block (loop
//     (br_if 1 (i32.eqz (local.get $n)))
//     (local.set $s (i32.add (i32.mul (local.get $s) (i32.const 1664525)) (i32.const 1013904223)))
//     (local.set $a (i32.and (i32.rem_u (i32.shr_u (local.get $s) (i32.const 4)) (local.get $size))
//                            (i32.const -4)))
//     (local.set $old (i32.load (local.get $a)))
//     (i32.store (local.get $a) (i32.xor (i32.rotl (local.get $old) (i32.const 5)) (local.get $s)))
//     (local.set $s (i32.add (local.get $s) (local.get $old)))
//     (local.set $n (i32.sub (local.get $n) (i32.const 1)))
//     (br 0)))
//   (i32.store (i32.const 0) (local.get $s)))
// deno-fmt-ignore
const stepBody = [
  1, 4, I32, // locals: one group of 4 x i32
  MEMSIZE, 0x00, ...c(16), SHL, SET, 3,
  ...c(0), LOAD, ...mem(), SET, 1,
  BLOCK, VOID, LOOP, VOID,
  GET, 0, EQZ, BR_IF, 1,
  GET, 1, ...c(1664525), MUL, ...c(1013904223), ADD, SET, 1,
  GET, 1, ...c(4), SHR_U, GET, 3, REM_U, ...c(-4), AND, SET, 2,
  GET, 2, LOAD, ...mem(), SET, 4,
  GET, 2, GET, 4, ...c(5), ROTL, GET, 1, XOR, STORE, ...mem(),
  GET, 1, GET, 4, ADD, SET, 1,
  GET, 0, ...c(1), SUB, SET, 0,
  BR, 0,
  END, END,
  ...c(0), GET, 1, STORE, ...mem(),
  END,
];
// (func $checksum (result i32) (local $i i32) (local $h i32) (local $size i32)
//   (local.set $size (i32.shl (memory.size) (i32.const 16)))
//   (block (loop
//     (br_if 1 (i32.ge_u (local.get $i) (local.get $size)))
//     (local.set $h (i32.add (i32.mul (local.get $h) (i32.const 31)) (i32.load (local.get $i))))
//     (local.set $i (i32.add (local.get $i) (i32.const 4)))
//     (br 0)))
//   (local.get $h))
// deno-fmt-ignore
const checksumBody = [
  1, 3, I32, // locals: one group of 3 x i32
  MEMSIZE, 0x00, ...c(16), SHL, SET, 2,
  BLOCK, VOID, LOOP, VOID,
  GET, 0, GET, 2, GE_U, BR_IF, 1,
  GET, 1, ...c(31), MUL, GET, 0, LOAD, ...mem(), ADD, SET, 1,
  GET, 0, ...c(4), ADD, SET, 0,
  BR, 0,
  END, END,
  GET, 1,
  END,
];

// deno-fmt-ignore
const wasm = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // "\0asm", version 1
  // types: 0 = (i32) -> (), 1 = () -> (i32)
  ...section(1, [2, 0x60, 1, I32, 0, 0x60, 0, 1, I32]),
  // import "env" "memory" (memory 1): the instance works on whatever memory it is given
  ...section(2, [1, ...name("env"), ...name("memory"), 0x02, 0x00, 1]),
  ...section(3, [2, 0, 1]), // functions: step has type 0, checksum type 1
  ...section(7, [2, ...name("step"), 0x00, 0, ...name("checksum"), 0x00, 1]),
  ...section(10, [2, ...sized(stepBody), ...sized(checksumBody)]), // code
]);

interface Exports {
  step(n: number): void;
  checksum(): number;
}

const module = new WebAssembly.Module(wasm);
const instantiate = (memory: WebAssembly.Memory): Exports =>
  new WebAssembly.Instance(module, { env: { memory } }).exports as unknown as Exports;

// ---- The run ------------------------------------------------------------------------------------

const args = process.argv.slice(2);
const mibArg = args.indexOf("--mib");
const MiB = 2 ** 20;
const mib = mibArg >= 0 ? Number(args[mibArg + 1]) : 64;
if (!Number.isInteger(mib) || mib <= 0 || mib > 2048) throw new Error(`--mib wants 1..2048 (got ${mib})`);
const wasmPages = (mib * MiB) / 65536;
const pages = (mib * MiB) / pageSize;
const hex = (n: number): string => `0x${(n >>> 0).toString(16).padStart(8, "0")}`;
const ms = (t: number): string => `${t.toFixed(1)} ms`;
const runtime = "Bun" in globalThis
  ? `Bun ${process.versions.bun}`
  : "Deno" in globalThis
  ? `Deno ${process.versions.deno}`
  : `Node.js ${process.versions.node}`;

// Pages whose bytes differ between two copies of the memory (what a diff must hold at least).
function changedPages(a: Uint8Array, b: Uint8Array): number {
  const wa = new Int32Array(a.buffer, a.byteOffset, a.length / 4);
  const wb = new Int32Array(b.buffer, b.byteOffset, b.length / 4);
  const words = pageSize / 4;
  let n = 0;
  for (let p = 0; p < a.length / pageSize; p++) {
    for (let i = p * words; i < (p + 1) * words; i++) {
      if (wa[i] !== wb[i]) {
        n++;
        break;
      }
    }
  }
  return n;
}

const dir = mkdtempSync("/tmp/uffd-wasm-snapshot-");
let failed = false;
try {
  console.log(`wasm snapshot on ${runtime}: ${mib} MiB WebAssembly.Memory (${pages} pages), in ${dir}`);
  console.log(`module: ${wasm.length} bytes, hand-assembled; exports step(n), checksum()`);
  const memory = new WebAssembly.Memory({ initial: wasmPages });
  const original = instantiate(memory);
  new Uint32Array(memory.buffer)[0] = 12345; // the seed: the LCG state is memory word 0

  const first = pages * 2; // about 86% of the pages written (e^-2 of them left untouched)
  let t = performance.now();
  original.step(first);
  const stepMs = performance.now() - t;
  t = performance.now();
  const sum0 = original.checksum();
  const checksumMs = performance.now() - t;
  console.log(
    `ran ${first} steps in ${ms(stepMs)}: checksum ${hex(sum0)} (checksum() over present memory: ` +
      `${ms(checksumMs)})`,
  );

  using tracker = DirtyTracker.start(memory);
  t = performance.now();
  const base = tracker.snapshot(dir);
  const baseMs = performance.now() - t;
  const captured = base.layers[0].pages;
  console.log(
    `snapshot: ${base.layers[0].file}, ${captured} pages captured (${
      pages - captured
    } zero pages left as holes) ` +
      `in ${ms(baseMs)}`,
  );

  const before = new Uint8Array(memory.buffer).slice();
  const more = Math.floor(pages / 8);
  original.step(more);
  const changed = changedPages(before, new Uint8Array(memory.buffer));
  t = performance.now();
  const diff = tracker.diff(dir);
  const diffMs = performance.now() - t;
  const atDiff = original.checksum();
  console.log(`ran ${more} steps more: checksum ${hex(atDiff)}`);
  console.log(
    `diff: ${diff.file}, ${diff.pages} pages (pages changed, by comparison with a copy: ${changed}) ` +
      `in ${ms(diffMs)}`,
  );
  tracker.close();

  const report = inspectSnapshot(dir);
  console.log(`layers (inspectSnapshot): ${report.zeroPages} zero pages, ${report.dataBytes} bytes of data`);
  for (const l of report.layers) {
    console.log(
      `  ${l.file.padEnd(10)} ${l.kind.padEnd(4)}  data ${String(l.dataPages).padStart(6)} pages  ` +
        `holes ${String(l.holePages).padStart(6)}  top ${String(l.topPages).padStart(6)}  ` +
        `checksummed chunks ${l.checksummedChunks}`,
    );
  }

  console.log(`restoring lazily into a fresh ${mib} MiB WebAssembly.Memory...`);
  const into = new WebAssembly.Memory({ initial: wasmPages });
  t = performance.now();
  const r = await restore(dir, { into });
  const startMs = performance.now() - t;
  const restored = instantiate(into);
  const restoredSum = restored.checksum(); // runs over memory being served: each first touch faults
  const restoreMs = performance.now() - t;
  const live = r.server!.stats;
  console.log(
    `restored checksum ${hex(restoredSum)} (original ${hex(atDiff)}): ` +
      `${restoredSum === atDiff ? "equal" : "DIFFERENT"}; ${live.faults} faults so far`,
  );
  await r.complete(); // every page is in by now; this stops the server (ordinary memory from here on)
  const s = r.server!.stats;

  const after = Math.floor(pages * 3);
  original.step(after);
  restored.step(after);
  const a = original.checksum();
  const b = restored.checksum();
  console.log(
    `after ${after} more steps on both: ${hex(a)} and ${hex(b)}: ${a === b ? "equal" : "DIFFERENT"}`,
  );
  const differing = changedPages(new Uint8Array(memory.buffer), new Uint8Array(into.buffer));
  console.log(`pages that differ between the two memories: ${differing}`);
  const same = restoredSum === atDiff && a === b && differing === 0;

  console.log("summary:");
  console.log(`  pages captured:  ${captured} in the base, ${diff.pages} in the diff`);
  console.log(
    `  restore:         ${s.faults} faults, ${s.pages} pages placed (${
      (s.pages / Math.max(1, s.faults)).toFixed(1)
    } per fault), ${s.errors} errors, ${ms(restoreMs)} from restore() to the restored checksum ` +
      `(restore() itself ${ms(startMs)})`,
  );
  console.log(`  capture:         base ${ms(baseMs)}, diff ${ms(diffMs)}`);
  console.log(
    `  result:          ${same ? "the restored instance computes the same as the original" : "MISMATCH"}`,
  );
  failed = !same;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
if (failed) process.exit(1);
