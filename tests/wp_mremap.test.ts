// The kernel's uffd-wp-mremap (tools/testing/selftests/mm/uffd-wp-mremap.c): a folio of each size
// (a base page, each THP size, each hugetlb size; shared and private; swapped out or not) is
// registered for uffd-wp and write-protected, every pte must then carry the uffd-wp bit; after an
// mremap(MREMAP_FIXED) of a descriptor opened without EVENT_REMAP, no pte may keep it. The bits are
// read with PagemapScanner.entry, the move is Mapping.remap({ to }).
//
// Like the kernel's test, a THP size is enabled only while its folio is allocated: here as
// "madvise" (private) or "advise" (shared) for that size, with MADV_HUGEPAGE on the region, so that
// nothing else on the machine changes; the setting is restored right after. The swapout cases skip
// when MADV_PAGEOUT swaps nothing out (no swap), as the kernel's do.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { Mapping, PagemapScanner, pageSize, Userfaultfd } from "../mod.ts";
import { mm } from "../src/abi.ts";
import { libc } from "../ffi/mod.ts";

const THP_DIR = "/sys/kernel/mm/transparent_hugepage";
const MADV_PAGEOUT = 21;
const MAP_HUGE_SHIFT = 26;

interface Case {
  size: number;
  private: boolean;
  swapout: boolean;
  hugetlb: boolean;
}

// sysfs through libc: Deno's node:fs wants --allow-all for /sys.
function readSys(path: string): string | undefined {
  const fd = libc.open(new TextEncoder().encode(path + "\0"), 0o2000000, /* O_RDONLY | O_CLOEXEC */ 0);
  if (fd < 0) return undefined;
  const buf = new Uint8Array(4096);
  const n = libc.read(fd, buf, buf.length);
  libc.close(fd);
  return n >= 0 ? new TextDecoder().decode(buf.subarray(0, n)) : undefined;
}

function writeSys(path: string, value: string): void {
  const fd = libc.open(new TextEncoder().encode(path + "\0"), 0o2000001, /* O_WRONLY | O_CLOEXEC */ 0);
  if (fd < 0) throw new Error(`open ${path}: errno ${libc.errno()}`);
  const b = new TextEncoder().encode(value);
  const n = libc.write(fd, b, b.length);
  const e = libc.errno();
  libc.close(fd);
  if (n !== b.length) throw new Error(`write "${value}" to ${path}: errno ${e}`);
}

/** THP sizes with a knob for private (enabled) or shared (shmem_enabled) memory, in bytes (orders 1-9). */
function thpSizes(file: "enabled" | "shmem_enabled"): number[] {
  if (readSys(`${THP_DIR}/enabled`) === undefined) return [];
  const out = [];
  for (let order = 1; order <= 20; order++) {
    const size = pageSize << order;
    if (readSys(`${THP_DIR}/hugepages-${size / 1024}kB/${file}`) !== undefined) out.push(size);
  }
  return out;
}

/** hugetlb sizes in bytes (64 KiB to 16 GiB probed), with the free pages of each. */
function hugetlbSizes(): { size: number; free: number }[] {
  const out = [];
  for (let order = 4; order <= 22; order++) {
    const kb = (pageSize / 1024) * 2 ** order;
    const free = readSys(`/sys/kernel/mm/hugepages/hugepages-${kb}kB/free_hugepages`);
    if (free !== undefined) out.push({ size: kb * 1024, free: Number(free) });
  }
  return out;
}

