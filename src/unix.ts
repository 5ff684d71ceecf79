/**
 * Unix stream sockets on paths, through raw syscalls: listen, accept, connect, receive a
 * payload with several descriptors (`SCM_RIGHTS`), the peer's credentials (`SO_PEERCRED`) and
 * hang-up detection. This is how a VMM hands its userfaultfd to a page-fault handler
 * (Firecracker's `backend_type: "Uffd"`). Every struct is packed into one ArrayBuffer that this
 * module holds for the whole call, so each pointer inside a message points into live memory.
 * @module
 */
import { libc } from "../ffi/mod.ts";
import { O_CLOEXEC } from "./abi.ts";
import { describeValue, MAX_TIMEOUT_MS, showValue } from "./checks.ts";
import { ERRNO, invalid, UffdError } from "./errors.ts";
import { FdWatcher } from "./fd_watcher.ts";

const NR_lstat = 6;
const NR_socket = 41;
const NR_connect = 42;
const NR_recvfrom = 45;
const NR_bind = 49;
const NR_listen = 50;
const NR_getsockopt = 55;
const NR_unlink = 87;
const NR_accept4 = 288;
const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOL_SOCKET = 1;
const SO_PEERCRED = 17;
const SCM_RIGHTS = 1;
const MSG_CTRUNC = 0x8;
const MSG_PEEK = 0x2;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x40000000;
const S_IFMT = 0o170000;
const S_IFSOCK = 0o140000;
const POLLIN = 0x1;
const POLLERR = 0x8;
const POLLHUP = 0x10;
const POLLRDHUP = 0x2000;
/** sun_path holds 108 bytes including the terminating NUL. */
const SUN_PATH_MAX = 107;

function set64(v: DataView, off: number, n: number): void {
  v.setUint32(off, n % 4294967296, true);
  v.setUint32(off + 4, Math.floor(n / 4294967296), true);
}

function get64(v: DataView, off: number): number {
  return v.getUint32(off + 4, true) * 4294967296 + v.getUint32(off, true);
}

/** struct sockaddr_un for a path, with its length; a path too long for sun_path is a typed error. */
function sockaddr(op: string, path: string): Uint8Array {
  if (typeof path !== "string" || path === "") {
    throw invalid(op, `a socket path must be a non-empty string (got ${showValue(path)})`);
  }
  const p = new TextEncoder().encode(path);
  if (p.length > SUN_PATH_MAX || p.includes(0)) {
    throw invalid(
      op,
      `socket path ${path} is ${p.length} bytes; a Unix socket path holds at most ${SUN_PATH_MAX} ` +
        "(use a shorter path, e.g. under /tmp or relative to the working directory)",
      "ENAMETOOLONG",
    );
  }
  const sa = new Uint8Array(2 + p.length + 1);
  sa[0] = AF_UNIX;
  sa.set(p, 2);
  return sa;
}

function cpath(path: string): Uint8Array {
  return new TextEncoder().encode(path + "\0");
}

function socketFd(op: string): number {
  const fd = libc.syscall(NR_socket, AF_UNIX, SOCK_STREAM | O_CLOEXEC, 0);
  if (fd < 0) throw new UffdError(op, libc.errno(), { detail: "socket(AF_UNIX, SOCK_STREAM)" });
  return fd;
}

/** Waits up to `ms` (-1: forever) for `fd` to be readable; true when it is. Blocks this thread. */
export function waitReadable(fd: number, ms: number): boolean {
  if (!Number.isSafeInteger(fd) || fd < 0) {
    throw invalid("poll", `fd must be a descriptor number >= 0 (got ${describeValue(fd)})`, "EBADF");
  }
  if (typeof ms !== "number" || Number.isNaN(ms) || ms > MAX_TIMEOUT_MS) {
    throw invalid(
      "poll",
      `ms must be a number of milliseconds up to ${MAX_TIMEOUT_MS}, or -1 to wait forever (got ${
        describeValue(ms)
      })`,
    );
  }
  const pfd = new Int32Array([fd, POLLIN]);
  const until = ms < 0 ? Infinity : Date.now() + ms;
  for (;;) {
    const left = until === Infinity ? -1 : Math.ceil(Math.max(0, until - Date.now()));
    const r = libc.poll(pfd, 1, left);
    if (r >= 0) return r > 0;
    if (libc.errno() !== ERRNO.EINTR) throw new UffdError("poll", libc.errno());
  }
}

