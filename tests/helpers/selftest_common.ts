// Shared pieces of the kernel-selftest ports (tests/selftests_*.test.ts): memory types as
// the kernel's uffd-unit-tests.c defines them, page patterns, pagemap entries, fixtures.
import { mkdirSync, renameSync, statSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import process from "node:process";
import { freeHugePages, hugePageSize, Mapping, PagemapScanner, pageSize, UffdError } from "../../mod.ts";
import { libc } from "../../ffi/mod.ts";

/** The memory types of uffd-unit-tests.c this port covers ("hugetlb" is the shared one). */
export type MemType = "anon" | "shmem" | "hugetlb";

/** All memory types, in the kernel's order. */
export const MEM_TYPES: readonly MemType[] = ["anon", "shmem", "hugetlb"];

/** Huge pages one hugetlb test needs at most (area + source). */
export const UFFD_TEST_HUGE_PAGES = 4;

/** Page size of a memory type. */
export function pageSizeOf(mt: MemType): number {
  return mt === "hugetlb" ? hugePageSize() : pageSize;
}

/**
 * Why a test on `mt` needing `hugePages` huge pages cannot run now, or undefined.
 * Printed and used as the `skip` reason.
 */
export function memSkipReason(mt: MemType, hugePages: number): string | undefined {
  if (mt !== "hugetlb") return undefined;
  if (hugePageSize() === 0) return "hugetlb: huge page size is 0 (kernel without hugetlb)";
  const free = freeHugePages();
  if (free < hugePages) {
    return `hugetlb: needs ${hugePages} free huge pages, /proc/meminfo HugePages_Free is ${free} ` +
      "(reserve some: echo 16 > /proc/sys/vm/nr_hugepages)";
  }
  return undefined;
}

/** `{ skip }` option for node:test, printing the reason once when skipping. */
export function skipOpt(name: string, reason: string | undefined): { skip?: string } {
  if (reason === undefined) return {};
  console.log(`skip ${name}: ${reason}`);
  return { skip: reason };
}

/** The kernel's area_dst (+ area_dst_alias for shared memory). */
export interface Area {
  mt: MemType;
  ps: number;
  n: number;
  dst: Mapping;
  /** Second mapping of the same pages (shmem/hugetlb only). */
  alias: Mapping | undefined;
  close(): void;
}

/** Allocates `n` pages of memory type `mt` like uffd-common.c's *_allocate_area. */
export function allocArea(mt: MemType, n: number, withAlias = true): Area {
  const ps = pageSizeOf(mt);
  const dst = mt === "anon" ? Mapping.anonymous(n * ps) : Mapping.memfd(n * ps, {
    name: `selftest-${mt}`,
    hugetlb: mt === "hugetlb",
  });
  let alias: Mapping | undefined;
  try {
    alias = mt !== "anon" && withAlias ? dst.alias() : undefined;
  } catch (e) {
    dst.close();
    throw e;
  }
  return {
    mt,
    ps,
    n,
    dst,
    alias,
    close(): void {
      alias?.close();
      dst.close();
    },
  };
}

/** Allocation that turns "no huge pages" into a skip reason instead of a failure. */
export function tryAllocArea(mt: MemType, n: number, withAlias = true): Area | string {
  try {
    return allocArea(mt, n, withAlias);
  } catch (e) {
    if (mt === "hugetlb" && e instanceof UffdError && e.code === "ENOMEM") {
      return `hugetlb: mmap of ${n} huge pages failed with ENOMEM (huge pages taken by someone else)`;
    }
    throw e;
  }
}

/** uffd-common.c release_pages: DONTNEED for private memory, REMOVE (punch hole) for shared. */
export function releasePages(mt: MemType, m: Mapping): void {
  if (mt === "anon") m.dontneed();
  else m.remove();
}

/** The byte at offset `j` of pattern page `i` (never constant across a page, never all zero). */
export function patternByte(i: number, j: number): number {
  return (i * 37 + (j >> 2) * 13 + 1) & 0xff;
}

/** Fills page `i` of `bytes` (page size `ps`) with the pattern. */
export function fillPattern(bytes: Uint8Array, i: number, ps: number): void {
  const base = i * ps;
  for (let j = 0; j < ps; j++) bytes[base + j] = patternByte(i, j);
}

/** Offset of the first byte of page `i` that differs from the pattern of page `want`, or -1. */
export function findPatternMismatch(bytes: Uint8Array, i: number, ps: number, want = i): number {
  const base = i * ps;
  for (let j = 0; j < ps; j++) if (bytes[base + j] !== patternByte(want, j)) return j;
  return -1;
}

/** Offset of the first byte of page `i` that is not `value`, or -1. */
export function findByteMismatch(bytes: Uint8Array, i: number, ps: number, value: number): number {
  const base = i * ps;
  for (let j = 0; j < ps; j++) if (bytes[base + j] !== value) return j;
  return -1;
}

/** `PM_UFFD_WP`: bit 57 of a /proc/pid/pagemap entry. */
export const PM_UFFD_WP_BIT = 57;
/** `PM_PRESENT`: bit 63. */
export const PM_PRESENT_BIT = 63;

/** A small /proc file read through libc (Deno wants --allow-all for /proc/self via node:fs). */
export function readProcFile(path: string): string | undefined {
  const fd = libc.open(cstr(path), 0o2000000, 0);
  if (fd < 0) return undefined;
  const buf = new Uint8Array(8192);
  const n = libc.read(fd, buf, buf.length);
  libc.close(fd);
  return n > 0 ? new TextDecoder().decode(buf.subarray(0, n)) : undefined;
}

/** The state letter of thread `tid` of this process ("R", "S", "D", ...), "?" if unknown. */
export function threadState(tid: number): string {
  return readProcFile(`/proc/self/task/${tid}/status`)?.match(/^State:\s+(\S)/m)?.[1] ?? "?";
}

function cstr(s: string): Uint8Array {
  return new TextEncoder().encode(s + "\0");
}

/** Whether the uffd-wp bit is set in the pagemap entry of `addr` (PagemapScanner.entry). */
export function pagemapWp(addr: number): boolean {
  using scanner = new PagemapScanner(1);
  return scanner.entry(addr).uffdWp;
}

/** Path of a file next to the tests directory. */
export function testsPath(rel: string): string {
  return fileURLToPath(new URL(`../${rel}`, import.meta.url));
}

/**
 * Compiles tests/fixtures/<name>.c into tests/fixtures/build/<name> with `cc` (cached when the
 * binary is newer than the source). Returns the binary path, or a skip reason.
 */
export function buildFixture(name: string): { path: string } | { skip: string } {
  const src = testsPath(`fixtures/${name}.c`);
  const out = testsPath(`fixtures/build/${name}`);
  try {
    if (statSync(out).mtimeMs > statSync(src).mtimeMs) return { path: out };
  } catch {
    // not built yet
  }
  const probe = spawnSync("cc", ["--version"], { encoding: "utf8" });
  if (probe.error || probe.status !== 0) return { skip: "no C compiler (`cc`) on PATH to build the fixture" };
  mkdirSync(testsPath("fixtures/build"), { recursive: true });
  // Build under a private name and rename, so a concurrent run never executes a partial binary.
  const tmp = `${out}.${process.pid}.tmp`;
  const r = spawnSync("cc", ["-O2", "-Wall", "-pthread", "-o", tmp, src], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`cc ${name}.c failed:\n${r.stderr}`);
  renameSync(tmp, out);
  return { path: out };
}

/** Parses `key=value` lines into a record. */
export function parseKv(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const m = line.match(/^([A-Za-z0-9_]+)=(.*)$/);
    if (m) out[m[1]] = m[2];
  }
  return out;
}

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
