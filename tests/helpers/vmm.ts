// The Firecracker stand-ins: tests/fixtures/fc_vmm.c (a VMM that sends Firecracker's UFFD handshake
// and touches guest memory from KVM vCPUs or host threads) and bench/native/fc_handler.c (Firecracker's
// on-demand example handler in C), built into a private temporary directory, plus the page hash and
// memory-file helpers the tests and the benchmark check results with.
//
// The page hash (the same in fc_vmm.c's guest code): with w0..w3 the little-endian u32 words at page
// offsets 0, ps/4+4, ps/2+8 and ps-4 (4 KiB: 0, 1028, 2056, 4092; 2 MiB: 0, 0x80004, 0x100008, 0x1ffffc)
//   h = 0x9e3779b9 ^ w0 ^ rotl32(w1, 7) ^ rotl32(w2, 13) ^ rotl32(w3, 19)
//   h ^= h >>> 16; h = imul(h, 0x45d9f3b); h ^= h >>> 16
// so a zero page hashes to ZERO_HASH (0x864909f3).
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import {
  closeSync,
  existsSync,
  ftruncateSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { libc } from "../../ffi/mod.ts";
import { cstring, freeHugePages } from "../../src/memory.ts";

const VMM_SRC = fileURLToPath(new URL("../fixtures/fc_vmm.c", import.meta.url));
const HANDLER_SRC = fileURLToPath(new URL("../../bench/native/fc_handler.c", import.meta.url));

/** Whether a C compiler is on PATH. */
export const compiler: boolean = spawnSync("cc", ["--version"]).status === 0;
/** The skip reason without one. */
export const NO_CC = "no C compiler (`cc`) on PATH: cannot build tests/fixtures/fc_vmm.c";
/** The hash of a page of zeros. */
export const ZERO_HASH = 0x864909f3;

let dir: string | undefined;
const built = new Map<string, string>();
const procs: Proc[] = [];
const listeners: FcListener[] = [];
let kvmReason: string | undefined | null = null;

/** A private temporary directory for this process's binaries, sockets and files (made on first use). */
export function tempDir(): string {
  dir ??= mkdtempSync(join(tmpdir(), "uffd-vmm-"));
  return dir;
}

let seq = 0;
/** A fresh path in {@link tempDir} (removed by {@link cleanupVmms}). */
export function tempPath(name: string): string {
  return join(tempDir(), `${seq++}-${name}`);
}

function build(src: string, name: string): string {
  const have = built.get(name);
  if (have && existsSync(have)) return have;
  if (!compiler) throw new Error(NO_CC);
  const out = join(tempDir(), name);
  const r = spawnSync("cc", ["-O2", "-Wall", "-Werror", "-pthread", "-o", out, src], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`cc ${src} failed: ${r.stderr}`);
  built.set(name, out);
  return out;
}

/** Builds tests/fixtures/fc_vmm.c (once per process) and returns the binary's path. */
export function vmmBinary(): string {
  return build(VMM_SRC, "fc_vmm");
}

/** Builds bench/native/fc_handler.c (once per process) and returns the binary's path. */
export function fcHandlerBinary(): string {
  return build(HANDLER_SRC, "fc_handler");
}

/**
 * Undefined when a KVM VM with a vCPU can be created and run here (`fc_vmm --probe-kvm` runs a guest
 * to its hlt), else the reason to skip. Cached.
 */
export function kvmUsable(): string | undefined {
  if (kvmReason !== null) return kvmReason;
  if (!compiler) return (kvmReason = NO_CC);
  // (no existsSync("/dev/kvm"): Deno wants --allow-all for /dev paths; the probe says why)
  const r = spawnSync(vmmBinary(), ["--probe-kvm"], {
    encoding: "utf8",
    timeout: 10000,
    killSignal: "SIGKILL",
  });
  kvmReason = r.status === 0
    ? undefined
    : `KVM unusable: ${(r.stderr || `exit ${r.status} ${r.signal}`).trim()}`;
  return kvmReason;
}

/** Free huge pages of the default size (2 MiB here). */
export function hugePagesFree(): number {
  return freeHugePages();
}

/** How a child ended. */
export interface ProcExit {
  code: number | null;
  signal: string | null;
}

/** A running fc_vmm or fc_handler. */
export interface Proc {
  child: ChildProcess;
  /** Resolves when the process has exited and its output ended. */
  exited: Promise<ProcExit>;
  stdout(): string;
  stderr(): string;
  /** The JSON objects printed on stdout, one a line. */
  events(): Record<string, unknown>[];
  /** fc_vmm: the `{"event":"done"}` line; fc_handler: its last JSON line. */
  summary(): Record<string, unknown> | undefined;
  /** Resolves with the first match of `re` in the stream, rejects on timeout or exit without one. */
  waitFor(re: RegExp, ms?: number, stream?: "stdout" | "stderr"): Promise<RegExpMatchArray>;
  /** SIGKILL (or `signal`) if still running. */
  kill(signal?: NodeJS.Signals): void;
}

function jsonLines(s: string): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const line of s.split("\n")) {
    if (!line.startsWith("{")) continue;
    try {
      out.push(JSON.parse(line));
    } catch { /* a partial line */ }
  }
  return out;
}

