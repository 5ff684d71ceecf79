/**
 * The koffi backend of {@link Libc}, for Node.js (koffi 3, an npm package: Node has no FFI of its
 * own). `koffi` is imported through a computed specifier so that `deno check` never tries to
 * resolve it, and only under Node.
 *
 * Every buffer parameter is declared `uint8_t *`: koffi then takes any typed array's (or
 * DataView's) own memory directly (no copy, whatever its element type), and a function whose
 * parameters cannot take a JS function runs on koffi's fast path. Addresses are `uintptr_t`
 * numbers, never koffi's BigInt pointers. errno is read through a view of this thread's
 * `__errno_location()`, like the other backends (one load, no native call).
 * @module
 */
import type { Bytes, Libc } from "./types.ts";

// Only the parts of koffi this file uses, typed here so Deno can check the file.
interface Koffi {
  load(path: string): { func(declaration: string): (...args: unknown[]) => unknown };
  address(value: unknown): bigint;
  view(pointer: number | bigint, length: number): ArrayBuffer;
  version: string;
}

interface NodeProcess {
  execPath: string;
  execArgv: string[];
  pid: number;
  cwd(): string;
  on(event: "exit", listener: (code: number) => void): void;
}

// C declarations: buffers `uint8_t *` (see above), addresses `uintptr_t`, sizes `size_t`.
const declarations = {
  __errno_location: "uintptr_t __errno_location(void)",
  syscall: "long syscall(long, long, long, long, long, long, long)",
  ioctl: "int ioctl(int, uint32_t, uint8_t *)", // request: unsigned long, passed zero-extended
  open: "int open(uint8_t *, int, uint32_t)",
  read: "intptr_t read(int, uint8_t *, size_t)",
  write: "intptr_t write(int, uint8_t *, size_t)",
  pread: "intptr_t pread(int, uintptr_t, size_t, int64_t)",
  recv: "int recv(int, uintptr_t, size_t, int)", // ssize_t, read as int: len < 2 GiB
  send: "intptr_t send(int, uint8_t *, size_t, int)",
  poll: "int poll(uint8_t *, uint64_t, int)",
  close: "int close(int)",
  sysconf: "long sysconf(int)",
  mmap: "intptr_t mmap(uintptr_t, size_t, int, int, int, int64_t)",
  munmap: "int munmap(uintptr_t, size_t)",
  madvise: "int madvise(uintptr_t, size_t, int)",
  mprotect: "int mprotect(uintptr_t, size_t, int)",
  mremap: "intptr_t mremap(uintptr_t, size_t, size_t, int, uintptr_t)", // void *(void *, size_t, size_t, int, ...)
  memfd_create: "int memfd_create(uint8_t *, uint32_t)",
  ftruncate: "int ftruncate(int, int64_t)",
  fallocate: "int fallocate(int, int, int64_t, int64_t)",
  socketpair: "int socketpair(int, int, int, uint8_t *)",
  sendmsg: "intptr_t sendmsg(int, uint8_t *, int)",
  recvmsg: "intptr_t recvmsg(int, uint8_t *, int)",
  memcpy: "uintptr_t memcpy(uintptr_t, uintptr_t, size_t)",
  memcpyInto: "uintptr_t memcpy(uint8_t *, uintptr_t, size_t)", // copyInto: the destination a buffer
} as const;

type Fn = (...args: unknown[]) => number;

/** Flags of this process that a child running a script needs too: a TypeScript loader and the like. */
const INHERITED = /^--(import|require|loader|experimental-loader)$|^-r$/;
const INHERITED_WITH_VALUE = /^--(import|require|loader|experimental-loader)=/;
const INHERITED_FLAGS =
  /^--(experimental-strip-types|experimental-transform-types|no-experimental-strip-types|enable-source-maps|expose-gc|no-warnings|disable-warning=.*)$/;

