// A userfaultfd's life beyond single ioctls: what closing the last descriptor does to blocked
// faulters and to the range, close-on-exec across execve(2), UNMAP events from implicit unmaps
// (mremap shrinking, mmap MAP_FIXED), a blocking read(2) through the library, readiness through
// select(2) and epoll(7) (the library itself polls), and the error
// cases errors.test.ts leaves to other mechanisms (CONTINUE ESRCH, MOVE EINVAL on shmem,
// UFFDIO_API EPERM for EVENT_FORK). Faults come from Workers or child processes; the test
// thread only serves them.
//
// Not repeated here: EVENT_REMAP from mremap (ops.test.ts, "EVENT_REMAP: ..."), whose grow
// moves the range; the shrink below is in place and raises UNMAP only.
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { libc } from "../ffi/mod.ts";
import { ERRNO, ioctl, Mapping, pageSize, rawIoctl, UffdError, Userfaultfd } from "../mod.ts";
import { Toucher, within } from "./helpers/toucher.ts";
import { runChild } from "./helpers/child.ts";
import { nextEvent, sleep, until, untilPending, waiters } from "./helpers/uffd_wait.ts";
import { cleanupSenders, compiler, NO_CC, startSender } from "./helpers/sender.ts";
import { LifecycleWorker, settle } from "./helpers/lifecycle_calls.ts";
import { peekByte } from "./helpers/peek.ts";

const T = { timeout: 20000 };
const PROT_RW = 3;
const MAP_PRIVATE_ANON = 0x22;
const MAP_FIXED = 0x10;
const F_DUPFD_CLOEXEC = 1030;
const O_CLOEXEC = 0o2000000;
const UFFD_LINK = "anon_inode:[userfaultfd]";

/** Asserts `f` throws a UffdError with errno `code` from `source`; returns it. */
function throwsCode(f: () => unknown, code: string, source: "kernel" | "library"): UffdError {
  let err: UffdError | undefined;
  assert.throws(f, (e: unknown) => {
    assert.ok(e instanceof UffdError, `expected UffdError, got ${e}`);
    assert.equal(e.code, code, e.message);
    assert.equal(e.source, source, e.message);
    err = e;
    return true;
  });
  return err!;
}

describe("closing the last descriptor", () => {
  it(
    "wakes a faulter blocked on an unread fault (it reads a zero page) and leaves the range ordinary memory",
    T,
    async () => {
      const uffd = Userfaultfd.open({ nonBlocking: true });
      const mem = Mapping.anonymous(4 * pageSize);
      const blocked = new Toucher();
      const later = new Toucher(); // its own thread: a still-blocked `blocked` cannot delay it
      const touches: Promise<unknown>[] = [];
      let dup = -1;
      try {
        uffd.register(mem);
        assert.equal(
          uffd.copy({ start: mem.start, len: pageSize, src: new Uint8Array(pageSize).fill(0x5a) }),
          pageSize,
        );
        // a second descriptor of the same userfaultfd: closing it is not closing the last one
        dup = libc.syscall(72, uffd.fd, F_DUPFD_CLOEXEC, 0);
        assert.ok(dup >= 0, `fcntl(F_DUPFD_CLOEXEC): errno ${libc.errno()}`);

        let released = false;
        const touched = blocked.read(mem.page(1)).then((r) => {
          released = true;
          return r;
        });
        touches.push(touched);
        await untilPending(uffd.fd, 1); // queued, and never read
        libc.close(dup);
        dup = -1;
        await sleep(100);
        assert.equal(released, false, "closing one of two descriptors released the faulter");
        assert.deepEqual(waiters(uffd.fd), { pending: 1, total: 1 }, "the unread fault is still queued");

        uffd.close(); // the last descriptor: the unread event is dropped, the faulter woken
        assert.deepEqual(await within(touched, 5000, "the blocked faulter after close"), {
          first: 0,
          sum: 0,
        });

        // nothing serves the range any more: untouched pages fault as ordinary memory (no block),
        // the page placed before close keeps its contents
        const all = later.read(mem.start, 4 * pageSize);
        touches.push(all);
        assert.deepEqual(await within(all, 5000, "touching the region after close"), {
          first: 0x5a,
          sum: 0x5a,
        });

        // the range is no longer registered: another userfaultfd may take it (EBUSY otherwise)
        using other = Userfaultfd.open();
        assert.ok(other.register(mem).ioctls.includes("COPY"));
        other.unregister(mem);
      } finally {
        if (dup >= 0) libc.close(dup);
        uffd.close();
        await settle(touches);
        blocked.close();
        later.close();
        mem.close();
      }
    },
  );
});