/**
 * Resolves true when `fd` is readable (or hung up), false after `timeoutMs` (default: never) or
 * when `signal` aborts, without blocking the event loop: a Worker parks in poll().
 */
export async function waitReadableAsync(
  fd: number,
  timeoutMs?: number,
  signal?: AbortSignal,
): Promise<boolean> {
  if (waitReadable(fd, 0)) return true;
  if (signal?.aborted) return false;
  const watcher = new FdWatcher(fd);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const stop = (): void => watcher.close();
  try {
    if (timeoutMs !== undefined) timer = setTimeout(stop, timeoutMs);
    signal?.addEventListener("abort", stop, { once: true });
    return await watcher.readable();
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener("abort", stop);
    watcher.close();
  }
}

/** A listening Unix stream socket bound to a path. `close()` closes it and removes the path. */
export class UnixListener {
  /** The listening descriptor. */
  readonly fd: number;
  /** The path it is bound to. */
  readonly path: string;
  #closed = false;

  private constructor(fd: number, path: string) {
    this.fd = fd;
    this.path = path;
  }

  /**
   * Binds and listens on `path`. A stale socket left at the path (by a handler that died) is
   * removed first; any other file there is an EADDRINUSE error, never deleted.
   *
   * @example
   * ```ts
   * using l = UnixListener.listen("/tmp/uffd-example.sock");
   * const conn = await l.accept({ timeoutMs: 10 }).catch(() => -1); // nobody connects here
   * ```
   */
  static listen(path: string, options: { backlog?: number } = {}): UnixListener {
    const sa = sockaddr("bind", path);
    const st = new Uint8Array(144); // struct stat (st_mode at offset 24)
    const name = cpath(path);
    if (libc.syscall(NR_lstat, libc.addressOf(name), libc.addressOf(st)) === 0) {
      const mode = new DataView(st.buffer).getUint32(24, true);
      if ((mode & S_IFMT) !== S_IFSOCK) {
        throw invalid("bind", `${path} exists and is not a socket: refusing to replace it`, "EADDRINUSE");
      }
      libc.syscall(NR_unlink, libc.addressOf(name));
    }
    const fd = socketFd("bind");
    if (libc.syscall(NR_bind, fd, libc.addressOf(sa), sa.length) !== 0) {
      const e = libc.errno();
      libc.close(fd);
      throw new UffdError("bind", e, { detail: `cannot bind ${path}` });
    }
    if (libc.syscall(NR_listen, fd, options.backlog ?? 4) !== 0) {
      const e = libc.errno();
      libc.close(fd);
      libc.syscall(NR_unlink, libc.addressOf(name));
      throw new UffdError("listen", e, { detail: path });
    }
    void sa;
    return new UnixListener(fd, path);
  }

