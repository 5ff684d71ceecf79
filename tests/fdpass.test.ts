// Passing a userfaultfd over a Unix socket (SCM_RIGHTS): within the process, and from a C
// process that registers its own memory and lets this process resolve its page faults.
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdirSync, renameSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { libc } from "../ffi/mod.ts";
import {
  Mapping,
  type PagefaultEvent,
  pageSize,
  recvFd,
  sendFd,
  socketPair,
  UffdError,
  Userfaultfd,
} from "../mod.ts";
import { readTextFile } from "../src/memory.ts";
import { Toucher, within } from "./helpers/toucher.ts";

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const fdFlags = (fd: number) =>
  parseInt(readTextFile(`/proc/self/fdinfo/${fd}`)?.match(/^flags:\s+([0-7]+)/m)?.[1] ?? "-1", 8);
const O_CLOEXEC = 0o2000000;

function closeFds(...fds: number[]): void {
  for (const fd of fds) if (fd >= 0) libc.close(fd);
}

/** Waits up to `ms` for `fd` to be readable (POLLIN); false on timeout. */
function pollIn(fd: number, ms: number): boolean {
  const pfd = new Int32Array([fd, 1]);
  return libc.poll(pfd, 1, ms) === 1;
}

describe("sendFd / recvFd / socketPair", () => {
  it("socketPair gives two connected close-on-exec stream sockets", () => {
    const [a, b] = socketPair();
    try {
      assert.equal(fdFlags(a) & O_CLOEXEC, O_CLOEXEC);
      assert.equal(fdFlags(b) & O_CLOEXEC, O_CLOEXEC);
      assert.equal(libc.write(a, new Uint8Array([1, 2, 3]), 3), 3);
      const got = new Uint8Array(3);
      assert.equal(libc.read(b, got, 3), 3);
      assert.deepEqual([...got], [1, 2, 3]);
    } finally {
      closeFds(a, b);
    }
  });

  it(
    "a uffd passed over a socketpair serves faults through Userfaultfd.fromFd",
    { timeout: 20000 },
    async () => {
      const [a, b] = socketPair();
      const t = new Toucher();
      const original = Userfaultfd.open({ nonBlocking: true, features: ["THREAD_ID"] });
      const mem = Mapping.anonymous(2 * pageSize);
      let received: Userfaultfd | undefined;
      let touched: Promise<unknown> = Promise.resolve();
      try {
        original.register(mem);
        sendFd(a, original.fd);
        const fd = recvFd(b);
        assert.notEqual(fd, original.fd);
        assert.equal(fdFlags(fd) & O_CLOEXEC, O_CLOEXEC, "received descriptors are close-on-exec");
        received = Userfaultfd.fromFd(fd, ["THREAD_ID"]);
        original.close(); // the received descriptor keeps the same userfaultfd alive
        const touch = t.read(mem.page(1));
        touched = touch.catch(() => {});
        const ev = received.readEvent({ timeout: 10000 });
        assert.ok(ev && ev.type === "pagefault", "the fault arrives on the received descriptor");
        assert.equal((ev as PagefaultEvent).address, mem.page(1));
        assert.ok((ev as PagefaultEvent).threadId > 0);
        assert.equal(
          received.copy({ start: mem.page(1), len: pageSize, src: new Uint8Array(pageSize).fill(33) }),
          pageSize,
        );
        assert.equal((await within(touch, 10000, "touch")).first, 33);
      } finally {
        original.close();
        received?.close();
        await Promise.race([touched, sleep(5000)]);
        t.close();
        mem.close();
        closeFds(a, b);
      }
    },
  );

  it("errors: not a socket (ENOTSOCK), peer closed (ECONNRESET), no descriptor (EBADMSG), bad numbers (EBADF)", () => {
    using shm = Mapping.memfd(pageSize);
    assert.throws(() => sendFd(shm.fd, 0), (e: unknown) => e instanceof UffdError && e.code === "ENOTSOCK");
    assert.throws(() => recvFd(shm.fd), (e: unknown) => e instanceof UffdError && e.code === "ENOTSOCK");
    const [a, b] = socketPair();
    try {
      assert.equal(libc.write(a, new Uint8Array([7]), 1), 1); // a byte without SCM_RIGHTS
      assert.throws(() => recvFd(b), (e: unknown) => e instanceof UffdError && e.code === "EBADMSG");
      assert.throws(
        () => sendFd(a, -1),
        (e: unknown) => e instanceof UffdError && e.code === "EBADF" && e.source === "library",
      );
      assert.throws(
        () => sendFd(a, 0x7ffffff0),
        (e: unknown) => e instanceof UffdError && e.code === "EBADF" && e.source === "kernel",
      );
      libc.close(a);
      assert.throws(() => recvFd(b), (e: unknown) => e instanceof UffdError && e.code === "ECONNRESET");
    } finally {
      closeFds(b);
    }
  });
});

