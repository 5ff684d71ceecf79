/**
 * One error class for everything that fails: {@link UffdError}.
 * @module
 */

/** errno numbers (Linux x86-64) by name, for the errors userfaultfd can return. */
export const ERRNO: Readonly<Record<string, number>> = {
  EPERM: 1,
  ENOENT: 2,
  ESRCH: 3,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  ENOTTY: 25,
  EFBIG: 27,
  ENOSPC: 28,
  ESPIPE: 29,
  EPIPE: 32,
  ERANGE: 34,
  ENAMETOOLONG: 36,
  ENOSYS: 38,
  ELOOP: 40,
  EBADMSG: 74,
  EOVERFLOW: 75,
  ENOTSOCK: 88,
  EOPNOTSUPP: 95,
  EADDRINUSE: 98,
  ECONNRESET: 104,
  ETIMEDOUT: 110,
  ECONNREFUSED: 111,
  EHWPOISON: 133,
};

const NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(ERRNO).map(([k, v]) => [v, k]),
);

/** The name of an errno number (`"EEXIST"`), or `"E<n>"` when unknown. */
export function errnoName(errno: number): string {
  return NAMES[errno] ?? `E${errno}`;
}

/**
 * What an errno means whatever the operation: the fallback when the operation has no hint
 * of its own for it. Nothing here may name another operation's cause.
 */
const GENERIC_HINTS: Readonly<Record<string, string>> = {
  EPERM: "the operation is not permitted for this process",
  EACCES: "permission denied",
  ENOENT: "no such file, mapping or entry",
  ESRCH: "the process that owns the memory has exited",
  EINTR: "interrupted by a signal: retry",
  EIO: "input/output error",
  EBADF: "the descriptor is not open (closed already?)",
  EAGAIN: "the resource is temporarily unavailable: retry",
  ENOMEM: "the kernel could not allocate memory or address space for the operation",
  EFAULT: "a pointer passed to the kernel is invalid",
  EBUSY: "the resource is busy",
  EEXIST: "it exists already",
  ENODEV: "no such device, or the file does not support the operation",
  EINVAL: "an argument is invalid",
  ENOTTY: "the descriptor does not support this ioctl (another kind of file, or an older kernel)",
  ENOSPC: "no space left",
  ENOSYS: "this kernel does not implement the call (or a seccomp filter hides it)",
  EOPNOTSUPP: "the operation is not supported on this kind of memory or file",
  ENOTSOCK: "the descriptor is not a socket",
  EPIPE: "the peer closed the socket",
  ECONNRESET: "the peer closed the socket",
  EMFILE: "too many open files in this process (raise RLIMIT_NOFILE or close descriptors)",
  ENFILE: "too many open files on the system (fs.file-max)",
  EHWPOISON: "the page is poisoned",
};

/** The hints of the ioctls that fill missing pages (COPY, ZEROPAGE, CONTINUE, POISON, MOVE). */
const RESOLVE_HINTS: Readonly<Record<string, string>> = {
  ENOENT: "the range is not registered with this userfaultfd (register() it first; a range registered " +
    "with another descriptor is not this one's), or its mapping changed under the operation " +
    "(unmapped or remapped: stop serving it)",
  EEXIST: "the page is already mapped (another resolver got there first): wake() the range instead",
  EAGAIN: "the address space is changing (a REMOVE/UNMAP/REMAP event is pending) or the operation " +
    "stopped part way: read pending events, then retry the remainder (`done` bytes are placed)",
  ESRCH: "the faulting process has exited: stop serving its memory",
  ENOSPC: "the faulting process has exited (Linux 4.11-4.13)",
  ENOMEM: "the kernel could not allocate a page (memory or a cgroup limit is exhausted)",
};

const UFFD_ACCESS = "this process may not create a userfaultfd: set sysctl vm.unprivileged_userfaultfd=1, " +
  "grant CAP_SYS_PTRACE, or give the user read/write access to /dev/userfaultfd; " +
  "unprivileged users can only open it with userModeOnly: true (UFFD_USER_MODE_ONLY); " +
  "in a container, a seccomp profile may forbid the syscall";

