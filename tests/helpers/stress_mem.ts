// The five memory types of the kernel's uffd-stress.c / uffd-unit-tests.c, allocated for the
// stress and soak tests: anon, shmem, shmem-private, hugetlb, hugetlb-private.
import { freeHugePages, hugePageSize, Mapping, pageSize, UffdError } from "../../mod.ts";
import { libc } from "../../ffi/mod.ts";

/** A memory type, spelled as uffd-stress.c's first argument. */
export type StressMemType = "anon" | "shmem" | "shmem-private" | "hugetlb" | "hugetlb-private";

/** All five, in uffd-stress.c's usage order. */
export const STRESS_MEM_TYPES: readonly StressMemType[] = [
  "anon",
  "shmem",
  "shmem-private",
  "hugetlb",
  "hugetlb-private",
];

/** Whether the type is hugetlb-backed. */
export function isHugetlb(mt: StressMemType): boolean {
  return mt === "hugetlb" || mt === "hugetlb-private";
}

/** Whether the type is mapped MAP_SHARED (the kernel's `map_shared`): it then has an alias. */
export function isShared(mt: StressMemType): boolean {
  return mt === "shmem" || mt === "hugetlb";
}

/** Page size of a memory type. */
export function pageSizeOf(mt: StressMemType): number {
  return isHugetlb(mt) ? hugePageSize() : pageSize;
}

/** Why `hugePages` huge pages cannot be had now for type `mt`, or undefined. */
export function hugeSkipReason(mt: StressMemType, hugePages: number): string | undefined {
  if (!isHugetlb(mt)) return undefined;
  if (hugePageSize() === 0) return `${mt}: the kernel has no hugetlb support (Hugepagesize 0)`;
  const free = freeHugePages();
  if (free < hugePages) {
    return `${mt}: needs ${hugePages} free huge pages, /proc/meminfo HugePages_Free is ${free} ` +
      "(reserve some: echo 16 > /proc/sys/vm/nr_hugepages)";
  }
  return undefined;
}

const FALLOC_FL_KEEP_SIZE = 1;
const FALLOC_FL_PUNCH_HOLE = 2;

/** One area (uffd-common.c's area_src or area_dst) of `n` pages of a memory type. */
export class StressArea {
  readonly mt: StressMemType;
  readonly ps: number;
  readonly n: number;
  readonly map: Mapping;
  /** The shared alias (shmem, hugetlb), registered with the area as uffd-stress.c does. */
  readonly alias: Mapping | undefined;

  private constructor(mt: StressMemType, n: number, map: Mapping, alias: Mapping | undefined) {
    this.mt = mt;
    this.ps = map.pageSize;
    this.n = n;
    this.map = map;
    this.alias = alias;
  }

  /** Allocates `n` pages like uffd-common.c's *_allocate_area (one memfd per area). */
  static alloc(mt: StressMemType, n: number, name = "uffd-stress"): StressArea {
    const len = n * pageSizeOf(mt);
    if (mt === "anon") return new StressArea(mt, n, Mapping.anonymous(len), undefined);
    const map = Mapping.memfd(len, { name: `${name}-${mt}`, hugetlb: isHugetlb(mt), private: !isShared(mt) });
    let alias: Mapping | undefined;
    try {
      alias = isShared(mt) ? map.alias() : undefined;
    } catch (e) {
      map.close();
      throw e;
    }
    return new StressArea(mt, n, map, alias);
  }

  /** {@link alloc}, with ENOMEM of a hugetlb type (huge pages taken meanwhile) as a skip reason. */
  static tryAlloc(mt: StressMemType, n: number, name?: string): StressArea | string {
    try {
      return StressArea.alloc(mt, n, name);
    } catch (e) {
      if (isHugetlb(mt) && e instanceof UffdError && e.code === "ENOMEM") {
        return `${mt}: mmap of ${n} huge pages failed with ENOMEM (huge pages taken by another process)`;
      }
      throw e;
    }
  }

  get start(): number {
    return this.map.start;
  }

  get len(): number {
    return this.map.length;
  }

  /**
   * uffd-common.c release_pages: MADV_REMOVE for shared memory; MADV_DONTNEED for private memory,
   * plus a hole punched in a private memfd, whose page cache a write fault through the private
   * mapping filled with zero pages (they would show through and hide the missing faults).
   */
  release(): void {
    if (isShared(this.mt)) {
      this.map.remove();
      return;
    }
    this.map.dontneed();
    if (this.map.fd >= 0) {
      if (libc.fallocate(this.map.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, this.len) !== 0) {
        throw new UffdError("fallocate", libc.errno());
      }
    }
  }

  close(): void {
    this.alias?.close();
    this.map.close();
  }
}
