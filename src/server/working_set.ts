/**
 * Working sets for record and prefetch (REAP, ASPLOS'21): the pages a restore installed on
 * demand, in first-touch order, saved after one run and installed by the next run's prefetcher
 * before the guest asks for them. Pages are counted in the source's pages (a memory file's
 * offset divided by the page size), so a working set fits any restore of the same file.
 * @module
 */
import { readFileSync, writeFileSync } from "node:fs";
import { invalid } from "../errors.ts";
import { showValue } from "../checks.ts";

/** Runs of source pages `[first page, count]`, in the order they were first installed. */
export interface WorkingSet {
  /** Page size the runs count in, bytes. */
  pageSize: number;
  /** `[first page, count]` runs in first-touch order. */
  runs: Array<[number, number]>;
}

const FORMAT = "uffd-working-set";

/** Pages in a working set. */
export function workingSetPages(ws: WorkingSet): number {
  let n = 0;
  for (const [, c] of ws.runs) n += c;
  return n;
}

/** Checks a working set (from a file or a caller), throwing a typed error that says what is wrong. */
export function checkWorkingSet(ws: unknown, where = "working set"): WorkingSet {
  const bad = (what: string): never => {
    throw invalid("prefetch", `${where}: ${what}`);
  };
  if (!ws || typeof ws !== "object") bad("expected an object { pageSize, runs }");
  const { pageSize, runs } = ws as Partial<WorkingSet>;
  if (!Number.isSafeInteger(pageSize) || pageSize! < 4096 || (pageSize! & (pageSize! - 1)) !== 0) {
    bad(`pageSize must be a power of two >= 4096 (got ${showValue(pageSize)})`);
  }
  if (!Array.isArray(runs)) bad("runs must be an array of [first page, count] pairs");
  for (const r of runs!) {
    if (
      !Array.isArray(r) || r.length !== 2 || !Number.isSafeInteger(r[0]) || !Number.isSafeInteger(r[1]) ||
      r[0] < 0 || r[1] <= 0
    ) {
      bad(`runs must be [first page >= 0, count > 0] pairs (got ${showValue(r)})`);
    }
  }
  return ws as WorkingSet;
}

/** The working set as the JSON text {@link saveWorkingSet} writes. */
export function formatWorkingSet(ws: WorkingSet): string {
  checkWorkingSet(ws);
  return JSON.stringify({
    format: FORMAT,
    version: 1,
    pageSize: ws.pageSize,
    pages: workingSetPages(ws),
    runs: ws.runs,
  }) + "\n";
}

/** Parses the text of a working-set file, with a typed error naming the problem. */
export function parseWorkingSet(text: string, where = "working set"): WorkingSet {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw invalid("prefetch", `${where} is not JSON: ${e instanceof Error ? e.message : String(e)}`);
  }
  const o = v as { format?: unknown; version?: unknown };
  if (!o || typeof o !== "object" || o.format !== FORMAT) {
    throw invalid("prefetch", `${where} is not a working-set file (no "format": "${FORMAT}")`);
  }
  if (o.version !== 1) {
    throw invalid("prefetch", `${where}: unsupported version ${JSON.stringify(o.version)}`);
  }
  const ws = checkWorkingSet(v, where);
  return { pageSize: ws.pageSize, runs: ws.runs };
}

/** Writes a working set to a file (JSON). */
export function saveWorkingSet(path: string, ws: WorkingSet): void {
  writeFileSync(path, formatWorkingSet(ws));
}

/** Reads a working set written by {@link saveWorkingSet}. */
export function loadWorkingSet(path: string): WorkingSet {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw invalid("prefetch", `cannot read ${path}: ${e instanceof Error ? e.message : String(e)}`, "ENOENT");
  }
  return parseWorkingSet(text, path);
}

/**
 * The prefetch plan of a working set for a source of `pages` pages of `pageSize` bytes: page
 * indices in order, each once. A working set recorded with another page size is converted
 * (its byte ranges rounded out to whole pages). Pages past the source are dropped.
 */
export function planOf(ws: WorkingSet, pageSize: number, pages: number): Int32Array {
  const seen = new Uint8Array(pages);
  const out: number[] = [];
  for (const [first, count] of ws.runs) {
    const a = Math.floor((first * ws.pageSize) / pageSize);
    const b = Math.min(pages, Math.ceil(((first + count) * ws.pageSize) / pageSize));
    for (let p = a; p < b; p++) {
      if (seen[p] === 0) {
        seen[p] = 1;
        out.push(p);
      }
    }
  }
  const plan = new Int32Array(new SharedArrayBuffer(Math.max(1, out.length) * 4), 0, out.length);
  plan.set(out);
  return plan;
}