function startProc(
  bin: string,
  args: string[],
  pickSummary: (ev: Record<string, unknown>[]) => Record<string, unknown> | undefined,
): Proc {
  const child = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  let done = false;
  const waiters = new Set<() => void>();
  const poke = (): void => {
    for (const w of [...waiters]) w();
  };
  child.stdout!.on("data", (d) => {
    out += d;
    poke();
  });
  child.stderr!.on("data", (d) => {
    err += d;
    poke();
  });
  const exited = new Promise<ProcExit>((resolve) =>
    child.on("close", (code, signal) => {
      done = true;
      resolve({ code, signal });
      poke();
    })
  );
  child.on("error", (e) => {
    err += `spawn error: ${e.message}\n`;
  });
  const p: Proc = {
    child,
    exited,
    stdout: () => out,
    stderr: () => err,
    events: () => jsonLines(out),
    summary: () => pickSummary(jsonLines(out)),
    waitFor(re, ms = 10000, stream = "stdout"): Promise<RegExpMatchArray> {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          const m = (stream === "stdout" ? out : err).match(re);
          if (m) finish(() => resolve(m));
          else if (done) {
            finish(() => reject(new Error(`${bin} exited without ${re} on ${stream}: ${out}${err}`)));
          }
        };
        const timer = setTimeout(
          () => finish(() => reject(new Error(`no ${re} on ${stream} within ${ms} ms: ${out}${err}`))),
          ms,
        );
        const finish = (f: () => void): void => {
          clearTimeout(timer);
          waiters.delete(check);
          f();
        };
        waiters.add(check);
        check();
      });
    },
    kill(signal: NodeJS.Signals = "SIGKILL"): void {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
  };
  procs.push(p);
  return p;
}

/**
 * Starts fc_vmm with `args` (see tests/fixtures/fc_vmm.c). Killed by {@link cleanupVmms}.
 *
 * @example
 * ```ts
 * const vmm = startVmm(["--socket", sock, "--regions", "8388608,4194304", "--vcpus", "2", "--out", out]);
 * assert.deepEqual(await vmm.exited, { code: 0, signal: null });
 * ```
 */
export function startVmm(args: string[]): Proc {
  return startProc(vmmBinary(), args, (ev) => ev.findLast((e) => e.event === "done"));
}

/**
 * Starts fc_handler with `args` (`--socket PATH --mem-file PATH`) and resolves once it listens
 * (its "listening PATH" line on stderr).
 */
export async function startFcHandler(args: string[], ms = 10000): Promise<Proc> {
  const p = startProc(fcHandlerBinary(), args, (ev) => ev.at(-1));
  try {
    await p.waitFor(/^listening /m, ms, "stderr");
  } catch (e) {
    p.kill();
    throw e;
  }
  return p;
}

/** One fc_vmm `--out` record. */
export interface ResultRecord {
  /** File offset of the page. */
  offset: number;
  hash: number;
  /** 1 = the touch, 2 = after the balloon. */
  phase: number;
}