const DEVICE_ACCESS = "this user may not open /dev/userfaultfd: grant read/write on the device " +
  "(e.g. setfacl -m u:$USER:rw /dev/userfaultfd, or a group with chgrp/chmod 660); " +
  "the sysctl vm.unprivileged_userfaultfd does not apply to the device";

const OPEN_UFFD_HINTS: Readonly<Record<string, string>> = {
  EPERM: UFFD_ACCESS,
  EACCES: UFFD_ACCESS,
  EINVAL: "the kernel does not know a flag (UFFD_USER_MODE_ONLY needs Linux 5.11)",
  ENOSYS: "this kernel was built without userfaultfd (CONFIG_USERFAULTFD), or a seccomp filter hides it",
};

/** open(2) of a named file (`open <path>`). */
const OPEN_FILE_HINTS: Readonly<Record<string, string>> = {
  ENOENT: "no such file: the file, or a directory on its path, does not exist (check the path)",
  EACCES: "this user may not read the file, or may not search a directory on its path " +
    "(check the permissions with `namei -l <path>`)",
  EPERM: "the file may not be opened (an immutable attribute or a security module)",
  ENOTDIR: "a component of the path is not a directory",
  ELOOP: "too many symbolic links on the path",
  ENAMETOOLONG: "the path is too long",
  EISDIR: "the path is a directory",
  ENXIO: "the path is a device or socket that cannot be opened this way",
  ENODEV: "the path is a device that does not exist",
  EFBIG: "the file is too large to open",
  EOVERFLOW: "the file is too large to open",
};