/** Sets one THP knob for the duration of `fn` (the kernel test's thp_push_settings/thp_pop_settings). */
function withThpSetting<T>(size: number, priv: boolean, fn: () => T): T | string {
  const path = `${THP_DIR}/hugepages-${size / 1024}kB/${priv ? "enabled" : "shmem_enabled"}`;
  const before = readSys(path)?.match(/\[(\w[\w-]*)\]/)?.[1];
  if (before === undefined) return `cannot read ${path}`;
  const want = priv ? "madvise" : "advise";
  const usable = priv ? ["always", "madvise"] : ["always", "advise", "within_size"];
  const top = readSys(`${THP_DIR}/${priv ? "enabled" : "shmem_enabled"}`)?.match(/\[(\w[\w-]*)\]/)?.[1] ?? "";
  let changed = false;
  if (!usable.includes(before) && !(before === "inherit" && usable.includes(top))) {
    try {
      writeSys(path, want);
      changed = true;
    } catch (e) {
      return `cannot enable ${size / 1024} KiB THP (${path} is "${before}", writing "${want}" failed: ${
        (e as Error).message
      }; needs root)`;
    }
  }
  try {
    return fn();
  } finally {
    if (changed) writeSys(path, before);
  }
}

/** uffd-wp-mremap.c mmap_aligned: `size` bytes at a `size`-aligned address. */
function mmapAligned(size: number, prot: number, flags: number): number {
  const raw = libc.mmap(0, size * 2, prot, flags, -1, 0);
  if (raw === -1) throw new Error(`mmap of ${2 * size} bytes failed: errno ${libc.errno()}`);
  const mem = Math.ceil(raw / size) * size;
  if (mem > raw) libc.munmap(raw, mem - raw);
  if (raw + 2 * size > mem + size) libc.munmap(mem + size, raw + 2 * size - mem - size);
  return mem;
}

/** uffd-wp-mremap.c alloc_one_folio: the folio's address, or why it could not be had. */
function allocOneFolio(c: Case, scanner: PagemapScanner): number | string {
  const thp = !c.hugetlb && c.size > pageSize;
  let flags = mm.MAP_ANONYMOUS | (c.private ? mm.MAP_PRIVATE : mm.MAP_SHARED);
  const prot = mm.PROT_READ | mm.PROT_WRITE;
  const alloc = (): number | string => {
    let mem: number;
    if (thp) {
      mem = mmapAligned(c.size, prot, flags);
      libc.madvise(mem, c.size, mm.MADV_HUGEPAGE);
    } else {
      if (c.hugetlb) flags |= mm.MAP_HUGETLB | (Math.log2(c.size) << MAP_HUGE_SHIFT);
      mem = libc.mmap(0, c.size, prot, flags, -1, 0);
      if (mem === -1) return `mmap of a ${c.size / 1024} KiB folio failed: errno ${libc.errno()}`;
    }
    assert.equal(mem % c.size, 0, "the folio is aligned to its size");
    // Populate with the first byte and check that the whole folio came; then non-zero data so
    // the kernel cannot map the zero page back.
    const bytes = new Uint8Array(libc.view(mem, c.size));
    bytes[0] = 1;
    for (let a = mem; a < mem + c.size; a += pageSize) {
      const e = scanner.entry(a);
      if (!e.present && !e.swapped) {
        libc.munmap(mem, c.size);
        return `the kernel did not allocate a ${c.size / 1024} KiB folio (page ${
          (a - mem) / pageSize
        } absent)`;
      }
    }
    bytes.fill(1);
    return mem;
  };
  return thp ? withThpSetting(c.size, c.private, alloc) : alloc();
}

/** uffd-wp-mremap.c check_uffd_wp_state: the first pte whose uffd-wp bit is not `expect`, or -1. */
function firstWrongPte(scanner: PagemapScanner, mem: number, size: number, expect: boolean): number {
  for (let a = mem; a < mem + size; a += pageSize) {
    if (scanner.entry(a).uffdWp !== expect) return (a - mem) / pageSize;
  }
  return -1;
}

