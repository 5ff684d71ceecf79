/**
 * The userfaultfd ABI (x86-64 / asm-generic encoding): ioctl numbers, mode and
 * feature bits, event codes. Names keep the kernel's spelling.
 * @module
 */

/** `__NR_userfaultfd` on x86-64. */
export const NR_userfaultfd = 323;
/** `UFFD_API`: the only API version. */
export const UFFD_API = 0xaa;
/** `UFFD_USER_MODE_ONLY`: do not deliver faults taken in kernel mode. */
export const UFFD_USER_MODE_ONLY = 1;
/** `O_CLOEXEC`. */
export const O_CLOEXEC = 0o2000000;
/** `O_NONBLOCK`. */
export const O_NONBLOCK = 0o4000;
/** `O_RDWR`. */
export const O_RDWR = 2;

/** ioctl request numbers of userfaultfd and pagemap. */
export const ioctl = {
  UFFDIO_API: 0xC018AA3F,
  UFFDIO_REGISTER: 0xC020AA00,
  UFFDIO_UNREGISTER: 0x8010AA01,
  UFFDIO_WAKE: 0x8010AA02,
  UFFDIO_COPY: 0xC028AA03,
  UFFDIO_ZEROPAGE: 0xC020AA04,
  UFFDIO_MOVE: 0xC028AA05,
  UFFDIO_WRITEPROTECT: 0xC018AA06,
  UFFDIO_CONTINUE: 0xC020AA07,
  UFFDIO_POISON: 0xC020AA08,
  USERFAULTFD_IOC_NEW: 0xAA00,
  PAGEMAP_SCAN: 0xC0606610,
} as const;

/** `UFFDIO_REGISTER_MODE_*`. */
export const UFFDIO_REGISTER_MODE_MISSING = 1;
/** Register for write-protect faults. */
export const UFFDIO_REGISTER_MODE_WP = 2;
/** Register for minor faults (page in the page cache, not mapped). */
export const UFFDIO_REGISTER_MODE_MINOR = 4;

/** `UFFDIO_COPY_MODE_DONTWAKE`. */
export const UFFDIO_COPY_MODE_DONTWAKE = 1;
/** `UFFDIO_COPY_MODE_WP`. */
export const UFFDIO_COPY_MODE_WP = 2;
/** `UFFDIO_ZEROPAGE_MODE_DONTWAKE`. */
export const UFFDIO_ZEROPAGE_MODE_DONTWAKE = 1;
/** `UFFDIO_WRITEPROTECT_MODE_WP`. */
export const UFFDIO_WRITEPROTECT_MODE_WP = 1;
/** `UFFDIO_WRITEPROTECT_MODE_DONTWAKE`. */
export const UFFDIO_WRITEPROTECT_MODE_DONTWAKE = 2;
/** `UFFDIO_CONTINUE_MODE_DONTWAKE`. */
export const UFFDIO_CONTINUE_MODE_DONTWAKE = 1;
/** `UFFDIO_CONTINUE_MODE_WP`. */
export const UFFDIO_CONTINUE_MODE_WP = 2;
/** `UFFDIO_POISON_MODE_DONTWAKE`. */
export const UFFDIO_POISON_MODE_DONTWAKE = 1;
/** `UFFDIO_MOVE_MODE_DONTWAKE`. */
export const UFFDIO_MOVE_MODE_DONTWAKE = 1;
/** `UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES`. */
export const UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES = 2;

/** `UFFD_PAGEFAULT_FLAG_WRITE`. */
export const UFFD_PAGEFAULT_FLAG_WRITE = 1;
/** `UFFD_PAGEFAULT_FLAG_WP`. */
export const UFFD_PAGEFAULT_FLAG_WP = 2;
/** `UFFD_PAGEFAULT_FLAG_MINOR`. */
export const UFFD_PAGEFAULT_FLAG_MINOR = 4;

/** `UFFD_EVENT_*` codes of `uffd_msg.event`. */
export const UFFD_EVENT = {
  PAGEFAULT: 0x12,
  FORK: 0x13,
  REMAP: 0x14,
  REMOVE: 0x15,
  UNMAP: 0x16,
} as const;