// ---- the C fixture ----

const FIXTURES = fileURLToPath(new URL("./fixtures/", import.meta.url));
const BUILD = join(FIXTURES, "build");
const BIN = join(BUILD, "uffd_sender");
const compiler = spawnSync("cc", ["--version"]).status === 0;
const NO_CC = "no C compiler (`cc`) on PATH: cannot build tests/fixtures/uffd_sender.c";

let built = false;
function build(): void {
  if (built) return;
  mkdirSync(BUILD, { recursive: true });
  const tmp = `${BIN}.${process.pid}.tmp`;
  const r = spawnSync("cc", ["-O1", "-Wall", "-Werror", "-o", tmp, join(FIXTURES, "uffd_sender.c")], {
    encoding: "utf8",
  });
  assert.equal(r.status, 0, `cc failed: ${r.stderr}`);
  renameSync(tmp, BIN); // atomic: a concurrent run (other runtime) never sees half a binary
  built = true;
}

const sockets: string[] = [];
after(() => {
  for (const p of sockets) rmSync(p, { force: true });
});

/** A listening AF_UNIX socket at a fresh path, through raw syscalls. */
function listenUnix(): { fd: number; path: string } {
  const path = join(tmpdir(), `uffd-fdpass-${process.pid}-${sockets.length}.sock`);
  rmSync(path, { force: true });
  sockets.push(path);
  const fd = libc.syscall(41, /* socket */ 1, /* AF_UNIX */ 1 | O_CLOEXEC, /* SOCK_STREAM|SOCK_CLOEXEC */ 0);
  assert.ok(fd >= 0, `socket: errno ${libc.errno()}`);
  const sa = new Uint8Array(110); // struct sockaddr_un
  sa[0] = 1; // sun_family = AF_UNIX
  sa.set(new TextEncoder().encode(path), 2);
  assert.equal(
    libc.syscall(49, /* bind */ fd, libc.addressOf(sa), sa.length),
    0,
    `bind: errno ${libc.errno()}`,
  );
  assert.equal(libc.syscall(50, /* listen */ fd, 1), 0, `listen: errno ${libc.errno()}`);
  return { fd, path };
}

interface Fixture {
  child: ChildProcess;
  out: () => string;
  exited: Promise<number | null>;
}

