/**
 * Passing descriptors over Unix sockets (`SCM_RIGHTS`): how a userfaultfd reaches a
 * monitor in another process. `msghdr`, `iovec` and `cmsghdr` are packed into one
 * ArrayBuffer, so every pointer inside the message points into memory this module
 * holds a reference to for the whole call.
 * @module
 */
import { libc } from "../ffi/mod.ts";
import { O_CLOEXEC } from "./abi.ts";
import { ERRNO, invalid, UffdError } from "./errors.ts";

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = O_CLOEXEC;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const MSG_CTRUNC = 0x8;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x40000000;

// x86-64 layout, one buffer:
//   msghdr  @0  (56): name, namelen(u32, padded), iov, iovlen, control, controllen, flags(i32, padded)
//   iovec   @56 (16): base, len
//   cmsghdr @72 (24): len(u64), level(i32), type(i32), int fd, pad   (CMSG_SPACE(sizeof(int)))
//   data    @96 (1):  the one byte a stream socket must carry with the descriptor
const IOV = 56;
const CMSG = 72;
const DATA = 96;
const CMSG_LEN_INT = 20; // CMSG_LEN(sizeof(int))
const CMSG_SPACE_INT = 24; // CMSG_SPACE(sizeof(int))
const SIZE = 128;

/** One message buffer: the bytes, a DataView over them, and their address. */
interface Msg {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  readonly base: number;
}

function message(): Msg {
  const buf = new ArrayBuffer(SIZE); // off-heap and never moved: its address is stable
  const bytes = new Uint8Array(buf);
  return { bytes, view: new DataView(buf), base: libc.addressOf(bytes) };
}

function set64(v: DataView, off: number, n: number): void {
  v.setUint32(off, n % 4294967296, true);
  v.setUint32(off + 4, Math.floor(n / 4294967296), true);
}

function get64(v: DataView, off: number): number {
  return v.getUint32(off + 4, true) * 4294967296 + v.getUint32(off, true);
}

/** Fills msghdr and iovec: one data byte, a control buffer for one descriptor. */
function pack(m: Msg): void {
  m.bytes.fill(0);
  set64(m.view, 16, m.base + IOV); // msg_iov
  set64(m.view, 24, 1); // msg_iovlen
  set64(m.view, 32, m.base + CMSG); // msg_control
  set64(m.view, 40, CMSG_SPACE_INT); // msg_controllen
  set64(m.view, IOV, m.base + DATA); // iov_base
  set64(m.view, IOV + 8, 1); // iov_len
}

function checkFd(op: string, what: string, fd: number): void {
  if (!Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff) {
    throw invalid(op, `${what} must be a descriptor number (got ${fd})`, "EBADF");
  }
}

/**
 * Sends descriptor `fd` over the connected Unix socket `socketFd` (`SCM_RIGHTS`, with
 * one data byte). The receiver gets its own descriptor for the same open file; `fd`
 * stays open here. Throws {@link UffdError} (op `"sendmsg"`) on failure.
 *
 * @example
 * ```ts
 * import { recvFd, sendFd, socketPair, Userfaultfd } from "@uffd/userfaultfd";
 * using uffd = Userfaultfd.open();
 * const [a, b] = socketPair();
 * sendFd(a, uffd.fd);
 * using copy = Userfaultfd.fromFd(recvFd(b)); // the same descriptor under another number
 * ```
 */
export function sendFd(socketFd: number, fd: number): void {
  checkFd("sendmsg", "socketFd", socketFd);
  checkFd("sendmsg", "fd", fd);
  const m = message();
  pack(m);
  m.bytes[DATA] = 0x55;
  set64(m.view, CMSG, CMSG_LEN_INT); // cmsg_len
  m.view.setInt32(CMSG + 8, SOL_SOCKET, true);
  m.view.setInt32(CMSG + 12, SCM_RIGHTS, true);
  m.view.setInt32(CMSG + 16, fd, true);
  for (;;) {
    const n = libc.sendmsg(socketFd, m.bytes, MSG_NOSIGNAL);
    if (n >= 0) {
      if (n !== 1) throw new UffdError("sendmsg", ERRNO.EIO, { detail: `sent ${n} bytes instead of 1` });
      return;
    }
    const e = libc.errno();
    if (e !== ERRNO.EINTR) throw new UffdError("sendmsg", e);
  }
}

/**
 * Receives one descriptor sent with {@link sendFd} (or any `SCM_RIGHTS` message carrying
 * one descriptor and at least one data byte) from the Unix socket `socketFd`. Blocks
 * until a message arrives. The new descriptor is close-on-exec. Throws {@link UffdError}
 * (op `"recvmsg"`): the kernel's errno, `ECONNRESET` when the peer closed the socket,
 * `EBADMSG` when the message carried no descriptor.
 */
export function recvFd(socketFd: number): number {
  checkFd("recvmsg", "socketFd", socketFd);
  const m = message();
  pack(m);
  let n: number;
  for (;;) {
    n = libc.recvmsg(socketFd, m.bytes, MSG_CMSG_CLOEXEC);
    if (n >= 0) break;
    const e = libc.errno();
    if (e !== ERRNO.EINTR) throw new UffdError("recvmsg", e);
  }
  const controllen = get64(m.view, 40);
  const flags = m.view.getInt32(48, true);
  const has = controllen >= CMSG_LEN_INT && get64(m.view, CMSG) >= CMSG_LEN_INT &&
    m.view.getInt32(CMSG + 8, true) === SOL_SOCKET && m.view.getInt32(CMSG + 12, true) === SCM_RIGHTS;
  const fd = has ? m.view.getInt32(CMSG + 16, true) : -1;
  if (flags & MSG_CTRUNC) {
    if (fd >= 0) libc.close(fd);
    throw new UffdError("recvmsg", ERRNO.EBADMSG, {
      source: "library",
      detail: "the control message was truncated (more than one descriptor was sent?)",
    });
  }
  if (fd < 0) {
    if (n === 0) {
      throw new UffdError("recvmsg", ERRNO.ECONNRESET, {
        source: "library",
        detail: "the peer closed the socket without sending a descriptor",
      });
    }
    throw new UffdError("recvmsg", ERRNO.EBADMSG, {
      source: "library",
      detail: "the message carried no descriptor (SCM_RIGHTS)",
    });
  }
  return fd;
}

/**
 * A connected pair of Unix stream sockets (`socketpair(AF_UNIX, SOCK_STREAM |
 * SOCK_CLOEXEC)`), e.g. to hand a descriptor to a Worker or a child. The caller owns
 * both descriptors and closes them.
 */
export function socketPair(): [number, number] {
  const sv = new Int32Array(2);
  if (libc.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) !== 0) {
    throw new UffdError("socketpair", libc.errno());
  }
  return [sv[0], sv[1]];
}
