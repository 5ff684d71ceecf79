/**
 * The `bun:ffi` backend of {@link Libc}. `bun:ffi` is imported through a computed
 * specifier so that `deno check` never tries to resolve it.
 * @module
 */
import type { Bytes, Libc } from "./types.ts";

// Only the parts of bun:ffi this file uses, typed here so Deno can check the file.
interface BunFfi {
  dlopen(
    path: string,
    symbols: Record<string, { args: readonly string[]; returns: string }>,
  ): { symbols: Record<string, (...args: unknown[]) => unknown> };
  ptr(buf: unknown): number;
  toArrayBuffer(addr: number, offset: number, len: number): ArrayBuffer;
  read: { i32(addr: number, offset?: number): number };
}

const symbols = {
  __errno_location: { args: [], returns: "ptr" }, // int *(void)
  syscall: { args: ["i64", "i64", "i64", "i64", "i64", "i64", "i64"], returns: "i64_fast" }, // long (long, ...)
  ioctl: { args: ["i32", "u32", "buffer"], returns: "i32" }, // int (int, unsigned long, void *)
  open: { args: ["buffer", "i32", "u32"], returns: "i32" }, // int (const char *, int, mode_t)
  read: { args: ["i32", "buffer", "u64"], returns: "i32" }, // ssize_t (int, void *, size_t)
  write: { args: ["i32", "buffer", "u64"], returns: "i32" }, // ssize_t (int, const void *, size_t)
  pread: { args: ["i32", "u64", "u64", "i64"], returns: "i64_fast" }, // ssize_t (int, void *, size_t, off_t)
  recv: { args: ["i32", "u64", "u64", "i32"], returns: "i32" }, // ssize_t (int, void *, size_t, int), len < 2 GiB
  send: { args: ["i32", "buffer", "u64", "i32"], returns: "i32" }, // ssize_t (int, const void *, size_t, int)
  poll: { args: ["buffer", "u64", "i32"], returns: "i32" }, // int (struct pollfd *, nfds_t, int)
  close: { args: ["i32"], returns: "i32" }, // int (int)
  sysconf: { args: ["i32"], returns: "i64_fast" }, // long (int)
  mmap: { args: ["u64", "u64", "i32", "i32", "i32", "i64"], returns: "i64_fast" }, // void *(void *, size_t, int, int, int, off_t)
  munmap: { args: ["u64", "u64"], returns: "i32" }, // int (void *, size_t)
  madvise: { args: ["u64", "u64", "i32"], returns: "i32" }, // int (void *, size_t, int)
  mprotect: { args: ["u64", "u64", "i32"], returns: "i32" }, // int (void *, size_t, int)
  mremap: { args: ["u64", "u64", "u64", "i32", "u64"], returns: "i64_fast" }, // void *(void *, size_t, size_t, int, ...)
  memfd_create: { args: ["buffer", "u32"], returns: "i32" }, // int (const char *, unsigned)
  ftruncate: { args: ["i32", "i64"], returns: "i32" }, // int (int, off_t)
  fallocate: { args: ["i32", "i32", "i64", "i64"], returns: "i32" }, // int (int, int, off_t, off_t)
  socketpair: { args: ["i32", "i32", "i32", "buffer"], returns: "i32" }, // int (int, int, int, int[2])
  sendmsg: { args: ["i32", "buffer", "i32"], returns: "i64_fast" }, // ssize_t (int, const struct msghdr *, int)
  recvmsg: { args: ["i32", "buffer", "i32"], returns: "i64_fast" }, // ssize_t (int, struct msghdr *, int)
  memcpy: { args: ["u64", "u64", "u64"], returns: "u64_fast" }, // void *(void *, const void *, size_t)
} as const;

/** memcpy again, with the destination a buffer (copyInto). */
const toBuffer = {
  memcpy: { args: ["buffer", "u64", "u64"], returns: "u64_fast" }, // void *(void *, const void *, size_t)
} as const;

/** Opens libc with `bun:ffi` and adapts it to {@link Libc}. */
export async function loadBunLibc(): Promise<Libc> {
  const specifier = ["bun", "ffi"].join(":");
  const ffi = (await import(specifier)) as BunFfi;
  // deno-lint-ignore no-explicit-any
  const c = ffi.dlopen("libc.so.6", symbols).symbols as any;
  // deno-lint-ignore no-explicit-any
  const cb = ffi.dlopen("libc.so.6", toBuffer).symbols as any;
  const errnoAddr = c.__errno_location() as number;
  const bun = (globalThis as unknown as { Bun: { argv: string[] } }).Bun;
  return {
    runtime: "bun",
    errno: () => ffi.read.i32(errnoAddr, 0),
    syscall: (nr, a = 0, b = 0, cc = 0, d = 0, e = 0, f = 0) => c.syscall(nr, a, b, cc, d, e, f),
    ioctl: (fd, request, arg) => c.ioctl(fd, request, arg),
    open: (path, flags, mode) => c.open(path, flags, mode),
    read: (fd, buf, count) => c.read(fd, buf, count),
    write: (fd, buf, count) => c.write(fd, buf, count),
    preadAddr: (fd, addr, count, offset) => c.pread(fd, addr, count, offset),
    recvAddr: (fd, addr, len, flags) => c.recv(fd, addr, len, flags),
    send: (fd, buf, len, flags) => c.send(fd, buf, len, flags),
    poll: (fds, nfds, timeout) => c.poll(fds, nfds, timeout),
    close: (fd) => c.close(fd),
    sysconf: (name) => c.sysconf(name),
    mmap: (addr, len, prot, flags, fd, offset) => c.mmap(addr, len, prot, flags, fd, offset),
    munmap: (addr, len) => c.munmap(addr, len),
    madvise: (addr, len, advice) => c.madvise(addr, len, advice),
    mprotect: (addr, len, prot) => c.mprotect(addr, len, prot),
    mremap: (o, ol, nl, flags, n) => c.mremap(o, ol, nl, flags, n),
    memfd_create: (name, flags) => c.memfd_create(name, flags),
    ftruncate: (fd, len) => c.ftruncate(fd, len),
    fallocate: (fd, mode, offset, len) => c.fallocate(fd, mode, offset, len),
    socketpair: (d, t, p, sv) => c.socketpair(d, t, p, sv),
    sendmsg: (fd, msg, flags) => c.sendmsg(fd, msg, flags),
    recvmsg: (fd, msg, flags) => c.recvmsg(fd, msg, flags),
    memcpy: (dst, src, n) => {
      c.memcpy(dst, src, n);
    },
    copyInto: (src, _length, offset, dest) => {
      cb.memcpy(dest, src + offset, dest.byteLength);
    },
    addressOf: (buf: Bytes | ArrayBuffer | SharedArrayBuffer) =>
      ffi.ptr(ArrayBuffer.isView(buf) ? buf : new Uint8Array(buf)),
    view: (addr, len) => ffi.toArrayBuffer(addr, 0, len),
    scriptCommand: (script, args = []) => [bun.argv[0], "run", script, ...args],
  };
}