function runFixture(path: string, mode: string): Fixture {
  const child = spawn(BIN, [path, mode], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
  return { child, out: () => out, exited };
}

/** Accepts the fixture's connection and receives its uffd (bounded waits, never hangs). */
function acceptUffd(listenFd: number): { conn: number; fd: number } {
  assert.ok(pollIn(listenFd, 10000), "the fixture did not connect within 10 s");
  const conn = libc.syscall(288, /* accept4 */ listenFd, 0, 0, O_CLOEXEC);
  assert.ok(conn >= 0, `accept4: errno ${libc.errno()}`);
  assert.ok(pollIn(conn, 10000), "the fixture sent nothing within 10 s");
  return { conn, fd: recvFd(conn) };
}

describe("uffd from another process (C fixture)", () => {
  it(
    "receives the fixture's uffd, resolves its page fault with COPY, and the fixture prints the page",
    { skip: compiler ? false : NO_CC, timeout: 20000 },
    async () => {
      build();
      const l = listenUnix();
      const fx = runFixture(l.path, "touch");
      let conn = -1;
      let uffd: Userfaultfd | undefined;
      try {
        const r = acceptUffd(l.fd);
        conn = r.conn;
        // the fixture's memory is in its own address space: remote skips the local mapping checks
        uffd = Userfaultfd.fromFd(r.fd, 0, { remote: true });
        assert.equal(uffd.nonBlocking, true, "O_NONBLOCK read from the descriptor (the fixture set it)");
        const ev = uffd.readEvent({ timeout: 10000 });
        assert.ok(ev && ev.type === "pagefault", `no fault from the fixture: ${fx.out()}`);
        assert.equal(ev.kind, "missing");
        assert.equal(ev.address % pageSize, 0);
        const text = new TextEncoder().encode("hello from the TypeScript monitor\0");
        const page = new Uint8Array(pageSize);
        page.set(text);
        assert.equal(uffd.copy({ start: ev.address, len: pageSize, src: page }), pageSize);
        assert.equal(await within(fx.exited, 10000, "fixture exit"), 0, fx.out());
        assert.equal(fx.out(), "read: hello from the TypeScript monitor\n");
      } finally {
        uffd?.close(); // wakes the fixture if it is still blocked: it reads zeros and exits
        closeFds(conn, l.fd);
        await Promise.race([fx.exited, sleep(5000)]);
        if (fx.child.exitCode === null) fx.child.kill("SIGKILL");
      }
    },
  );

  it(
    "ESRCH: COPY and ZEROPAGE after the process that owns the memory has exited",
    { skip: compiler ? false : NO_CC, timeout: 20000 },
    async () => {
      build();
      const l = listenUnix();
      const fx = runFixture(l.path, "exit");
      let conn = -1;
      let uffd: Userfaultfd | undefined;
      try {
        const r = acceptUffd(l.fd);
        conn = r.conn;
        uffd = Userfaultfd.fromFd(r.fd, 0);
        assert.equal(await within(fx.exited, 10000, "fixture exit"), 0, fx.out());
        using here = Mapping.anonymous(pageSize); // any aligned range: the mm is gone first
        const u = uffd;
        for (
          const f of [
            () => u.copy({ start: here.start, len: pageSize, src: new Uint8Array(pageSize) }),
            () => u.zeropage({ start: here.start, len: pageSize }),
          ]
        ) {
          assert.throws(f, (e: unknown) => {
            assert.ok(e instanceof UffdError);
            assert.equal(e.code, "ESRCH");
            assert.equal(e.source, "kernel");
            assert.match(e.message, /exited/);
            return true;
          });
        }
      } finally {
        uffd?.close();
        closeFds(conn, l.fd);
        if (fx.child.exitCode === null) fx.child.kill("SIGKILL");
      }
    },
  );

  it(
    "UFFD_EVENT_FORK: the fork event carries the child's uffd, which resolves the child's fault",
    { skip: compiler ? false : NO_CC, timeout: 20000 },
    async () => {
      build();
      const l = listenUnix();
      const fx = runFixture(l.path, "fork");
      let conn = -1;
      let parent: Userfaultfd | undefined;
      let child: Userfaultfd | undefined;
      try {
        const r = acceptUffd(l.fd);
        conn = r.conn;
        parent = Userfaultfd.fromFd(r.fd, ["EVENT_FORK"]);
        const ev = parent.readEvent({ timeout: 10000 });
        assert.ok(ev && ev.type === "fork", `no fork event: ${JSON.stringify(ev)} ${fx.out()}`);
        // the kernel installed the child's uffd in this process (the reader), non-blocking like the parent's
        assert.ok(ev.ufd > 2);
        assert.ok(ev.uffd, "the fork event carries the child's descriptor as a Userfaultfd");
        assert.equal(ev.uffd.fd, ev.ufd);
        assert.equal(ev.uffd.nonBlocking, true);
        assert.deepEqual(ev.uffd.features, ["EVENT_FORK"]);
        child = ev.uffd; // owns the child's descriptor; remote: the child is another process
        const pf = child.readEvent({ timeout: 10000 });
        assert.ok(pf && pf.type === "pagefault", `no fault from the fixture's child: ${fx.out()}`);
        const page = new Uint8Array(pageSize);
        page.set(new TextEncoder().encode("served through the fork event\0"));
        assert.equal(child.copy({ start: pf.address, len: pageSize, src: page }), pageSize);
        assert.equal(await within(fx.exited, 10000, "fixture exit"), 0, fx.out());
        assert.equal(fx.out(), "read: served through the fork event (child)\nchild exited 0\n");
      } finally {
        child?.close();
        parent?.close();
        closeFds(conn, l.fd);
        await Promise.race([fx.exited, sleep(5000)]);
        if (fx.child.exitCode === null) fx.child.kill("SIGKILL");
      }
    },
  );
});