/** test_one_folio: undefined when it passed, a skip reason when the folio or the swap-out could not be had. */
function testOneFolio(c: Case): string | undefined {
  using scanner = new PagemapScanner(1);
  const mem = allocOneFolio(c, scanner);
  if (typeof mem === "string") return mem;
  let folio: Mapping | undefined = Mapping.adopt(mem, c.size, c.hugetlb ? c.size : pageSize);
  let moved: Mapping | undefined;
  let addr = 0;
  try {
    using uffd = Userfaultfd.open(); // no EVENT_REMAP
    uffd.register(folio, { wp: true });
    uffd.writeprotect({ start: mem, len: c.size, wp: true });
    if (c.swapout) {
      folio.madvise(MADV_PAGEOUT);
      for (let a = mem; a < mem + c.size; a += pageSize) {
        if (!scanner.entry(a).swapped) return "MADV_PAGEOUT did not work, is swap enabled?";
      }
    }
    const set = firstWrongPte(scanner, mem, c.size, true);
    assert.equal(set, -1, `uffd-wp not set for pte ${set}`);
    // Move it to a new aligned place without EVENT_REMAP: the uffd-wp bit must not come along.
    addr = mmapAligned(c.size, mm.PROT_NONE, mm.MAP_PRIVATE | mm.MAP_ANONYMOUS);
    const to = addr;
    moved = folio.remap(c.size, { to });
    folio = undefined; // remap() closed it without unmapping; `moved` owns the memory now
    addr = 0;
    assert.equal(moved.start, to, "MREMAP_FIXED moved the folio where asked");
    const cleared = firstWrongPte(scanner, moved.start, c.size, false);
    assert.equal(cleared, -1, `uffd-wp not clear for pte ${cleared} after mremap without EVENT_REMAP`);
    assert.equal(
      new Uint8Array(libc.view(moved.start, c.size))[c.size - 1],
      1,
      "the folio's data moved with it",
    );
  } finally {
    moved?.close();
    if (folio) {
      folio.close(); // adopted: closing does not unmap
      libc.munmap(mem, c.size);
    }
    if (addr) libc.munmap(addr, c.size);
  }
  return undefined;
}

function label(c: Case): string {
  const mt = c.hugetlb ? (c.private ? "hugetlb-private" : "hugetlb") : c.private ? "anon" : "shmem";
  const kind = c.hugetlb ? "hugetlb" : c.size > pageSize ? "THP" : "base page";
  return `${mt}/uffd-wp-mremap ${kind} ${c.size / 1024} KiB${c.swapout ? " swapout" : ""}: ` +
    `test_one_folio(size=${c.size}, private=${c.private}, swapout=${c.swapout}, hugetlb=${c.hugetlb})`;
}

const cases: Case[] = [];
for (const swapout of [false, true]) {
  for (const priv of [false, true]) cases.push({ size: pageSize, private: priv, swapout, hugetlb: false });
}
for (const swapout of [false, true]) {
  for (const priv of [false, true]) {
    for (const size of thpSizes(priv ? "enabled" : "shmem_enabled")) {
      cases.push({ size, private: priv, swapout, hugetlb: false });
    }
  }
}
const huge = hugetlbSizes();
for (const priv of [false, true]) {
  for (const h of huge) cases.push({ size: h.size, private: priv, swapout: false, hugetlb: true });
}

describe("uffd-wp-mremap", () => {
  if (!Userfaultfd.probe().features.includes("PAGEFAULT_FLAG_WP")) {
    it("uffd-wp-mremap", { skip: "uffd-wp feature not supported" }, () => {});
    return;
  }
  for (const c of cases) {
    const name = label(c);
    const free = huge.find((h) => h.size === c.size)?.free ?? 0;
    const skip = c.hugetlb && free < 1
      ? `no free ${c.size / 1024} KiB huge page (/sys/kernel/mm/hugepages/hugepages-${
        c.size / 1024
      }kB/free_hugepages is 0)`
      : undefined;
    if (skip) console.log(`skip ${name}: ${skip}`);
    it(name, { timeout: 20000, skip }, (t) => {
      const why = testOneFolio(c);
      if (why !== undefined) {
        console.log(`skip ${name}: ${why}`);
        t.skip(why);
      }
    });
  }
  it("found every kind of folio the kernel's test runs: base pages, THP and hugetlb sizes", () => {
    assert.ok(cases.some((c) => c.size === pageSize));
    assert.ok(cases.some((c) => !c.hugetlb && c.size > pageSize) || thpSizes("enabled").length === 0);
    assert.ok(cases.some((c) => c.hugetlb) || huge.length === 0);
  });
});