  /**
   * Accepts one connection (close-on-exec), waiting without blocking the event loop. Rejects with
   * ETIMEDOUT after `timeoutMs` (default: wait forever) or when `signal` aborts.
   */
  async accept(options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<number> {
    if (this.#closed) throw invalid("accept", "the listener is closed", "EBADF");
    if (!(await waitReadableAsync(this.fd, options.timeoutMs, options.signal))) {
      throw new UffdError("accept", ERRNO.ETIMEDOUT, {
        source: "library",
        detail: options.signal?.aborted
          ? `aborted while waiting for a connection on ${this.path}`
          : `nothing connected to ${this.path} within ${options.timeoutMs} ms`,
      });
    }
    const conn = libc.syscall(NR_accept4, this.fd, 0, 0, O_CLOEXEC);
    if (conn < 0) throw new UffdError("accept", libc.errno(), { detail: this.path });
    return conn;
  }

  /** Closes the socket and removes its path; safe twice. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    libc.close(this.fd);
    libc.syscall(NR_unlink, libc.addressOf(cpath(this.path)));
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** Connects to the Unix stream socket at `path`; returns the descriptor (close-on-exec). */
export function connectUnix(path: string): number {
  const sa = sockaddr("connect", path);
  const fd = socketFd("connect");
  for (;;) {
    if (libc.syscall(NR_connect, fd, libc.addressOf(sa), sa.length) === 0) return fd;
    const e = libc.errno();
    if (e === ERRNO.EINTR) continue;
    libc.close(fd);
    throw new UffdError("connect", e, { detail: `cannot connect to ${path}` });
  }
}

/** What {@link recvMessage} received. */
export interface ReceivedMessage {
  /** The payload bytes (empty at end of stream). */
  bytes: Uint8Array;
  /** Descriptors that came with it (close-on-exec; the caller owns and closes them). */
  fds: number[];
  /** The peer sent more descriptors than `maxFds` (the kernel dropped the rest: MSG_CTRUNC). */
  truncated: boolean;
  /** The peer closed the stream (no bytes, no descriptors). */
  eof: boolean;
}

/**
 * One `recvmsg` of up to `maxBytes` with room for `maxFds` descriptors (default 64 KiB, 8).
 * Blocks until something arrives unless `dontWait` (then EAGAIN when nothing is there).
 */
export function recvMessage(
  fd: number,
  options: { maxBytes?: number; maxFds?: number; dontWait?: boolean } = {},
): ReceivedMessage {
  const maxBytes = options.maxBytes ?? 65536;
  const maxFds = options.maxFds ?? 8;
  const ctl = 16 + Math.ceil((maxFds * 4) / 8) * 8; // CMSG_SPACE(maxFds * sizeof(int))
  const IOV = 56;
  const CTL = 72;
  const DATA = CTL + ctl;
  const buf = new ArrayBuffer(DATA + maxBytes);
  const bytes = new Uint8Array(buf);
  const v = new DataView(buf);
  const base = libc.addressOf(bytes);
  set64(v, 16, base + IOV); // msg_iov
  set64(v, 24, 1); // msg_iovlen
  set64(v, 32, base + CTL); // msg_control
  set64(v, 40, ctl); // msg_controllen
  set64(v, IOV, base + DATA); // iov_base
  set64(v, IOV + 8, maxBytes); // iov_len
  let n: number;
  for (;;) {
    n = libc.recvmsg(fd, bytes, MSG_CMSG_CLOEXEC | (options.dontWait ? MSG_DONTWAIT : 0));
    if (n >= 0) break;
    const e = libc.errno();
    if (e !== ERRNO.EINTR) throw new UffdError("recvmsg", e);
  }
  const fds: number[] = [];
  const controllen = get64(v, 40);
  for (let off = 0; off + 16 <= controllen;) {
    const len = get64(v, CTL + off);
    if (len < 16) break;
    if (v.getInt32(CTL + off + 8, true) === SOL_SOCKET && v.getInt32(CTL + off + 12, true) === SCM_RIGHTS) {
      for (let k = 16; k + 4 <= len; k += 4) fds.push(v.getInt32(CTL + off + k, true));
    }
    off += Math.ceil(len / 8) * 8;
  }
  const flags = v.getInt32(48, true);
  return {
    bytes: bytes.slice(DATA, DATA + n),
    fds,
    truncated: (flags & MSG_CTRUNC) !== 0,
    eof: n === 0 && fds.length === 0,
  };
}

/** Sends `bytes` with descriptors `fds` (SCM_RIGHTS) in one `sendmsg` on a connected socket. */
export function sendMessage(fd: number, bytes: Uint8Array, fds: readonly number[] = []): number {
  const ctl = fds.length > 0 ? 16 + Math.ceil((fds.length * 4) / 8) * 8 : 0;
  const IOV = 56;
  const CTL = 72;
  const DATA = CTL + ctl;
  const buf = new ArrayBuffer(DATA + Math.max(1, bytes.length));
  const all = new Uint8Array(buf);
  const v = new DataView(buf);
  const base = libc.addressOf(all);
  all.set(bytes, DATA);
  set64(v, 16, base + IOV);
  set64(v, 24, 1);
  if (ctl > 0) {
    set64(v, 32, base + CTL);
    set64(v, 40, ctl);
    set64(v, CTL, 16 + fds.length * 4); // cmsg_len = CMSG_LEN(n * sizeof(int))
    v.setInt32(CTL + 8, SOL_SOCKET, true);
    v.setInt32(CTL + 12, SCM_RIGHTS, true);
    fds.forEach((f, i) => v.setInt32(CTL + 16 + i * 4, f, true));
  }
  set64(v, IOV, base + DATA);
  set64(v, IOV + 8, bytes.length);
  for (;;) {
    const n = libc.sendmsg(fd, all, MSG_NOSIGNAL);
    if (n >= 0) return n;
    const e = libc.errno();
    if (e !== ERRNO.EINTR) throw new UffdError("sendmsg", e);
  }
}

/** The peer's process, user and group ids (`SO_PEERCRED`, as of connect()). */
export function peerCredentials(fd: number): { pid: number; uid: number; gid: number } {
  const cred = new Int32Array(3);
  const len = new Uint32Array([12]);
  if (
    libc.syscall(NR_getsockopt, fd, SOL_SOCKET, SO_PEERCRED, libc.addressOf(cred), libc.addressOf(len)) !== 0
  ) {
    throw new UffdError("getsockopt", libc.errno(), { detail: "SO_PEERCRED" });
  }
  return { pid: cred[0], uid: cred[1] >>> 0, gid: cred[2] >>> 0 };
}

/** Whether the peer of a connected stream has hung up (or the socket failed); never blocks. */
export function hungUp(fd: number): boolean {
  const pfd = new Int32Array([fd, POLLIN | POLLRDHUP]);
  const revents = new Uint16Array(pfd.buffer);
  if (libc.poll(pfd, 1, 0) <= 0) return false;
  if (revents[3] & (POLLHUP | POLLRDHUP | POLLERR)) return true;
  const one = new Uint8Array(1);
  const n = libc.syscall(NR_recvfrom, fd, libc.addressOf(one), 1, MSG_PEEK | MSG_DONTWAIT, 0, 0);
  return n === 0;
}

/**
 * Resolves when the peer of a connected stream hangs up, without blocking the event loop (a
 * Worker parks in poll()); bytes the peer sends meanwhile are read and dropped. `close()` on the
 * returned handle stops watching (the promise then never resolves).
 */
export function watchHangUp(fd: number): { hungUp: Promise<void>; close(): void } {
  const watcher = new FdWatcher(fd);
  let stopped = false;
  const hung = (async () => {
    for (;;) {
      if (!(await watcher.readable())) {
        if (stopped) return new Promise<void>(() => {});
        return; // poll failed on the socket: treat it as gone
      }
      if (hungUp(fd)) return;
      // Data nobody expects (Firecracker sends nothing after the handshake): drain it.
      const drain = new Uint8Array(4096);
      while (libc.syscall(NR_recvfrom, fd, libc.addressOf(drain), drain.length, MSG_DONTWAIT, 0, 0) > 0);
      if (hungUp(fd)) return;
    }
  })();
  return {
    hungUp: hung.finally(() => watcher.close()),
    close: () => {
      stopped = true;
      watcher.close();
    },
  };
}