describe("close-on-exec", () => {
  it(
    "across execve(2) the default (closeOnExec) descriptor is closed, a closeOnExec: false one is inherited (child process)",
    { timeout: 30000 },
    (t) => {
      // the child opens both and execs sh in place (raw execve, not the runtime's spawn)
      const r = runChild(fileURLToPath(new URL("./children/lifecycle_exec.ts", import.meta.url)), [], 20000);
      assert.equal(r.status, 0, `child ended with ${r.status}/${r.signal}: ${r.stdout}${r.stderr}`);
      const line = (what: string) => r.stdout.match(new RegExp(`^${what} (\\d+) (.*)$`, "m"));
      assert.match(r.stdout, /^pid same$/m, `sh is not the exec'd child itself: ${r.stdout}${r.stderr}`);
      const cloexec = line("cloexec");
      const inherited = line("inherited");
      assert.ok(cloexec && inherited, `unexpected output: ${r.stdout}${r.stderr}`);
      assert.notEqual(cloexec[1], inherited[1]);
      if (inherited[2] !== UFFD_LINK) {
        const reason = `the closeOnExec: false control (fd ${inherited[1]}) is missing after exec too ` +
          `(readlink: "${inherited[2]}"): something closes every descriptor on exec, so the ` +
          "child cannot tell close-on-exec apart";
        console.log(`skip close-on-exec across exec: ${reason}`);
        t.skip(reason);
        return;
      }
      // absent (or reused by sh for something else): not the userfaultfd any more
      assert.notEqual(cloexec[2], UFFD_LINK, `fd ${cloexec[1]} (O_CLOEXEC) survived exec`);
    },
  );
});

describe("UFFD_EVENT_UNMAP from implicit unmaps", () => {
  it("mremap shrinking a registered range in place reports the cut tail as unmap (no remap)", T, async () => {
    const uffd = Userfaultfd.open({ features: ["EVENT_UNMAP", "EVENT_REMAP"], nonBlocking: true });
    const w = new LifecycleWorker();
    const calls: Promise<unknown>[] = [];
    const len = 4 * pageSize;
    const addr = libc.mmap(0, len, PROT_RW, MAP_PRIVATE_ANON, -1, 0);
    let mapped = addr === -1 ? 0 : len;
    try {
      assert.ok(addr > 0, `mmap: errno ${libc.errno()}`);
      using mem = Mapping.adopt(addr, len); // adopted: close() does not unmap
      uffd.register(mem);
      // the mremap returns only once the event has been read
      const shrunk = w.mremap(addr, len, 2 * pageSize, 0);
      calls.push(shrunk);
      assert.deepEqual(nextEvent(uffd), { type: "unmap", start: addr + 2 * pageSize, end: addr + len });
      assert.deepEqual(await within(shrunk, 10000, "mremap"), { ret: addr, errno: 0 });
      mapped = 2 * pageSize;
      assert.equal(uffd.readEvent({ timeout: 100 }), undefined, "an in-place shrink raises no remap event");
      // the part kept is still registered
      assert.equal(uffd.zeropage({ start: addr, len: 2 * pageSize }), 2 * pageSize);
    } finally {
      uffd.close(); // before munmap: with EVENT_UNMAP open, munmap would wait for a reader
      await settle(calls);
      w.close();
      if (mapped > 0) libc.munmap(addr, mapped);
    }
  });

  it(
    "mmap MAP_FIXED over part of a registered range reports that part as unmap; it is not registered after",
    T,
    async () => {
      const uffd = Userfaultfd.open({ features: ["EVENT_UNMAP"], nonBlocking: true });
      const w = new LifecycleWorker();
      const calls: Promise<unknown>[] = [];
      const len = 4 * pageSize;
      const addr = libc.mmap(0, len, PROT_RW, MAP_PRIVATE_ANON, -1, 0);
      try {
        assert.ok(addr > 0, `mmap: errno ${libc.errno()}`);
        using mem = Mapping.adopt(addr, len);
        uffd.register(mem);
        const replaced = w.mmap(addr + pageSize, 2 * pageSize, PROT_RW, MAP_PRIVATE_ANON | MAP_FIXED);
        calls.push(replaced);
        assert.deepEqual(nextEvent(uffd), {
          type: "unmap",
          start: addr + pageSize,
          end: addr + 3 * pageSize,
        });
        assert.deepEqual(await within(replaced, 10000, "mmap MAP_FIXED"), { ret: addr + pageSize, errno: 0 });
        // the new mapping in the middle is not registered: mapped, not registered is ENOENT
        throwsCode(() => uffd.zeropage({ start: addr + pageSize, len: pageSize }), "ENOENT", "kernel");
        // both ends still are
        assert.equal(uffd.zeropage({ start: addr, len: pageSize }), pageSize);
        assert.equal(uffd.zeropage({ start: addr + 3 * pageSize, len: pageSize }), pageSize);
        assert.equal(uffd.readEvent({ timeout: 0 }), undefined);
      } finally {
        uffd.close();
        await settle(calls);
        w.close();
        if (addr > 0) libc.munmap(addr, len);
      }
    },
  );
});