/** Hints that depend on the operation, by operation and errno; GENERIC_HINTS fills the rest. */
const OP_HINTS: Readonly<Record<string, Readonly<Record<string, string>>>> = {
  open: OPEN_UFFD_HINTS,
  probe: OPEN_UFFD_HINTS,
  userfaultfd: OPEN_UFFD_HINTS,
  "open /dev/userfaultfd": {
    EPERM: DEVICE_ACCESS,
    EACCES: DEVICE_ACCESS,
    ENOENT: "there is no /dev/userfaultfd (Linux 6.1+, and a /dev with the node: containers may lack it)",
    ENOTTY: "the device does not know USERFAULTFD_IOC_NEW (not the userfaultfd device?)",
    EINVAL: "the kernel does not know a flag (UFFD_USER_MODE_ONLY needs Linux 5.11)",
  },
  "open(2)": OPEN_FILE_HINTS,
  "mmap(2) of a file": {
    ENODEV: "this file cannot be mapped (a directory, a pipe, or a file system without mmap)",
    EACCES: "the file is not open for reading (or its file system is mounted noexec)",
    EINVAL: "the length is zero or too large",
    ENOMEM: "not enough address space for the file",
  },
  "lseek(2) of a file": {
    EINVAL: "the file has no size to map (a /proc or device file?): pass a length, or map a regular file",
    ESPIPE: "the path is a pipe or socket, which cannot be mapped",
  },
  "open /proc/self/pagemap": {
    ENOENT: "/proc is not mounted",
    EACCES: "/proc/self/pagemap is not readable here (a security module, or /proc mounted with hidepid)",
  },
  UFFDIO_API: {
    EINVAL: "the API version or a feature bit is unknown to this kernel, or the handshake was already " +
      "done on this descriptor (the kernel allows one)",
    EPERM: "a requested feature needs a privilege: EVENT_FORK needs CAP_SYS_PTRACE",
    EFAULT: "the uffdio_api struct is not accessible",
  },
  UFFDIO_REGISTER: {
    EINVAL: "the range is not page-aligned (huge-page-aligned on hugetlb), lies outside the mappings or " +
      "past the address-space limit, no mode or an unknown one was asked, or the memory does not " +
      "support the mode (missing/wp: private anonymous, shmem or hugetlb, not a private file " +
      "mapping; minor: shmem or hugetlb with MINOR_SHMEM/MINOR_HUGETLBFS; wp on shmem/hugetlb: " +
      "WP_HUGETLBFS_SHMEM)",
    EPERM: "the mapping may never be written (a read-only file mapping): only writable memory registers",
    EBUSY: "the range is already registered with another userfaultfd",
    ENOMEM: "the process that owns the memory is exiting",
  },
  UFFDIO_UNREGISTER: {
    EINVAL: "the range is not page-aligned (huge-page-aligned on hugetlb), lies outside the mappings or " +
      "past the address-space limit, or the memory cannot be registered at all",
    ENOMEM: "the process that owns the memory is exiting",
  },
  UFFDIO_WAKE: {
    EINVAL: "the range is not page-aligned or lies past the address-space limit",
  },
  UFFDIO_COPY: {
    ...RESOLVE_HINTS,
    EINVAL: "dst or len is not page-aligned (huge-page-aligned on hugetlb), src and dst overlap, " +
      "src + len wraps, the range lies past the address-space limit, a mode is unknown, or wp was " +
      "asked on a range registered without wp",
    EFAULT: "the kernel cannot read src (unmapped, or a missing page of a registered range)",
  },
  UFFDIO_ZEROPAGE: {
    ...RESOLVE_HINTS,
    EEXIST: "the page is already mapped (another resolver got there first: wake() the range instead), " +
      "or it is a write-protected hole (a uffd-wp marker, after writeprotect() with WP_ASYNC or " +
      "WP_UNPOPULATED) that ZEROPAGE does not fill: copy() zeros instead",
    EINVAL: "the range is not page-aligned, a mode is unknown, or the memory is hugetlb " +
      "(no zero page: copy() zeros instead)",
  },
  UFFDIO_CONTINUE: {
    ...RESOLVE_HINTS,
    EFAULT: "no page in the page cache for the range: write it through the other mapping (alias()) first",
    EINVAL: "the range is not page-aligned, a mode is unknown, or the memory is not shmem or hugetlb " +
      "registered in minor mode",
  },
  UFFDIO_POISON: {
    ...RESOLVE_HINTS,
    EEXIST: "a page is already present (POISON marks missing pages only)",
    EINVAL: "the range is not page-aligned or a mode is unknown",
  },
  UFFDIO_MOVE: {
    ...RESOLVE_HINTS,
    ENOENT: "a source page is a hole (allowSrcHoles skips holes), or the source or destination is not " +
      "mapped (or its mapping changed under the move)",
    EEXIST: "a destination page is already present: wake() the range instead",
    EBUSY: "a source page is pinned, shared with another process (after fork, KSM) or a huge page that " +
      "could not be split: copy() it instead",
    EINVAL: "the destination is not registered with this userfaultfd, or not private anonymous memory " +
      "(UFFDIO_MOVE moves anonymous pages only), or src and dst are not page-aligned, overlap, or " +
      "span several mappings",
    EAGAIN: "the address space is changing (a REMOVE/UNMAP/REMAP event is pending), a source page is " +
      "being migrated, or the move stopped part way: read pending events, then retry the remainder",
  },
  UFFDIO_WRITEPROTECT: {
    ENOENT: "the range is not registered with this userfaultfd in wp mode: register(range, { wp: true })",
    EINVAL: "the range is not page-aligned, a mode is unknown, or wp: true was combined with dontwake",
    EAGAIN: "the address space is changing (a REMOVE/UNMAP/REMAP event is pending): read pending events, " +
      "then retry",
    EFAULT: "the page-table walk failed",
  },
  read: {
    EINVAL: "do the UFFDIO_API handshake first (api()), and read at least one uffd_msg (32 bytes)",
  },
  fromFd: {
    EBADF: "not an open descriptor",
  },
  mmap: {
    ENOMEM: "not enough memory or address space (or vm.max_map_count is reached); hugetlb: reserve " +
      "huge pages (sysctl vm.nr_hugepages)",
    EINVAL: "the length is zero or not a multiple of the page size",
  },
  memfd_create: {
    EINVAL: "the name is too long or hugetlb memfds are not supported here",
  },
  ftruncate: {
    ENOSPC: "no space in the backing file system (hugetlb: not enough free huge pages)",
  },
  madvise: {
    EINVAL: "this advice does not apply to this memory (MADV_REMOVE needs a shared mapping)",
    ENOMEM: "part of the range is not mapped",
  },
  mprotect: {
    EACCES: "a read-only file mapping cannot be made writable",
    ENOMEM: "part of the range is not mapped",
  },
  mremap: {
    ENOMEM: "the mapping cannot grow in place (allow moving) or there is not enough address space",
    EINVAL: "the new length or address is invalid, or MREMAP_DONTUNMAP was used on memory it " +
      "does not support",
  },
  PAGEMAP_SCAN: {
    EINVAL: "the kernel rejected the scan arguments (unknown category bits?)",
    EPERM: "checkWpAsync: the range is not registered with write protection on a WP_ASYNC descriptor",
    ENOTTY: "this kernel has no PAGEMAP_SCAN (Linux 6.7+)",
  },
  sendmsg: {
    EBADF: "the descriptor to send is not open",
  },
};

