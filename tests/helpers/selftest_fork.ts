// Runs tests/fixtures/selftest_fork_monitor (a process that forks, which JavaScript cannot)
// and lends its userfaultfd to the test through pidfd_getfd(2), so the test is the monitor.
import { type ChildProcess, spawn } from "node:child_process";
import assert from "node:assert/strict";
import { libc } from "../../ffi/mod.ts";
import { type FeatureName, Userfaultfd } from "../../mod.ts";
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

/**
 * Waits for a fork fixture to report ready, then takes its userfaultfd (pidfd_getfd) as a
 * remote Userfaultfd: its ranges are the fixture's memory, not this process's. Returns the
 * fixture's key/value report and the descriptor, or the reason to skip.
 */
export async function attachFixtureUffd(
  fx: ForkFixture,
  mt: string,
  features: readonly FeatureName[],
): Promise<{ kv: Record<string, string>; parent: Userfaultfd } | string> {
  const kv = await fx.waitFor("ready", 10000);
  if (mt === "hugetlb" && /^mmap.*Cannot allocate memory/.test(kv.error ?? "")) {
    return "hugetlb: the fixture could not get its huge pages";
  }
  assert.equal(kv.ready, "1", fx.output);
  const fd = grabFd(Number(kv.pid), Number(kv.uffd));
  if (typeof fd === "string") return fd;
  return { kv, parent: Userfaultfd.fromFd(fd, features, { remote: true }) };
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