/** `UFFD_FEATURE_*` names in bit order (bit 0 first). */
export const FEATURE_NAMES = [
  "PAGEFAULT_FLAG_WP",
  "EVENT_FORK",
  "EVENT_REMAP",
  "EVENT_REMOVE",
  "MISSING_HUGETLBFS",
  "MISSING_SHMEM",
  "EVENT_UNMAP",
  "SIGBUS",
  "THREAD_ID",
  "MINOR_HUGETLBFS",
  "MINOR_SHMEM",
  "EXACT_ADDRESS",
  "WP_HUGETLBFS_SHMEM",
  "WP_UNPOPULATED",
  "POISON",
  "WP_ASYNC",
  "MOVE",
] as const;

/** A `UFFD_FEATURE_*` name without its prefix, e.g. `"EVENT_FORK"`. */
export type FeatureName = typeof FEATURE_NAMES[number];

/** ioctl names by their `_UFFDIO_*` bit number in `uffdio_api.ioctls` / `uffdio_register.ioctls`. */
export const IOCTL_BIT_NAMES: Readonly<Record<number, IoctlName>> = {
  0x00: "REGISTER",
  0x01: "UNREGISTER",
  0x02: "WAKE",
  0x03: "COPY",
  0x04: "ZEROPAGE",
  0x05: "MOVE",
  0x06: "WRITEPROTECT",
  0x07: "CONTINUE",
  0x08: "POISON",
  0x3F: "API",
};

/** A userfaultfd ioctl name without its `UFFDIO_` prefix. */
export type IoctlName =
  | "API"
  | "REGISTER"
  | "UNREGISTER"
  | "WAKE"
  | "COPY"
  | "ZEROPAGE"
  | "MOVE"
  | "WRITEPROTECT"
  | "CONTINUE"
  | "POISON";

/** The bit of a feature name. */
export function featureBit(name: FeatureName): number {
  const i = FEATURE_NAMES.indexOf(name);
  if (i < 0) throw new TypeError(`unknown userfaultfd feature "${name}"`);
  return 2 ** i;
}

/** Names of the set bits of a feature mask, and the bits no name is known for. */
export function featureNames(mask: number): { names: FeatureName[]; unknown: number } {
  const names: FeatureName[] = [];
  let unknown = 0;
  for (let i = 0; i < 53; i++) {
    const bit = 2 ** i;
    if (Math.floor(mask / bit) % 2 === 1) {
      if (i < FEATURE_NAMES.length) names.push(FEATURE_NAMES[i]);
      else unknown += bit;
    }
  }
  return { names, unknown };
}

/**
 * Names of the ioctls set in a 64-bit `ioctls` mask given as its low and high u32
 * words (bit 63 is `_UFFDIO_API`); bits with no known name are skipped.
 */
export function ioctlNames(lo: number, hi = 0): IoctlName[] {
  const names: IoctlName[] = [];
  for (let i = 0; i < 64; i++) {
    const set = i < 32 ? (lo >>> i) & 1 : (hi >>> (i - 32)) & 1;
    if (set && IOCTL_BIT_NAMES[i]) names.push(IOCTL_BIT_NAMES[i]);
  }
  return names;
}

/** mmap/madvise constants used by the memory helpers. */
export const mm = {
  PROT_NONE: 0,
  PROT_READ: 1,
  PROT_WRITE: 2,
  MAP_SHARED: 0x01,
  MAP_PRIVATE: 0x02,
  MAP_FIXED: 0x10,
  MAP_ANONYMOUS: 0x20,
  MAP_NORESERVE: 0x4000,
  MAP_POPULATE: 0x8000,
  MAP_HUGETLB: 0x40000,
  MAP_FIXED_NOREPLACE: 0x100000,
  MADV_DONTNEED: 4,
  MADV_REMOVE: 9,
  MADV_DONTFORK: 10,
  MADV_HUGEPAGE: 14,
  MADV_NOHUGEPAGE: 15,
  MADV_POPULATE_READ: 22,
  MREMAP_MAYMOVE: 1,
  MREMAP_FIXED: 2,
  MREMAP_DONTUNMAP: 4,
  MFD_CLOEXEC: 1,
  MFD_HUGETLB: 4,
  FALLOC_FL_KEEP_SIZE: 1,
  FALLOC_FL_PUNCH_HOLE: 2,
} as const;
