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
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  ENOTTY: 25,
  ENOSPC: 28,
  ESPIPE: 29,
  EPIPE: 32,
  ERANGE: 34,
  ENOSYS: 38,
  EBADMSG: 74,
  ENOTSOCK: 88,
  EOPNOTSUPP: 95,
  ECONNRESET: 104,
  EHWPOISON: 133,
};

const NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(ERRNO).map(([k, v]) => [v, k]),
);

/** The name of an errno number (`"EEXIST"`), or `"E<n>"` when unknown. */
export function errnoName(errno: number): string {
  return NAMES[errno] ?? `E${errno}`;
}

/** What the caller can do about an errno, per operation. */
function hint(op: string, name: string): string {
  switch (name) {
    case "EPERM":
    case "EACCES":
      if (op === "open /dev/userfaultfd") {
        return "this user may not open /dev/userfaultfd: grant read/write on the device " +
          "(e.g. setfacl -m u:$USER:rw /dev/userfaultfd, or a group with chgrp/chmod 660); " +
          "the sysctl vm.unprivileged_userfaultfd does not apply to the device";
      }
      if (op === "open" || op === "userfaultfd") {
        return "this process may not create a userfaultfd: set sysctl vm.unprivileged_userfaultfd=1, " +
          "grant CAP_SYS_PTRACE, or give the user read/write access to /dev/userfaultfd; " +
          "unprivileged users can only open it with userModeOnly: true (UFFD_USER_MODE_ONLY)";
      }
      return "the kernel refused the operation for this descriptor or range";
    case "EEXIST":
      return "the page is already mapped (another resolver got there first): wake() the range instead";
    case "EAGAIN":
      return "the address space is changing (a REMOVE/UNMAP/REMAP event is pending or the copy was partial): " +
        "read pending events, then retry the remainder";
    case "ENOENT":
      return "the mapping changed under the operation (unmapped or remapped); stop serving this range";
    case "ESRCH":
      return "the faulting process has exited";
    case "EBUSY":
      return "the range is already registered with another userfaultfd";
    case "EINVAL":
      return "an address or length is not page-aligned, a mode or feature is unknown, " +
        "the range is not registered in the needed mode, or UFFDIO_API was already done";
    case "EBADF":
      return "the descriptor is closed";
    case "ENOMEM":
      return "the kernel could not allocate memory for the operation";
    case "EFAULT":
      return "a pointer passed to the kernel is invalid";
    case "ENOTTY":
      return "this kernel does not know the ioctl";
    case "ENOSYS":
      return "this kernel was built without userfaultfd (CONFIG_USERFAULTFD)";
    case "ENODEV":
      return "the device is not available";
    case "EOPNOTSUPP":
      return "the operation is not supported on this kind of memory";
    case "ENOTSOCK":
      return "the descriptor is not a socket";
    case "EPIPE":
    case "ECONNRESET":
      return "the peer closed the socket";
    case "EMFILE":
    case "ENFILE":
      return "too many open files (raise RLIMIT_NOFILE or close descriptors)";
    default:
      return "see ioctl_userfaultfd(2)";
  }
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
 * try { uffd.copy({ dst, src, len }); } catch (e) {
 *   if (e instanceof UffdError && e.code === "EEXIST") uffd.wake({ start: dst, len });
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
    const what = options.detail ?? hint(op, code);
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
