// Runs tests/fixtures/selftest_process (a process that forks and survives SIGBUS, which JavaScript
// cannot) and lends its userfaultfd and two pipe ends to the test through pidfd_getfd(2): the
// test is the kernel test's monitor and drives the process with synchronous messages.
import { type ChildProcess, spawn } from "node:child_process";
import assert from "node:assert/strict";
import { libc } from "../../ffi/mod.ts";
import { featureBit, type FeatureName, Userfaultfd } from "../../mod.ts";
import { parseKv, readProcFile } from "./selftest_common.ts";

const SYS_pidfd_open = 434;
const SYS_pidfd_getfd = 438;

/** A running fixture process with its key=value output. */
export class ForkFixture {
  #proc: ChildProcess;
  #out = "";
  #err = "";
  #exit: Promise<{ code: number | null; signal: string | null }>;
  #listeners: (() => void)[] = [];
  exited = false;
  /** What the fixture's processes were doing when {@link wait} gave up. */
  diagnosis = "";

  constructor(path: string, args: string[]) {
    this.#proc = spawn(path, args, { stdio: ["pipe", "pipe", "pipe"] });
    this.#proc.stdout!.on("data", (d: Uint8Array | string) => {
      this.#out += typeof d === "string" ? d : new TextDecoder().decode(d);
      for (const l of this.#listeners.splice(0)) l();
    });
    this.#proc.stderr!.on("data", (d: Uint8Array | string) => {
      this.#err += typeof d === "string" ? d : new TextDecoder().decode(d);
    });
    // "exit" can come before the last output: wait for stdout to end too (or 500 ms, in case a
    // child of the fixture still holds the pipe).
    const stdoutEnded = new Promise<void>((resolve) => this.#proc.stdout!.on("close", () => resolve()));
    this.#exit = new Promise((resolve) => {
      this.#proc.on("exit", async (code, signal) => {
        let timer: ReturnType<typeof setTimeout> | undefined;
        await Promise.race([stdoutEnded, new Promise<void>((r) => (timer = setTimeout(r, 500)))]);
        clearTimeout(timer);
        this.exited = true;
        for (const l of this.#listeners.splice(0)) l();
        resolve({ code, signal });
      });
    });
  }

  /** Parsed output so far. */
  get kv(): Record<string, string> {
    return parseKv(this.#out);
  }

  /** Raw output so far, for messages. */
  get output(): string {
    return `stdout:\n${this.#out}\nstderr:\n${this.#err}${this.diagnosis}`;
  }

  /** Waits until a line `key=...` (or `error=...`, or exit) shows up. */
  async waitFor(key: string, ms: number): Promise<Record<string, string>> {
    const deadline = Date.now() + ms;
    for (;;) {
      const kv = this.kv;
      if (key in kv || "error" in kv || this.exited) return kv;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`fixture: no ${key}= within ${ms} ms\n${this.output}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#listeners.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /**
   * Lets the fixture fork, and waits until it says so: the caller then blocks in a synchronous
   * read, so the write must not sit in the runtime's event loop.
   */
  async go(ms: number): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.#proc.stdin!.write("g", (e) => e ? reject(e) : resolve());
    });
    await this.waitFor("forking", ms);
  }

  /** Waits for the exit, killing the process after `ms`. */
  async wait(ms: number): Promise<{ code: number | null; signal: string | null }> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const r = await Promise.race([
      this.#exit,
      new Promise<null>((resolve) => {
        timer = setTimeout(() => resolve(null), ms);
      }),
    ]);
    clearTimeout(timer);
    if (r) return r;
    this.diagnosis = diagnose(this.kv);
    this.kill();
    return await this.#exit;
  }

  /** SIGKILL (children of the fixture die when their faults are released or time out). */
  kill(): void {
    if (!this.exited) this.#proc.kill("SIGKILL");
  }
}

/** Duplicates descriptor `fd` of process `pid` into this process (pidfd_getfd), or an error. */
export function grabFd(pid: number, fd: number): number | string {
  const pidfd = libc.syscall(SYS_pidfd_open, pid, 0);
  if (pidfd < 0) return `pidfd_open(${pid}) failed: errno ${libc.errno()}`;
  const got = libc.syscall(SYS_pidfd_getfd, pidfd, fd, 0);
  const e = libc.errno();
  libc.close(pidfd);
  return got < 0 ? `pidfd_getfd failed: errno ${e} (needs ptrace access to the fixture)` : got;
}

function diagnose(kv: Record<string, string>): string {
  let out = "";
  for (const key of ["pid", "child_pid"]) {
    const pid = kv[key];
    if (!pid) continue;
    const status = readProcFile(`/proc/${pid}/status`)?.match(/^State:.*$/m)?.[0] ?? "gone";
    const wchan = readProcFile(`/proc/${pid}/wchan`) ?? "";
    const stack = readProcFile(`/proc/${pid}/stack`) ?? "";
    out += `\n${key} ${pid}: ${status} wchan=${wchan}\n${stack}`;
  }
  return out;
}

/** Commands of tests/fixtures/selftest_process.c (its `C_*`). */
export const C = {
  HELLO: 1,
  TOUCH: 2,
  READ: 3,
  ZAP: 4,
  RELEASE: 5,
  FORK: 6,
  PIN: 7,
  UNPIN: 8,
  SIGBUS: 9,
  POISON: 10,
  ACK: 11,
  EXIT: 12,
} as const;

/** Replies and requests of tests/fixtures/selftest_process.c (its `Q_*`). */
export const Q = {
  OK: 100,
  CHILD: 101,
  FORKED: 102,
  NEED_COPY: 103,
  NEED_UNPROTECT: 104,
  DONE: 105,
} as const;

/** What the fork command's child does (C.FORK's first argument). */
export const FORK_HOLD = 0;
/** The child runs faulting_process(0) (events). */
export const FORK_EVENTS = 1;
/** The child runs faulting_process(2) (sigbus). */
export const FORK_SIGBUS = 2;

const POLLIN = 1;

/**
 * tests/fixtures/selftest_process running with its userfaultfd (opened with `features`, non-blocking,
 * as a remote {@link Userfaultfd} here) and its message pipes taken into this process. Messages are
 * sent and awaited synchronously on this thread (poll with a deadline), since the fixture may be
 * blocked in a fault that only this thread will resolve. Always {@link close} it.
 */
export class ProcFixture {
  /** The process and its output. */
  readonly fx: ForkFixture;
  /** Its pid. */
  readonly pid: number;
  /** area_dst in the fixture's address space. */
  readonly area: number;
  /** Its mremap target (faulting_process(0)). */
  readonly target: number;
  /** The fixture's userfaultfd, remote. */
  readonly uffd: Userfaultfd;
  readonly #req: number;
  readonly #cmd: number;
  readonly #msg = new Int32Array(4);
  readonly #pfd = new Int32Array(4);
  #closed = false;

  private constructor(
    fx: ForkFixture,
    kv: Record<string, string>,
    uffd: Userfaultfd,
    req: number,
    cmd: number,
  ) {
    this.fx = fx;
    this.pid = Number(kv.pid);
    this.area = Number(kv.area);
    this.target = Number(kv.target);
    this.uffd = uffd;
    this.#req = req;
    this.#cmd = cmd;
  }

  /**
   * Starts the fixture with `pages` pages of `mt` and a userfaultfd with `features`; returns the
   * reason to skip when its huge pages cannot be had or its descriptors cannot be taken.
   */
  static async start(
    path: string,
    mt: string,
    ps: number,
    pages: number,
    features: readonly FeatureName[],
  ): Promise<ProcFixture | string> {
    const mask = features.reduce((m, f) => m + featureBit(f), 0);
    const fx = new ForkFixture(path, [mt, String(ps), String(pages), mask.toString(16)]);
    const fds: number[] = [];
    let started: ProcFixture | undefined;
    try {
      const kv = await fx.waitFor("ready", 10000);
      if (mt.startsWith("hugetlb") && /^mmap.*Cannot allocate memory/.test(kv.error ?? "")) {
        return `${mt}: the fixture could not map ${pages} huge pages (ENOMEM)`;
      }
      assert.equal(kv.ready, "1", fx.output);
      for (const key of ["uffd", "req", "cmd"]) {
        const fd = grabFd(Number(kv.pid), Number(kv[key]));
        if (typeof fd === "string") return fd;
        fds.push(fd);
      }
      const p = new ProcFixture(
        fx,
        kv,
        Userfaultfd.fromFd(fds[0], features, { remote: true }),
        fds[1],
        fds[2],
      );
      fds.length = 0; // p owns them now
      try {
        assert.equal(p.call(C.HELLO, 0, 0, 0, "hello")[0], Q.OK);
      } catch (e) {
        await p.close();
        throw e;
      }
      started = p;
      return p;
    } finally {
      if (!started) {
        for (const fd of fds) libc.close(fd);
        fx.kill();
        await fx.wait(5000);
      }
    }
  }

  /** Sends a command. */
  send(op: number, a = 0, b = 0, c = 0): void {
    const m = this.#msg;
    m[0] = op;
    m[1] = a;
    m[2] = b;
    m[3] = c;
    const n = libc.write(this.#cmd, m, 16);
    if (n !== 16) throw new Error(`write to the fixture: ${n} (errno ${libc.errno()})\n${this.fx.output}`);
  }

  /** Whether a message is waiting, after at most `ms`. */
  readable(ms: number): boolean {
    const p = this.#pfd;
    p[0] = this.#req;
    p[1] = POLLIN;
    return libc.poll(p, 1, ms) > 0;
  }

  /**
   * Waits up to `ms` for the uffd or the message pipe: 1 = a message, 2 = an event on `uffd`
   * (default: the fixture's own descriptor), 3 = both, 0 = neither.
   */
  waitEither(ms: number, uffd: Userfaultfd = this.uffd): number {
    const p = this.#pfd;
    p[0] = this.#req;
    p[1] = POLLIN;
    p[2] = uffd.fd;
    p[3] = POLLIN;
    if (libc.poll(p, 2, ms) <= 0) return 0;
    return ((p[1] >>> 16) !== 0 ? 1 : 0) | ((p[3] >>> 16) !== 0 ? 2 : 0);
  }

  /** The next message `{ op, a, b, c }` (a view, valid until the next call), within `ms`. */
  recv(ms: number, what: string): Int32Array {
    if (!this.readable(ms)) {
      throw new Error(`fixture: no answer to ${what} within ${ms} ms\n${this.fx.output}`);
    }
    const n = libc.read(this.#req, this.#msg, 16);
    if (n === 0) throw new Error(`fixture: exited during ${what}\n${this.fx.output}`);
    if (n !== 16) throw new Error(`fixture: short read ${n} during ${what} (errno ${libc.errno()})`);
    return this.#msg;
  }

  /** Sends a command and returns its answer. */
  call(op: number, a: number, b: number, c: number, what: string, ms = 5000): Int32Array {
    this.send(op, a, b, c);
    return this.recv(ms, what);
  }

  /** Closes the descriptors taken, ends the fixture (SIGKILL if it is still running) and reaps it. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.uffd.close(); // releases the fixture should it wait on a fault
    libc.close(this.#cmd);
    libc.close(this.#req);
    this.fx.kill();
    await this.fx.wait(5000);
  }
}