/** Reads fc_vmm's `--out` file: 16-byte LE records {u64 offset, u32 hash, u32 phase}. */
export function readResults(path: string): ResultRecord[] {
  const b = readFileSync(path);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const out: ResultRecord[] = [];
  for (let i = 0; i + 16 <= b.byteLength; i += 16) {
    out.push({
      offset: v.getUint32(i + 4, true) * 4294967296 + v.getUint32(i, true),
      hash: v.getUint32(i + 8, true),
      phase: v.getUint32(i + 12, true),
    });
  }
  return out;
}

const rotl = (x: number, r: number): number => ((x << r) | (x >>> (32 - r))) >>> 0;

/** The page hash of fc_vmm (see the top of this file) of the page at `bytes[0..pageSize)`. */
export function pageHash(bytes: Uint8Array, pageSize: number): number {
  const v = new DataView(bytes.buffer, bytes.byteOffset, pageSize);
  const w0 = v.getUint32(0, true);
  const w1 = v.getUint32(pageSize / 4 + 4, true);
  const w2 = v.getUint32(pageSize / 2 + 8, true);
  const w3 = v.getUint32(pageSize - 4, true);
  let h = (0x9e3779b9 ^ w0 ^ rotl(w1, 7) ^ rotl(w2, 13) ^ rotl(w3, 19)) >>> 0;
  h = (h ^ (h >>> 16)) >>> 0;
  h = Math.imul(h, 0x45d9f3b) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

const SEEK_DATA = 3;
const ENXIO = 6;

/**
 * The hash each page at `offsets` should have when guest memory is restored from `files` (the base
 * first, then diff layers): a page comes from the topmost file with DATA in it (SEEK_DATA), a page in a
 * layer's hole (or past its end) falls through to the layer below, a hole in the base reads as zeros.
 */
export function expectedHashes(files: string[], offsets: number[], pageSize: number): number[] {
  const fds = files.map((f) => {
    const fd = libc.open(cstring(f), 0o2000000, /* O_RDONLY|O_CLOEXEC */ 0);
    if (fd < 0) throw new Error(`open ${f}: errno ${libc.errno()}`);
    return fd;
  });
  const page = new Uint8Array(pageSize);
  const addr = libc.addressOf(page);
  try {
    return offsets.map((off) => {
      page.fill(0);
      for (let i = fds.length - 1; i >= 0; i--) {
        const d = libc.syscall(8, /* lseek */ fds[i], off, SEEK_DATA);
        if (d < 0) {
          const e = libc.errno();
          if (e !== ENXIO) throw new Error(`lseek(SEEK_DATA) ${files[i]}: errno ${e}`);
          continue;
        }
        if (d >= off + pageSize) continue;
        const n = libc.preadAddr(fds[i], addr, pageSize, off);
        if (n < 0) throw new Error(`pread ${files[i]}: errno ${libc.errno()}`);
        break;
      }
      return pageHash(page, pageSize);
    });
  } finally {
    for (const fd of fds) libc.close(fd);
  }
}

/** Page ranges of {@link writePatternFile}: [offset, length] in bytes. */
export type Ranges = ReadonlyArray<readonly [number, number]>;

/**
 * Writes a `length`-byte memory file whose every 4 KiB page holds a distinct pattern derived from
 * `seed` and the page's index (xorshift32 words), except `holes` (never written: sparse holes, as in
 * a diff snapshot) and `zeros` (written as zero bytes: data that reads as zeros).
 */
export function writePatternFile(
  path: string,
  length: number,
  seed: number,
  opts: { holes?: Ranges; zeros?: Ranges } = {},
): void {
  const PS = 4096;
  const inRanges = (r: Ranges | undefined, off: number): boolean =>
    !!r?.some(([o, l]) => off >= o && off < o + l);
  const fd = openSync(path, "w");
  try {
    const chunk = new Uint8Array(1 << 20);
    const words = new Uint32Array(chunk.buffer);
    let runStart = -1;
    let used = 0;
    const flush = (): void => {
      if (used > 0) writeSync(fd, chunk, 0, used, runStart);
      runStart = -1;
      used = 0;
    };
    for (let off = 0; off < length; off += PS) {
      if (inRanges(opts.holes, off)) {
        flush();
        continue;
      }
      if (runStart < 0) runStart = off;
      const n = Math.min(PS, length - off);
      const w0 = used / 4;
      if (inRanges(opts.zeros, off)) {
        chunk.fill(0, used, used + PS);
      } else {
        // a per-page xorshift32 stream, seeded from (seed, page index)
        let x = (Math.imul((seed ^ 0x5bd1e995) >>> 0, 0x9e3779b1) ^ Math.imul(off / PS + 1, 0x85ebca6b)) >>>
          0;
        x = (x ^ (x >>> 15)) >>> 0 || 1;
        for (let i = 0; i < PS / 4; i++) {
          x ^= x << 13;
          x ^= x >>> 17;
          x ^= x << 5;
          words[w0 + i] = x >>> 0;
        }
      }
      used += n;
      if (used === chunk.length) flush();
    }
    flush();
    ftruncateSync(fd, length);
  } finally {
    closeSync(fd);
  }
}

/**
 * fc_vmm's `--touch random:PCT:SEED` list, as page indices in touch order: a partial Fisher-Yates
 * shuffle of 0..pages-1 driven by splitmix64(SEED).
 */
export function randomTouch(pages: number, pct: number, seed: number | bigint): number[] {
  const M = (1n << 64n) - 1n;
  let state = BigInt(seed) & M;
  const next = (): bigint => {
    state = (state + 0x9e3779b97f4a7c15n) & M;
    let z = state;
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M;
    return z ^ (z >> 31n);
  };
  let n = Math.floor(pages * pct / 100 + 0.5);
  if (n === 0 && pct > 0) n = 1;
  n = Math.min(n, pages);
  const idx = Array.from({ length: pages }, (_, i) => i);
  for (let i = 0; i < n; i++) {
    const j = i + Number(next() % BigInt(pages - i));
    [idx[i], idx[j]] = [idx[j], idx[i]];
  }
  return idx.slice(0, n);
}

// ---- a TypeScript stand-in for a handler's listening side, to see what fc_vmm sends -------------

const O_CLOEXEC = 0o2000000;
const MSG_CTRUNC = 0x8;
const MSG_CMSG_CLOEXEC = 0x40000000;

/** What one recvmsg on the accepted connection got. */
export interface FcHandshake {
  /** The accepted connection (closed by the listener's `close()`). */
  conn: number;
  /** The message body (JSON for a well-behaved VMM). */
  body: string;
  /** The descriptors of the SCM_RIGHTS messages (close-on-exec; closed by `close()`). */
  fds: number[];
  /** recvmsg's msg_flags (MSG_CTRUNC = 0x8 when the descriptors did not fit). */
  flags: number;
}

/** A listening Unix stream socket at `path`, made with raw syscalls. */
export interface FcListener {
  path: string;
  fd: number;
  /** Waits up to `ms` for the VMM to connect and send, then receives one message. */
  accept(ms?: number): Promise<FcHandshake>;
  /** Closes the accepted connection: the VMM sees the hang-up. */
  hangUp(): void;
  /** Closes everything: listener, connection, received descriptors; removes the path. */
  close(): void;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function pollIn(fd: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  const pfd = new Int32Array([fd, 1]);
  for (;;) {
    if (libc.poll(pfd, 1, 0) === 1) return true;
    if (Date.now() >= deadline) return false;
    await sleep(5);
  }
}

/** Listens at a fresh temporary path (or `path`), as a Firecracker UFFD handler does. */
export function listenFc(path: string = tempPath("fc.sock")): FcListener {
  rmSync(path, { force: true });
  const fd = libc.syscall(41, /* socket */ 1, /* AF_UNIX */ 1 /* SOCK_STREAM */ | O_CLOEXEC, 0);
  if (fd < 0) throw new Error(`socket: errno ${libc.errno()}`);
  const sa = new Uint8Array(110); // struct sockaddr_un
  sa[0] = 1;
  sa.set(new TextEncoder().encode(path), 2);
  if (libc.syscall(49, /* bind */ fd, libc.addressOf(sa), sa.length) !== 0 || libc.syscall(50, fd, 4) !== 0) {
    const e = libc.errno();
    libc.close(fd);
    throw new Error(`bind/listen ${path}: errno ${e}`);
  }
  let conn = -1;
  const received: number[] = [];
  const l: FcListener = {
    path,
    fd,
    async accept(ms = 10000): Promise<FcHandshake> {
      if (!(await pollIn(fd, ms))) throw new Error(`nothing connected to ${path} within ${ms} ms`);
      conn = libc.syscall(288, /* accept4 */ fd, 0, 0, O_CLOEXEC);
      if (conn < 0) throw new Error(`accept4: errno ${libc.errno()}`);
      if (!(await pollIn(conn, ms))) throw new Error(`nothing sent on ${path} within ${ms} ms`);
      const r = recvMessage(conn);
      received.push(...r.fds);
      return { conn, ...r };
    },
    hangUp(): void {
      if (conn >= 0) libc.close(conn);
      conn = -1;
    },
    close(): void {
      l.hangUp();
      for (const f of received.splice(0)) libc.close(f);
      if (l.fd >= 0) libc.close(l.fd);
      l.fd = -1;
      rmSync(path, { force: true });
    },
  };
  listeners.push(l);
  return l;
}

/** One recvmsg with a 64 KiB body buffer and room for 16 descriptors (x86-64 msghdr layout). */
function recvMessage(conn: number): { body: string; fds: number[]; flags: number } {
  const IOV = 56, CTL = 72, CTL_LEN = 16 + 4 * 16, DATA = CTL + CTL_LEN, DATA_LEN = 65536;
  const buf = new ArrayBuffer(DATA + DATA_LEN);
  const bytes = new Uint8Array(buf);
  const v = new DataView(buf);
  const base = libc.addressOf(bytes);
  const set64 = (off: number, n: number): void => {
    v.setUint32(off, n % 4294967296, true);
    v.setUint32(off + 4, Math.floor(n / 4294967296), true);
  };
  const get64 = (off: number): number => v.getUint32(off + 4, true) * 4294967296 + v.getUint32(off, true);
  set64(16, base + IOV); // msg_iov
  set64(24, 1); // msg_iovlen
  set64(32, base + CTL); // msg_control
  set64(40, CTL_LEN); // msg_controllen
  set64(IOV, base + DATA);
  set64(IOV + 8, DATA_LEN);
  let n: number;
  for (;;) {
    n = libc.recvmsg(conn, bytes, MSG_CMSG_CLOEXEC);
    if (n >= 0) break;
    const e = libc.errno();
    if (e !== 4 /* EINTR */) throw new Error(`recvmsg: errno ${e}`);
  }
  const fds: number[] = [];
  const ctlLen = get64(40);
  for (let off = 0; off + 16 <= ctlLen;) {
    const len = get64(CTL + off);
    if (len < 16) break;
    const level = v.getInt32(CTL + off + 8, true), type = v.getInt32(CTL + off + 12, true);
    if (level === 1 /* SOL_SOCKET */ && type === 1 /* SCM_RIGHTS */) {
      for (let i = 16; i + 4 <= len; i += 4) fds.push(v.getInt32(CTL + off + i, true));
    }
    off += (len + 7) & ~7;
  }
  return {
    body: new TextDecoder().decode(bytes.subarray(DATA, DATA + n)),
    fds,
    flags: v.getInt32(48, true),
  };
}

/**
 * What `/proc/self/fd/N` links to ("anon_inode:[userfaultfd]", "/memfd:name (deleted)"), through the
 * readlink syscall: Deno wants --allow-all for readlinkSync under /proc/self/fd.
 */
export function fdTarget(fd: number): string {
  const path = cstring(`/proc/self/fd/${fd}`);
  const buf = new Uint8Array(4096);
  const n = libc.syscall(89, /* readlink */ libc.addressOf(path), libc.addressOf(buf), buf.length);
  if (n < 0) throw new Error(`readlink /proc/self/fd/${fd}: errno ${libc.errno()}`);
  return new TextDecoder().decode(buf.subarray(0, n));
}

/** Whether msg_flags says the descriptors were cut off. */
export const truncated = (flags: number): boolean => (flags & MSG_CTRUNC) !== 0;

/** Kills every fc_vmm and fc_handler still running, closes listeners, removes the temporary directory. */
export async function cleanupVmms(): Promise<void> {
  for (const l of listeners.splice(0)) l.close();
  const ps = procs.splice(0);
  for (const p of ps) p.kill();
  await Promise.all(ps.map((p) => Promise.race([p.exited, sleep(2000)])));
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
  built.clear();
}