describe("blocking read(2)", () => {
  it(
    "readEvent() and readEvents() on a { nonBlocking: false } descriptor wait for the fault (child process)",
    {
      timeout: 30000,
    },
    () => {
      const r = runChild(
        fileURLToPath(new URL("./children/lifecycle_blocking_read.ts", import.meta.url)),
        [],
        20000,
      );
      assert.equal(r.signal, null, `the child hung in read(2) and was killed: ${r.stdout}${r.stderr}`);
      assert.equal(r.status, 0, r.stderr);
      const out = JSON.parse(r.stdout.trim().split("\n").pop()!);
      const fault = { type: "pagefault", kind: "missing", waitedForFault: true };
      assert.deepEqual(out, {
        nonBlocking: false,
        first: { ...fault, offset: pageSize, value: 9 },
        second: { count: 1, ...fault, offset: 0, value: 4 },
      });
    },
  );
});

// ---- UFFDIO_CONTINUE ESRCH: the uffd of a process that has exited (tests/fixtures/uffd_sender.c) ----

after(cleanupSenders);

describe("UFFDIO_CONTINUE ESRCH", () => {
  it(
    "CONTINUE on the uffd of a process that has exited: ESRCH (the same check as COPY/ZEROPAGE)",
    { skip: compiler ? false : NO_CC, timeout: 20000 },
    async () => {
      const fx = startSender("exit");
      // its memory was another process's: remote, so the range is checked for alignment only
      using uffd = Userfaultfd.fromFd(fx.fd, 0, { remote: true });
      try {
        assert.equal(await within(fx.exited, 10000, "fixture exit"), 0, fx.out());
        const e = throwsCode(
          () => uffd.continue({ start: 0x10000 * pageSize, len: pageSize }),
          "ESRCH",
          "kernel",
        );
        assert.equal(e.op, "UFFDIO_CONTINUE");
        assert.match(e.message, /exited/);
      } finally {
        fx.close();
      }
    },
  );
});

describe("UFFDIO_MOVE from another process", () => {
  it(
    "a descriptor of another process cannot move its pages: EINVAL from the library and from the kernel (C fixture)",
    { skip: compiler ? false : NO_CC, timeout: 20000 },
    async () => {
      const fx = startSender("move");
      using uffd = Userfaultfd.fromFd(fx.fd, ["MOVE"], { remote: true });
      try {
        await until(() => /^addrs /m.test(fx.out()), "the fixture's addresses");
        const [, dst, src] = fx.out().match(/^addrs ([0-9a-f]+) ([0-9a-f]+)$/m)!.map((x) => parseInt(x, 16));
        const e = throwsCode(() => uffd.move({ start: dst, src, len: pageSize }), "EINVAL", "library");
        assert.match(e.message, /another process/);
        // the kernel's own answer to the same request (fs/userfaultfd.c: "Do not allow cross-mm moves")
        const mv = new BigUint64Array([BigInt(dst), BigInt(src), BigInt(pageSize), 0n, 0n]);
        const raw = rawIoctl(uffd.fd, ioctl.UFFDIO_MOVE, new Uint8Array(mv.buffer));
        assert.deepEqual([raw.result, raw.errno], [-1, ERRNO.EINVAL]);
        fx.closeConn(); // the fixture then prints its source page and exits
        assert.equal(await within(fx.exited, 10000, "fixture exit"), 0, fx.out());
        assert.match(fx.out(), /^src 42$/m, "the source page was not moved away");
      } finally {
        fx.close();
      }
    },
  );
});

