// Shared pieces of the kernel-selftest ports (tests/selftests_*.test.ts): the five memory types of
// the kernel's uffd-unit-tests.c, the kernel's area size, page patterns, pagemap entries, fixtures.
import { mkdirSync, renameSync, statSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { availableParallelism } from "node:os";
import { fileURLToPath } from "node:url";
import process from "node:process";
import {
  type FeatureName,
  freeHugePages,
  hugePageSize,
  Mapping,
  PagemapScanner,
  pageSize,
  UffdError,
  Userfaultfd,
} from "../../mod.ts";
import { libc } from "../../ffi/mod.ts";

/**
 * The memory types of uffd-unit-tests.c (`mem_types[]`), spelled as the kernel spells them.
 * `shmem` and `hugetlb` are MAP_SHARED memfds; `shmem-private` and `hugetlb-private` are the same
 * memfds mapped MAP_PRIVATE (`Mapping.memfd(n, { private: true })`).
 */
export type MemType = "anon" | "shmem" | "shmem-private" | "hugetlb" | "hugetlb-private";

/** All memory types, in the kernel's order (MEM_ALL). */
export const MEM_TYPES: readonly MemType[] = ["anon", "shmem", "shmem-private", "hugetlb", "hugetlb-private"];

/** The kernel's UFFD_TEST_MEM_SIZE: every area is 32 MiB. */
export const UFFD_TEST_MEM_SIZE = 32 << 20;

/** hugetlb or hugetlb-private. */
export function isHugetlb(mt: MemType): boolean {
  return mt === "hugetlb" || mt === "hugetlb-private";
}

/** The kernel's `mem_type->shared` (map_shared): shmem and hugetlb. */
export function isShared(mt: MemType): boolean {
  return mt === "shmem" || mt === "hugetlb";
}

/** Page size of a memory type (the default huge page size for hugetlb). */
export function pageSizeOf(mt: MemType): number {
  return isHugetlb(mt) ? hugePageSize() : pageSize;
}

/**
 * Huge pages the selftests leave free for other test files that may run at the same time: none
 * when files run one at a time (Deno and Bun always; Node's `--test` runs
 * `availableParallelism() - 1` files at once, so one on this 2-vCPU machine), else the 8 that
 * server.test.ts's hugetlb test takes.
 */
export function hugePagesToLeave(): number {
  return libc.runtime === "node" && availableParallelism() > 2 ? 8 : 0;
}

/**
 * The kernel's nr_pages for `mt`: UFFD_TEST_MEM_SIZE / page size, at least 2. For hugetlb that is
 * 16 huge pages of 2 MiB, bounded by the huge pages free now (less {@link hugePagesToLeave}): the
 * kernel takes them all too, and the ports need no hugetlb source area (sources are anonymous).
 * Returns a skip reason when fewer than `min` huge pages can be had.
 */
export function areaPages(mt: MemType, min = 2): number | string {
  const ps = pageSizeOf(mt);
  const kernel = Math.max(UFFD_TEST_MEM_SIZE, 2 * ps) / ps;
  if (!isHugetlb(mt)) return kernel;
  const reason = memSkipReason(mt, min);
  if (reason) return reason;
  return Math.max(min, Math.min(kernel, freeHugePages() - hugePagesToLeave()));
}

/**
 * Why a test on `mt` needing `hugePages` huge pages cannot run now, or undefined.
 * Printed and used as the `skip` reason.
 */
export function memSkipReason(mt: MemType, hugePages: number): string | undefined {
  if (!isHugetlb(mt)) return undefined;
  if (hugePageSize() === 0) return `${mt}: huge page size is 0 (kernel without hugetlb)`;
  const free = freeHugePages() - hugePagesToLeave();
  if (free < hugePages) {
    return `${mt}: needs ${hugePages} free huge pages, /proc/meminfo HugePages_Free is ${freeHugePages()}` +
      (hugePagesToLeave() ? ` (${hugePagesToLeave()} left to test files running at the same time)` : "") +
      " (reserve some: echo 16 > /proc/sys/vm/nr_hugepages)";
  }
  return undefined;
}

/** `uffd_feature_required` of each test in the kernel's `uffd_tests[]`. */
export const KERNEL_FEATURES: Readonly<Record<string, readonly FeatureName[]>> = {
  "register-ioctls": [
    "MISSING_HUGETLBFS",
    "MISSING_SHMEM",
    "PAGEFAULT_FLAG_WP",
    "WP_HUGETLBFS_SHMEM",
    "MINOR_HUGETLBFS",
    "MINOR_SHMEM",
  ],
  "zeropage": [],
  "move": ["MOVE"],
  "move-pmd": ["MOVE"],
  "move-pmd-split": ["MOVE"],
  "wp-fork": ["PAGEFAULT_FLAG_WP", "WP_HUGETLBFS_SHMEM"],
  "wp-fork-with-event": ["PAGEFAULT_FLAG_WP", "WP_HUGETLBFS_SHMEM", "EVENT_FORK"],
  "wp-fork-pin": ["PAGEFAULT_FLAG_WP", "WP_HUGETLBFS_SHMEM"],
  "wp-fork-pin-with-event": ["PAGEFAULT_FLAG_WP", "WP_HUGETLBFS_SHMEM", "EVENT_FORK"],
  "wp-unpopulated": ["PAGEFAULT_FLAG_WP", "WP_UNPOPULATED"],
  "minor": ["MINOR_HUGETLBFS", "MINOR_SHMEM"],
  "minor-wp": ["MINOR_HUGETLBFS", "MINOR_SHMEM", "PAGEFAULT_FLAG_WP", "WP_UNPOPULATED"],
  "minor-collapse": ["MINOR_SHMEM"],
  "sigbus": ["SIGBUS", "EVENT_FORK"],
  "sigbus-wp": ["SIGBUS", "EVENT_FORK", "PAGEFAULT_FLAG_WP", "WP_HUGETLBFS_SHMEM"],
  "events": ["EVENT_FORK", "EVENT_REMAP", "EVENT_REMOVE"],
  "events-wp": ["EVENT_FORK", "EVENT_REMAP", "EVENT_REMOVE", "PAGEFAULT_FLAG_WP", "WP_HUGETLBFS_SHMEM"],
  "poison": ["POISON"],
  "mmap-changing": ["EVENT_REMOVE", "MOVE", "POISON", "MINOR_SHMEM"],
};

/**
 * Why `test` cannot run on `mt` here, or undefined: the kernel's "feature missing" (its required
 * features, Userfaultfd.probe()) or too few free huge pages (`hugePages`).
 */
export function caseSkipReason(test: string, mt: MemType, hugePages = 2): string | undefined {
  const have = Userfaultfd.probe().features;
  const missing = (KERNEL_FEATURES[test] ?? []).filter((f) => !have.includes(f));
  if (missing.length) return `feature missing: this kernel lacks ${missing.join(", ")}`;
  return memSkipReason(mt, hugePages);
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
  /** Second, shared mapping of the same pages (shmem and hugetlb only, as hugetlb_allocate_area). */
  alias: Mapping | undefined;
  close(): void;
}

/**
 * Allocates `n` pages of memory type `mt` like uffd-common.c's *_allocate_area: anonymous private
 * memory; a memfd mapped shared with a shared alias (shmem, hugetlb); a memfd mapped private
 * without one (shmem-private, hugetlb-private: an alias would be a shared view of the memfd, which
 * never sees the private copies). The kernel's shmem_allocate_area maps shmem-private MAP_SHARED
 * as well (only hugetlb looks at map_shared); these ports map it MAP_PRIVATE, as the type says.
 */
export function allocArea(mt: MemType, n: number, withAlias = true): Area {
  const ps = pageSizeOf(mt);
  const dst = mt === "anon" ? Mapping.anonymous(n * ps) : Mapping.memfd(n * ps, {
    name: `selftest-${mt}`,
    hugetlb: isHugetlb(mt),
    private: !isShared(mt),
  });
  let alias: Mapping | undefined;
  try {
    alias = isShared(mt) && withAlias ? dst.alias() : undefined;
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
    if (isHugetlb(mt) && e instanceof UffdError && e.code === "ENOMEM") {
      return `${mt}: mmap of ${n} huge pages failed with ENOMEM (huge pages taken by someone else)`;
    }
    throw e;
  }
}

/**
 * uffd-common.c release_pages: MADV_REMOVE (punch a hole) for shared memory, MADV_DONTNEED for
 * private memory. (The kernel's shmem-private is MAP_SHARED and gets MADV_REMOVE; on a MAP_PRIVATE
 * mapping MADV_REMOVE fails with EACCES, and DONTNEED drops the private copies.)
 */
export function releasePages(mt: MemType, m: Mapping): void {
  if (isShared(mt)) m.remove();
  else m.dontneed();
}

/** The madvise advice of {@link releasePages}. */
export function releaseAdvice(mt: MemType): number {
  return isShared(mt) ? 9 /* MADV_REMOVE */ : 4 /* MADV_DONTNEED */;
}

/** The byte at offset `j` of pattern page `i` (never constant across a page, never all zero). */
export function patternByte(i: number, j: number): number {
  return (i * 37 + (j >> 2) * 13 + 1) & 0xff;
}

// Page i's pattern is page 0's plus (i * 37) & 0xff on every byte: at most 256 different pages,
// kept for base pages so that 8192 pages fill and compare at memcpy speed.
const templates = new Map<number, Uint8Array>();

function template(i: number, ps: number): Uint8Array | undefined {
  if (ps > 65536) return undefined;
  const key = ps * 256 + ((i * 37) & 0xff);
  let t = templates.get(key);
  if (!t) {
    t = new Uint8Array(ps);
    for (let j = 0; j < ps; j++) t[j] = patternByte(i, j);
    templates.set(key, t);
  }
  return t;
}

/** Fills page `i` of `bytes` (page size `ps`) with the pattern. */
export function fillPattern(bytes: Uint8Array, i: number, ps: number): void {
  const base = i * ps;
  const t = template(i, ps);
  if (t) bytes.set(t, base);
  else for (let j = 0; j < ps; j++) bytes[base + j] = patternByte(i, j);
}

/** Fills pages `[0, n)` of `bytes` with their patterns. */
export function fillPatterns(bytes: Uint8Array, n: number, ps: number): void {
  for (let i = 0; i < n; i++) fillPattern(bytes, i, ps);
}

/** Offset of the first byte of page `i` that differs from the pattern of page `want`, or -1. */
export function findPatternMismatch(bytes: Uint8Array, i: number, ps: number, want = i): number {
  const base = i * ps;
  const t = template(want, ps);
  if (t) {
    for (let j = 0; j < ps; j++) if (bytes[base + j] !== t[j]) return j;
    return -1;
  }
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

/** A /proc file's bytes read through libc (Deno wants --allow-all for /proc via node:fs); up to `max`. */
export function readProcBytes(path: string, max = 8192): Uint8Array | undefined {
  const fd = libc.open(cstr(path), 0o2000000, 0);
  if (fd < 0) return undefined;
  let buf = new Uint8Array(Math.min(max, 65536));
  let n = 0;
  for (;;) {
    if (n === buf.length) {
      if (buf.length >= max) break;
      const bigger = new Uint8Array(Math.min(max, buf.length * 4));
      bigger.set(buf);
      buf = bigger;
    }
    const r = libc.read(fd, buf.subarray(n), buf.length - n);
    if (r <= 0) break;
    n += r;
  }
  libc.close(fd);
  return n > 0 ? buf.subarray(0, n) : undefined;
}

/** A /proc (or /sys) file as text, read through libc; up to `max` bytes. */
export function readProcFile(path: string, max = 8192): string | undefined {
  const b = readProcBytes(path, max);
  return b ? new TextDecoder().decode(b) : undefined;
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

const entryBuf = new Uint8Array(8);

/**
 * The pagemap entry of `addr` in process `pid` (/proc/<pid>/pagemap, the kernel's
 * pagemap_get_entry run from outside), as its uffd-wp and present bits; undefined if unreadable.
 */
export function pagemapEntryOf(pid: number, addr: number): { wp: boolean; present: boolean } | undefined {
  const fd = libc.open(cstr(`/proc/${pid}/pagemap`), 0o2000000, 0);
  if (fd < 0) return undefined;
  const n = libc.preadAddr(fd, libc.addressOf(entryBuf), 8, Math.floor(addr / pageSize) * 8);
  libc.close(fd);
  if (n !== 8) return undefined;
  const high = new DataView(entryBuf.buffer).getUint32(4, true);
  return {
    wp: ((high >>> (PM_UFFD_WP_BIT - 32)) & 1) === 1,
    present: ((high >>> (PM_PRESENT_BIT - 32)) & 1) === 1,
  };
}

/**
 * The value in kB of `field` ("AnonHugePages", "ShmemPmdMapped", ...) in the /proc/self/smaps
 * entry of the mapping that holds `addr`, or undefined (vm_util.c's __check_huge reads the same).
 */
export function smapsField(addr: number, field: string): number | undefined {
  const text = readProcFile("/proc/self/smaps", 16 << 20);
  if (!text) return undefined;
  let inside = false;
  for (const line of text.split("\n")) {
    const range = line.match(/^([0-9a-f]+)-([0-9a-f]+) /);
    if (range) {
      inside = addr >= parseInt(range[1], 16) && addr < parseInt(range[2], 16);
      continue;
    }
    if (inside && line.startsWith(`${field}:`)) return Number(line.match(/(\d+) kB/)?.[1]);
  }
  return undefined;
}

/** The PMD size of transparent huge pages (hpage_pmd_size), or 0 without THP. */
export function pmdPageSize(): number {
  return Number(readProcFile("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")?.trim() ?? 0);
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