/**
 * `--import X` and the like, taken from this process's flags with X made absolute when it is a
 * path (a child may run in another working directory). Bare specifiers (`tsx`) stay as they are.
 */
function inheritedFlags(proc: NodeProcess): string[] {
  const absolute = (spec: string): string =>
    spec.startsWith("./") || spec.startsWith("../")
      ? new URL(spec, `file://${proc.cwd().replace(/\/?$/, "/")}`).href
      : spec;
  const out: string[] = [];
  const argv = proc.execArgv;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (INHERITED.test(a) && i + 1 < argv.length) out.push(a, absolute(argv[++i]));
    else if (INHERITED_WITH_VALUE.test(a)) {
      const k = a.indexOf("=");
      out.push(a.slice(0, k), absolute(a.slice(k + 1)));
    } else if (INHERITED_FLAGS.test(a)) out.push(a);
  }
  return out;
}

const NR_exit_group = 231;
// Where Node's own threads wait (futex, epoll_wait, epoll_pwait, epoll_pwait2): Node wakes them
// itself when it stops a thread. A thread anywhere else is busy or blocked in a native call.
const IDLE_SYSCALLS = new Set(["202", "232", "281", "441"]);

/**
 * Whether another thread of this process is neither idle nor waiting where Node can wake it: in
 * a poll() or read() of the library or of a koffi call, on a userfault, or still running (it may
 * be loading koffi's native module), from /proc/self/task/<tid>/syscall.
 */
function busyThread(pid: number, fs: typeof import("node:fs")): boolean {
  let tasks: string[];
  try {
    tasks = fs.readdirSync("/proc/self/task");
  } catch {
    return false;
  }
  for (const tid of tasks) {
    if (Number(tid) === pid) continue;
    try {
      const nr = fs.readFileSync(`/proc/self/task/${tid}/syscall`, "utf8").split(" ")[0].trim();
      if (!IDLE_SYSCALLS.has(nr)) return true;
    } catch { /* the thread ended */ }
  }
  return false;
}

/**
 * Node ends a process only after each of its Worker threads has stopped, and a thread blocked in
 * a native call never stops: a FaultServer or an event watcher left open (its thread waits in
 * poll()), or a thread waiting on a fault nobody serves, would keep the process from ever exiting,
 * even after process.exit() or an uncaught exception; and a thread stopped while it initializes
 * koffi's native module aborts the process. Deno and Bun just end such a process. So does this:
 * when the main thread exits while another thread is busy or blocked that way, the process ends
 * right there with exit_group(2) and the exit code (Node's stdout and stderr are synchronous on
 * Linux: nothing written is lost; 'exit' listeners added after this one do not run).
 */
function guardExit(proc: NodeProcess, fs: typeof import("node:fs"), syscall: Fn): void {
  proc.on("exit", (code) => {
    let busy = busyThread(proc.pid, fs);
    if (!busy) {
      // A thread between two calls (its JavaScript is about to be stopped) may enter one now.
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2);
      busy = busyThread(proc.pid, fs);
    }
    if (busy) syscall(NR_exit_group, code, 0, 0, 0, 0, 0);
  });
}

/** Opens libc with koffi and adapts it to {@link Libc}. Each Worker opens its own. */
export async function loadNodeLibc(): Promise<Libc> {
  const [{ isMainThread, workerData }, ww] = await Promise.all([
    import("node:worker_threads"),
    import("./web_worker.ts"),
  ]);
  ww.installWebWorker();
  const gate = isMainThread ? undefined : (workerData as Record<string, unknown> | null)?.[ww.GATE_KEY];
  if (gate instanceof Int32Array) {
    // A thread of NodeWebWorker (ffi/web_worker.ts): its terminate() waits while this one
    // initializes koffi, and when it came first this thread must not begin (it is ending).
    if (Atomics.compareExchange(gate, 0, ww.GATE_IDLE, ww.GATE_LOADING) === ww.GATE_ENDING) {
      return await new Promise<never>(() => {});
    }
    try {
      return await openNodeLibc(isMainThread);
    } finally {
      Atomics.store(gate, 0, ww.GATE_LOADED);
    }
  }
  return await openNodeLibc(isMainThread);
}

