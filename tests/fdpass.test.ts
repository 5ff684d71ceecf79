// Passing a userfaultfd over a Unix socket (SCM_RIGHTS): within the process, and from a C
// process that registers its own memory and lets this process resolve its page faults.
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
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
import { cleanupSenders, compiler, NO_CC, startSender } from "./helpers/sender.ts";

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const fdFlags = (fd: number) =>
  parseInt(readTextFile(`/proc/self/fdinfo/${fd}`)?.match(/^flags:\s+([0-7]+)/m)?.[1] ?? "-1", 8);
const O_CLOEXEC = 0o2000000;

function closeFds(...fds: number[]): void {
  for (const fd of fds) if (fd >= 0) libc.close(fd);
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

// ---- the C fixture (tests/fixtures/uffd_sender.c, started by tests/helpers/sender.ts) ----

after(cleanupSenders);

describe("uffd from another process (C fixture)", () => {
  it(
    "receives the fixture's uffd, resolves its page fault with COPY, and the fixture prints the page",
    { skip: compiler ? false : NO_CC, timeout: 20000 },
    async () => {
      const fx = startSender("touch");
      let uffd: Userfaultfd | undefined;
      try {
        // the fixture's memory is in its own address space: remote skips the local mapping checks
        uffd = Userfaultfd.fromFd(fx.fd, 0, { remote: true });
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
        await Promise.race([fx.exited, sleep(5000)]);
        fx.close();
      }
    },
  );

  it(
    "ESRCH: COPY and ZEROPAGE after the process that owns the memory has exited",
    { skip: compiler ? false : NO_CC, timeout: 20000 },
    async () => {
      const fx = startSender("exit");
      let uffd: Userfaultfd | undefined;
      try {
        uffd = Userfaultfd.fromFd(fx.fd, 0);
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
        fx.close();
      }
    },
  );

  it(
    "UFFD_EVENT_FORK: the fork event carries the child's uffd, which resolves the child's fault",
    { skip: compiler ? false : NO_CC, timeout: 20000 },
    async () => {
      const fx = startSender("fork");
      let parent: Userfaultfd | undefined;
      let child: Userfaultfd | undefined;
      try {
        parent = Userfaultfd.fromFd(fx.fd, ["EVENT_FORK"]);
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
        await Promise.race([fx.exited, sleep(5000)]);
        fx.close();
      }
    },
  );
});