describe("UFFDIO_MOVE on non-anonymous memory", () => {
  it(
    "EINVAL moving into a shmem range registered MISSING, and out of a shmem mapping; nothing moves",
    T,
    () => {
      using uffd = Userfaultfd.open({ features: ["MOVE", "MISSING_SHMEM"] });
      using shm = Mapping.memfd(pageSize);
      using shmSrc = Mapping.memfd(pageSize);
      using anon = Mapping.anonymous(pageSize);
      using anonDst = Mapping.anonymous(pageSize);
      anon.bytes().fill(5);
      shmSrc.bytes().fill(7);
      // the kernel lists MOVE among the range's ioctls, and refuses the move itself
      assert.ok(uffd.register(shm, { missing: true }).ioctls.includes("MOVE"));
      uffd.register(anonDst, { missing: true });
      const into = throwsCode(
        () => uffd.move({ start: shm.start, src: anon.start, len: pageSize }),
        "EINVAL",
        "kernel",
      );
      assert.deepEqual([into.result, into.done], [-22, 0]);
      const outOf = throwsCode(
        () => uffd.move({ start: anonDst.start, src: shmSrc.start, len: pageSize }),
        "EINVAL",
        "kernel",
      );
      assert.deepEqual([outOf.result, outOf.done], [-22, 0]);
      assert.equal(peekByte(shmSrc.start), 7, "the shmem source keeps its page");
      // the same move between anonymous ranges works: the memory type is what was refused
      assert.equal(uffd.move({ start: anonDst.start, src: anon.start, len: pageSize }), pageSize);
      assert.equal(peekByte(anonDst.start + pageSize - 1), 5);
      // and the shmem destination never got a page
      uffd.unregister(shm);
      assert.equal(peekByte(shm.start), 0);
    },
  );
});

// ---- UFFDIO_API EPERM: EVENT_FORK without CAP_SYS_PTRACE ----

const EPERM_CHILD = fileURLToPath(new URL("./children/lifecycle_api_eperm.ts", import.meta.url));
const hasSetpriv = spawnSync("setpriv", ["--version"]).status === 0;