async function openNodeLibc(isMainThread: boolean): Promise<Libc> {
  const specifier = ["koffi"].join("");
  let mod: { default?: Koffi } & Koffi;
  try {
    mod = await import(specifier);
  } catch (e) {
    throw new Error(
      `uffd on Node.js needs the koffi package (npm install koffi@3): ${(e as Error).message}`,
    );
  }
  const koffi: Koffi = mod.default ?? mod;
  const lib = koffi.load("libc.so.6");
  const c = {} as Record<keyof typeof declarations, Fn>;
  for (const [name, decl] of Object.entries(declarations)) {
    c[name as keyof typeof declarations] = lib.func(decl) as Fn;
  }
  const errnoWord = new Int32Array(koffi.view(c.__errno_location(), 4));
  const proc = (globalThis as unknown as { process: NodeProcess }).process;
  const flags = inheritedFlags(proc);
  const fs = await import("node:fs");
  if (isMainThread) guardExit(proc, fs, c.syscall);
  const { syscall, ioctl, open, read, write, pread, poll, close, sysconf, mmap } = c;
  const { munmap, madvise, mprotect, mremap, memfd_create, ftruncate, fallocate } = c;
  const { socketpair, sendmsg, recvmsg, memcpy, memcpyInto, recv, send } = c;
  return {
    runtime: "node",
    errno: () => errnoWord[0],
    syscall: (nr, a = 0, b = 0, cc = 0, d = 0, e = 0, f = 0) => syscall(nr, a, b, cc, d, e, f),
    ioctl: (fd, request, arg) => ioctl(fd, request, arg),
    open: (path, flags, mode) => open(path, flags, mode),
    read: (fd, buf, count) => read(fd, buf, count),
    write: (fd, buf, count) => write(fd, buf, count),
    preadAddr: (fd, addr, count, offset) => pread(fd, addr, count, offset),
    recvAddr: (fd, addr, len, flags) => recv(fd, addr, len, flags),
    send: (fd, buf, len, flags) => send(fd, buf, len, flags),
    poll: (fds, nfds, timeout) => poll(fds, nfds, timeout),
    close: (fd) => close(fd),
    sysconf: (name) => sysconf(name),
    mmap: (addr, len, prot, fl, fd, offset) => mmap(addr, len, prot, fl, fd, offset),
    munmap: (addr, len) => munmap(addr, len),
    madvise: (addr, len, advice) => madvise(addr, len, advice),
    mprotect: (addr, len, prot) => mprotect(addr, len, prot),
    mremap: (o, ol, nl, fl, n) => mremap(o, ol, nl, fl, n),
    memfd_create: (name, fl) => memfd_create(name, fl),
    ftruncate: (fd, len) => ftruncate(fd, len),
    fallocate: (fd, mode, offset, len) => fallocate(fd, mode, offset, len),
    socketpair: (d, t, p, sv) => socketpair(d, t, p, sv),
    sendmsg: (fd, msg, fl) => sendmsg(fd, msg, fl),
    recvmsg: (fd, msg, fl) => recvmsg(fd, msg, fl),
    memcpy: (dst, src, n) => {
      memcpy(dst, src, n);
    },
    copyInto: (src, _length, offset, dest) => {
      memcpyInto(dest, src + offset, dest.byteLength);
    },
    addressOf: (buf: Bytes | ArrayBuffer | SharedArrayBuffer) =>
      Number(koffi.address(ArrayBuffer.isView(buf) ? buf : new Uint8Array(buf))),
    view: (addr, len) => koffi.view(addr, len),
    scriptCommand: (script, args = []) => [proc.execPath, ...flags, script, ...args],
  };
}
