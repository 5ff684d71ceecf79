/**
 * The libc surface the library needs, independent of the JavaScript runtime.
 *
 * Addresses are plain numbers (x86-64 user space fits in 47 bits). Calls return
 * what libc returns (-1 on failure); read {@link Libc.errno} right after the call,
 * on the same thread, before any other FFI call.
 *
 * @module
 */

/** A byte buffer whose pointer may be handed to the kernel. */
export type Bytes = ArrayBufferView;

/** The libc calls used by `uffd`, one method per C function or syscall. */
export interface Libc {
  /** Which FFI backend is in use. */
  readonly runtime: "deno" | "bun" | "node";
  /** `int *__errno_location(void)`, read as a number: errno of this thread. */
  errno(): number;
  /** `long syscall(long nr, ...)` with up to six integer arguments. */
  syscall(
    nr: number,
    a?: number,
    b?: number,
    c?: number,
    d?: number,
    e?: number,
    f?: number,
  ): number;
  /** `int ioctl(int fd, unsigned long request, void *arg)` with a struct buffer. */
  ioctl(fd: number, request: number, arg: Bytes): number;
  /** `int open(const char *path, int flags, mode_t mode)`; path is NUL-terminated. */
  open(path: Uint8Array, flags: number, mode: number): number;
  /** `ssize_t read(int fd, void *buf, size_t count)`. */
  read(fd: number, buf: Bytes, count: number): number;
  /** `ssize_t write(int fd, const void *buf, size_t count)`. */
  write(fd: number, buf: Bytes, count: number): number;
  /** `ssize_t pread(int fd, void *buf, size_t count, off_t offset)` into an address. */
  preadAddr(fd: number, addr: number, count: number, offset: number): number;
  /**
   * `ssize_t recv(int fd, void *buf, size_t len, int flags)` into an address (a socket's bytes
   * straight into memory the caller keeps alive). The result is read as a 32-bit int: `len` < 2 GiB.
   */
  recvAddr(fd: number, addr: number, len: number, flags: number): number;
  /** `ssize_t send(int fd, const void *buf, size_t len, int flags)`. */
  send(fd: number, buf: Bytes, len: number, flags: number): number;
  /** `int poll(struct pollfd *fds, nfds_t nfds, int timeout)`. */
  poll(fds: Bytes, nfds: number, timeout: number): number;
  /** `long sysconf(int name)`. */
  sysconf(name: number): number;
  /** `int close(int fd)`. */
  close(fd: number): number;
  /** `void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)`; -1 on failure. */
  mmap(
    addr: number,
    len: number,
    prot: number,
    flags: number,
    fd: number,
    offset: number,
  ): number;
  /** `int munmap(void *addr, size_t len)`. */
  munmap(addr: number, len: number): number;
  /** `int madvise(void *addr, size_t len, int advice)`. */
  madvise(addr: number, len: number, advice: number): number;
  /** `int mprotect(void *addr, size_t len, int prot)`. */
  mprotect(addr: number, len: number, prot: number): number;
  /** `void *mremap(void *old, size_t oldlen, size_t newlen, int flags, void *new)`; -1 on failure. */
  mremap(
    oldAddr: number,
    oldLen: number,
    newLen: number,
    flags: number,
    newAddr: number,
  ): number;
  /** `int memfd_create(const char *name, unsigned flags)`; name is NUL-terminated. */
  memfd_create(name: Uint8Array, flags: number): number;
  /** `int ftruncate(int fd, off_t len)`. */
  ftruncate(fd: number, len: number): number;
  /** `int fallocate(int fd, int mode, off_t off, off_t len)`. */
  fallocate(fd: number, mode: number, offset: number, len: number): number;
  /** `int socketpair(int domain, int type, int proto, int sv[2])`. */
  socketpair(domain: number, type: number, proto: number, sv: Int32Array): number;
  /** `ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)`. */
  sendmsg(fd: number, msg: Bytes, flags: number): number;
  /** `ssize_t recvmsg(int fd, struct msghdr *msg, int flags)`. */
  recvmsg(fd: number, msg: Bytes, flags: number): number;
  /** `void *memcpy(void *dst, const void *src, size_t n)` between addresses. */
  memcpy(dst: number, src: number, n: number): void;
  /**
   * Copies `dest.byteLength` bytes from address `src + offset` into `dest`, for hot loops:
   * `[src, src + length)` is the memory the calls may read (a source's base address and length,
   * the same on every call, the offset varying). Bun and Node call libc's memcpy (nothing
   * allocated per call); Deno keeps one non-shared view of the range and copies with
   * `TypedArray.set` from a subarray of it (a number where Deno takes a 64-bit integer costs its
   * slow call path, more than that view), which is V8's memmove, where a view of a
   * SharedArrayBuffer copies word by word.
   */
  copyInto(src: number, length: number, offset: number, dest: Uint8Array): void;
  /** The address of a buffer's first byte. The caller must keep `buf` referenced. */
  addressOf(buf: Bytes | ArrayBuffer | SharedArrayBuffer): number;
  /** An ArrayBuffer over `len` bytes at `addr` (no copy). Invalid after munmap. */
  view(addr: number, len: number): ArrayBuffer;
  /** argv that runs a script file under the current runtime with FFI allowed. */
  scriptCommand(script: string, args?: readonly string[]): string[];
}