/** The hint table of an operation: its own, or the one of its kind (`open <path>`: open(2)). */
function hintsOf(op: string): Readonly<Record<string, string>> | undefined {
  const own = OP_HINTS[op];
  if (own) return own;
  if (op.startsWith("open ")) return OP_HINTS["open(2)"];
  if (op.startsWith("mmap ")) return OP_HINTS["mmap(2) of a file"];
  if (op.startsWith("lseek ")) return OP_HINTS["lseek(2) of a file"];
  return undefined;
}

/** What the caller can do about errno `name` in operation `op`. */
export function hintFor(op: string, name: string): string {
  return hintsOf(op)?.[name] ?? GENERIC_HINTS[name] ?? "see the operation's man page (ioctl_userfaultfd(2))";
}

/** Where an error was detected. */
export type ErrorSource = "kernel" | "library";

/** Options of {@link UffdError}. */
export interface UffdErrorOptions {
  /** The signed result field of the ioctl struct (bytes done, or -errno), when it has one. */
  result?: number;
  /** Bytes completed before the failure (a partial copy). */
  done?: number;
  /** `"library"` when the check happened before any syscall. */
  source?: ErrorSource;
  /** A message that replaces the generic hint. */
  detail?: string;
}

/**
 * A failed userfaultfd operation: which operation, the errno number and name,
 * the struct's signed result field, and what to do about it.
 *
 * @example
 * ```ts
 * import { Mapping, pageSize, UffdError, Userfaultfd } from "@uffd/userfaultfd";
 * using uffd = Userfaultfd.open();
 * using mem = Mapping.anonymous(pageSize);
 * uffd.register(mem);
 * const page = new Uint8Array(pageSize).fill(1);
 * uffd.copy({ start: mem.start, len: pageSize, src: page });
 * try {
 *   uffd.copy({ start: mem.start, len: pageSize, src: page }); // placed already: EEXIST
 * } catch (e) {
 *   if (!(e instanceof UffdError) || e.code !== "EEXIST") throw e;
 *   uffd.wake({ start: mem.start, len: pageSize }); // another resolver won: wake the faulters
 * }
 * ```
 */
export class UffdError extends Error {
  /** Always `"UffdError"`. */
  override name = "UffdError";
  /** The operation, e.g. `"UFFDIO_COPY"` or `"open"`. */
  readonly op: string;
  /** errno number. */
  readonly errno: number;
  /** errno name, e.g. `"EEXIST"`. */
  readonly code: string;
  /** The signed result field of the struct (byte count or negative errno), if any. */
  readonly result: number | undefined;
  /** Bytes completed before the failure. */
  readonly done: number;
  /** `"kernel"` when a syscall failed, `"library"` when a check rejected the call before it. */
  readonly source: ErrorSource;
  /** What to do about it (the part of the message after the errno name). */
  readonly hint: string;

  /** An error of operation `op` with errno number `errno`; see {@link UffdErrorOptions}. */
  constructor(op: string, errno: number, options: UffdErrorOptions = {}) {
    const code = errnoName(errno);
    const src = options.source ?? "kernel";
    const what = options.detail ?? hintFor(op, code);
    super(`${op} failed: ${code}${src === "library" ? " (checked before the syscall)" : ""}: ${what}`);
    this.op = op;
    this.errno = errno;
    this.code = code;
    this.result = options.result;
    this.done = options.done ?? 0;
    this.source = src;
    this.hint = what;
  }
}

/** A {@link UffdError} for bad input, raised before anything reaches the kernel. */
export function invalid(op: string, detail: string, code = "EINVAL"): UffdError {
  return new UffdError(op, ERRNO[code], { source: "library", detail });
}