/** Runs the EPERM child, under setpriv without CAP_SYS_PTRACE when `dropPtrace`; its JSON line. */
function apiChild(dropPtrace: boolean): Record<string, unknown> {
  const argv = libc.scriptCommand(EPERM_CHILD);
  const [cmd, ...args] = dropPtrace
    ? ["setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace", ...argv]
    : argv;
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 20000, killSignal: "SIGKILL" });
  assert.equal(r.status, 0, `child failed (${r.signal}): ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split("\n").pop()!);
}

describe("UFFDIO_API EPERM", () => {
  it(
    "EVENT_FORK without CAP_SYS_PTRACE: EPERM from the kernel; the same descriptor then handshakes without it",
    { skip: hasSetpriv ? false : "setpriv(1) not installed: cannot drop CAP_SYS_PTRACE", timeout: 60000 },
    (t) => {
      const priv = apiChild(false);
      if (priv.ptrace !== true) {
        const reason = "this process has no CAP_SYS_PTRACE itself: no privileged control leg";
        console.log(`skip UFFDIO_API EPERM: ${reason}`);
        t.skip(reason);
        return;
      }
      // control: with CAP_SYS_PTRACE the same child enables EVENT_FORK
      assert.deepEqual(priv, { ptrace: true, open: { ok: true, features: ["EVENT_FORK"] }, raw: 0 });
      assert.deepEqual(apiChild(true), {
        ptrace: false,
        open: { ok: false, op: "UFFDIO_API", code: "EPERM", source: "kernel" },
        raw: 1,
        after: ["THREAD_ID"],
      });
    },
  );
});

// ---- readiness through select(2) and epoll(7) (the library itself uses poll(2)) ----

const NR_select = 23;
const NR_epoll_wait = 232;
const NR_epoll_ctl = 233;
const NR_epoll_create1 = 291;
const EPOLLIN = 1;
const EPOLLERR = 8;
const EPOLL_CTL_ADD = 1;

/** select(2) with a zero timeout on one descriptor: [readable, writable]. */
function selectNow(fd: number): [boolean, boolean] {
  const rd = new Uint8Array(128); // fd_set
  const wr = new Uint8Array(128);
  rd[fd >> 3] |= 1 << (fd & 7);
  wr[fd >> 3] |= 1 << (fd & 7);
  const tv = new BigInt64Array(2); // { tv_sec: 0, tv_usec: 0 }
  const n = libc.syscall(NR_select, fd + 1, libc.addressOf(rd), libc.addressOf(wr), 0, libc.addressOf(tv));
  assert.ok(n >= 0, `select: errno ${libc.errno()}`);
  return [(rd[fd >> 3] & (1 << (fd & 7))) !== 0, (wr[fd >> 3] & (1 << (fd & 7))) !== 0];
}

/** An epoll instance watching `fd` for EPOLLIN; `wait()` returns the events of one epoll_wait(0). */
function epollOn(fd: number): { wait(): number; close(): void } {
  const ep = libc.syscall(NR_epoll_create1, O_CLOEXEC);
  assert.ok(ep >= 0, `epoll_create1: errno ${libc.errno()}`);
  const ev = new Uint32Array(3); // struct epoll_event, packed on x86-64: u32 events, u64 data
  ev[0] = EPOLLIN;
  ev[1] = fd;
  assert.equal(
    libc.syscall(NR_epoll_ctl, ep, EPOLL_CTL_ADD, fd, libc.addressOf(ev)),
    0,
    `epoll_ctl: ${libc.errno()}`,
  );
  const out = new Uint32Array(3);
  return {
    wait: () => {
      out.fill(0);
      const n = libc.syscall(NR_epoll_wait, ep, libc.addressOf(out), 1, 0);
      assert.ok(n >= 0, `epoll_wait: errno ${libc.errno()}`);
      if (n === 1) assert.equal(out[1], fd, "the event names the userfaultfd");
      return n === 1 ? out[0] : 0;
    },
    close: () => libc.close(ep),
  };
}

describe("readiness: select(2) and epoll(7)", () => {
  it(
    "a non-blocking userfaultfd is readable in select and EPOLLIN in epoll exactly while a fault is queued",
    T,
    async () => {
      const uffd = Userfaultfd.open({ nonBlocking: true });
      const mem = Mapping.anonymous(pageSize);
      const toucher = new Toucher();
      const ep = epollOn(uffd.fd);
      const touches: Promise<unknown>[] = [];
      try {
        uffd.register(mem);
        assert.equal(ep.wait(), 0, "epoll: nothing before the fault");
        assert.deepEqual(selectNow(uffd.fd), [false, false], "select: neither readable nor writable before");
        const touched = toucher.read(mem.start);
        touches.push(touched);
        await untilPending(uffd, 1);
        assert.equal(ep.wait() & EPOLLIN, EPOLLIN, "epoll: EPOLLIN with a fault queued");
        assert.deepEqual(selectNow(uffd.fd), [true, false], "select: readable with a fault queued");
        assert.equal(nextEvent(uffd).type, "pagefault");
        assert.equal(ep.wait(), 0, "epoll: nothing once the fault was read");
        assert.deepEqual(selectNow(uffd.fd), [false, false], "select: not readable once it was read");
        uffd.zeropage(mem);
        assert.deepEqual(await within(touched, 5000, "the toucher"), { first: 0, sum: 0 });
      } finally {
        ep.close();
        uffd.close();
        await settle(touches);
        toucher.close();
        mem.close();
      }
    },
  );

  it("a blocking userfaultfd: select says readable and writable, epoll says EPOLLERR, with nothing queued (man page)", () => {
    using uffd = Userfaultfd.open({ nonBlocking: false });
    const ep = epollOn(uffd.fd);
    try {
      assert.deepEqual(selectNow(uffd.fd), [true, true]);
      assert.equal(ep.wait() & EPOLLERR, EPOLLERR);
      assert.equal(waiters(uffd).pending, 0, "and nothing is queued");
    } finally {
      ep.close();
    }
  });
});
