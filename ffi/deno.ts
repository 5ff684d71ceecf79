/**
 * The `Deno.dlopen` backend of {@link Libc}.
 * @module
 */
import type { Bytes, Libc } from "./types.ts";

const symbols = {
  __errno_location: { parameters: [], result: "pointer" }, // int *(void)
  syscall: { parameters: ["i64", "i64", "i64", "i64", "i64", "i64", "i64"], result: "i64" }, // long (long, ...)
  ioctl: { parameters: ["i32", "u32", "buffer"], result: "i32" }, // int (int, unsigned long, void *)
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" }, // int (const char *, int, mode_t)
  read: { parameters: ["i32", "buffer", "usize"], result: "i32" }, // ssize_t (int, void *, size_t)
  write: { parameters: ["i32", "buffer", "usize"], result: "i32" }, // ssize_t (int, const void *, size_t)
  pread: { parameters: ["i32", "usize", "usize", "i64"], result: "i64" }, // ssize_t (int, void *, size_t, off_t)
  recv: { parameters: ["i32", "usize", "usize", "i32"], result: "i32" }, // ssize_t (int, void *, size_t, int), len < 2 GiB
  send: { parameters: ["i32", "buffer", "usize", "i32"], result: "i32" }, // ssize_t (int, const void *, size_t, int)
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" }, // int (struct pollfd *, nfds_t, int)
  close: { parameters: ["i32"], result: "i32" }, // int (int)
  sysconf: { parameters: ["i32"], result: "i64" }, // long (int)
  mmap: { parameters: ["usize", "usize", "i32", "i32", "i32", "i64"], result: "i64" }, // void *(void *, size_t, int, int, int, off_t)
  munmap: { parameters: ["usize", "usize"], result: "i32" }, // int (void *, size_t)
  madvise: { parameters: ["usize", "usize", "i32"], result: "i32" }, // int (void *, size_t, int)
  mprotect: { parameters: ["usize", "usize", "i32"], result: "i32" }, // int (void *, size_t, int)
  mremap: { parameters: ["usize", "usize", "usize", "i32", "usize"], result: "i64" }, // void *(void *, size_t, size_t, int, ...)
  memfd_create: { parameters: ["buffer", "u32"], result: "i32" }, // int (const char *, unsigned)
  ftruncate: { parameters: ["i32", "i64"], result: "i32" }, // int (int, off_t)
  fallocate: { parameters: ["i32", "i32", "i64", "i64"], result: "i32" }, // int (int, int, off_t, off_t)
  socketpair: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" }, // int (int, int, int, int[2])
  sendmsg: { parameters: ["i32", "buffer", "i32"], result: "i64" }, // ssize_t (int, const struct msghdr *, int)
  recvmsg: { parameters: ["i32", "buffer", "i32"], result: "i64" }, // ssize_t (int, struct msghdr *, int)
  memcpy: { parameters: ["usize", "usize", "usize"], result: "usize" }, // void *(void *, const void *, size_t)
} as const satisfies Deno.ForeignLibraryInterface;

// Deno types 64-bit parameters as bigint and accepts numbers at run time, but a number
// deoptimizes the calling function ("not a BigInt"). Cold calls pass numbers; the hot
// calls (read, poll) pass cached BigInt constants, so they allocate nothing per call.
const n = (x: number): bigint => x as unknown as bigint;
const NFDS: readonly bigint[] = Array.from({ length: 65 }, (_, i) => BigInt(i));

/** Opens libc with `Deno.dlopen` and adapts it to {@link Libc}. */
export function loadDenoLibc(): Libc {
  const { symbols: c } = Deno.dlopen("libc.so.6", symbols);
  const errnoView = new Deno.UnsafePointerView(c.__errno_location()!);
  let readLen = -1;
  let readLenBig = 0n;
  // copyInto's view of its last source range (a source's base and length: one view per source).
  let copySrc = -1;
  let copyLen = -1;
  let copyView = new Uint8Array(0);
  return {
    runtime: "deno",
    errno: () => errnoView.getInt32(),
    syscall: (nr, a = 0, b = 0, cc = 0, d = 0, e = 0, f = 0) =>
      Number(c.syscall(n(nr), n(a), n(b), n(cc), n(d), n(e), n(f))),
    ioctl: (fd, request, arg) => c.ioctl(fd, request, arg),
    open: (path, flags, mode) => c.open(path, flags, mode),
    read: (fd, buf, count) => {
      if (count !== readLen) {
        readLen = count;
        readLenBig = BigInt(count);
      }
      return c.read(fd, buf, readLenBig);
    },
    write: (fd, buf, count) => c.write(fd, buf, n(count)),
    preadAddr: (fd, addr, count, offset) => Number(c.pread(fd, n(addr), n(count), n(offset))),
    recvAddr: (fd, addr, len, flags) => c.recv(fd, n(addr), n(len), flags),
    send: (fd, buf, len, flags) => c.send(fd, buf, n(len), flags),
    poll: (fds, nfds, timeout) => c.poll(fds, NFDS[nfds] ?? BigInt(nfds), timeout),
    close: (fd) => c.close(fd),
    sysconf: (name) => Number(c.sysconf(name)),
    mmap: (addr, len, prot, flags, fd, offset) => Number(c.mmap(n(addr), n(len), prot, flags, fd, n(offset))),
    munmap: (addr, len) => c.munmap(n(addr), n(len)),
    madvise: (addr, len, advice) => c.madvise(n(addr), n(len), advice),
    mprotect: (addr, len, prot) => c.mprotect(n(addr), n(len), prot),
    mremap: (o, ol, nl, flags, nw) => Number(c.mremap(n(o), n(ol), n(nl), flags, n(nw))),
    memfd_create: (name, flags) => c.memfd_create(name, flags),
    ftruncate: (fd, len) => c.ftruncate(fd, n(len)),
    fallocate: (fd, mode, offset, len) => c.fallocate(fd, mode, n(offset), n(len)),
    socketpair: (d, t, p, sv) => c.socketpair(d, t, p, sv),
    sendmsg: (fd, msg, flags) => Number(c.sendmsg(fd, msg, flags)),
    recvmsg: (fd, msg, flags) => Number(c.recvmsg(fd, msg, flags)),
    memcpy: (dst, src, len) => {
      c.memcpy(n(dst), n(src), n(len));
    },
    copyInto: (src, length, offset, dest) => {
      if (src !== copySrc || length !== copyLen) {
        copyView = new Uint8Array(
          Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(BigInt(src))!, length),
        );
        copySrc = src;
        copyLen = length;
      }
      dest.set(copyView.subarray(offset, offset + dest.byteLength));
    },
    addressOf: (buf: Bytes | ArrayBuffer | SharedArrayBuffer) =>
      Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf as BufferSource))),
    view: (addr, len) => Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(BigInt(addr))!, len),
    scriptCommand: (script, args = []) => [
      Deno.execPath(),
      "run",
      "--allow-ffi",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      "--allow-run",
      "--allow-net",
      script,
      ...args,
    ],
  };
}
