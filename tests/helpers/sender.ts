// The uffd_sender fixture (tests/fixtures/uffd_sender.c): a C process that registers memory
// and sends its userfaultfd over a Unix socket, for tests of descriptors from another process.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { libc } from "../../ffi/mod.ts";
import { recvFd } from "../../mod.ts";

const O_CLOEXEC = 0o2000000;
const SENDER_SRC = fileURLToPath(new URL("../fixtures/uffd_sender.c", import.meta.url));
const SENDER = join(tmpdir(), `uffd-sender-${process.pid}`);
/** Whether a C compiler builds the fixture here. */
export const compiler = spawnSync("cc", ["--version"]).status === 0;
/** The skip reason without one. */
export const NO_CC = "no C compiler (`cc`) on PATH: cannot build tests/fixtures/uffd_sender.c";
const temps: string[] = [];
/** Removes the fixture binary and socket paths made so far (call from `after`). */
export function cleanupSenders(): void {
  for (const p of temps.splice(0)) rmSync(p, { force: true });
}

/** Builds the fixture into a private temporary path (never over the repository's build). */
function buildSender(): void {
  if (temps.includes(SENDER)) return;
  temps.push(SENDER);
  const r = spawnSync("cc", ["-O1", "-Wall", "-Werror", "-o", SENDER, SENDER_SRC], { encoding: "utf8" });
  assert.equal(r.status, 0, `cc failed: ${r.stderr}`);
}

/** Waits up to `ms` for `fd` to be readable (POLLIN). */
function pollIn(fd: number, ms: number): boolean {
  return libc.poll(new Int32Array([fd, 1]), 1, ms) === 1;
}

/** A listening AF_UNIX stream socket at a fresh path, through raw syscalls. */
function listenUnix(): { fd: number; path: string } {
  const path = join(tmpdir(), `uffd-sender-${process.pid}-${temps.length}.sock`);
  rmSync(path, { force: true });
  temps.push(path);
  const fd = libc.syscall(41, /* socket */ 1, /* AF_UNIX */ 1 | O_CLOEXEC, 0);
  assert.ok(fd >= 0, `socket: errno ${libc.errno()}`);
  const sa = new Uint8Array(110); // struct sockaddr_un
  sa[0] = 1;
  sa.set(new TextEncoder().encode(path), 2);
  if (libc.syscall(49, /* bind */ fd, libc.addressOf(sa), sa.length) !== 0 || libc.syscall(50, fd, 1) !== 0) {
    const e = libc.errno();
    libc.close(fd);
    assert.fail(`bind/listen: errno ${e}`);
  }
  return { fd, path };
}

/** A running uffd_sender fixture and the descriptor it sent; `close()` releases what is left. */
export interface Sender {
  fd: number;
  out: () => string;
  exited: Promise<number | null>;
  closeConn(): void;
  /** Ends the fixture with SIGKILL (its descriptor here stays open). */
  kill(): void;
  close(): void;
}

/** Builds and starts uffd_sender in `mode`, accepts its connection and receives its uffd. */
export function startSender(mode: string): Sender {
  buildSender();
  const l = listenUnix();
  let conn = -1;
  const child = spawn(SENDER, [l.path, mode], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
  const closeConn = (): void => {
    if (conn >= 0) libc.close(conn);
    conn = -1;
  };
  const close = (): void => {
    closeConn();
    libc.close(l.fd);
    if (child.exitCode === null) child.kill("SIGKILL");
  };
  try {
    assert.ok(pollIn(l.fd, 10000), "the fixture did not connect within 10 s");
    conn = libc.syscall(288, /* accept4 */ l.fd, 0, 0, O_CLOEXEC);
    assert.ok(conn >= 0, `accept4: errno ${libc.errno()}`);
    assert.ok(pollIn(conn, 10000), "the fixture sent nothing within 10 s");
    const kill = (): void => void child.kill("SIGKILL");
    return { fd: recvFd(conn), out: () => out, exited, closeConn, kill, close };
  } catch (e) {
    close();
    throw e;
  }
}
