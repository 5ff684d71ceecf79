// ioctl_userfaultfd(2): every range operation, its modes and its result field; reading events
// one at a time, in batches and as an async iterator; the feature bits that change events;
// dirty tracking with WP_ASYNC + PAGEMAP_SCAN. Faults come from Workers (Toucher, LibcWorker)
// or child processes; the test thread only serves them.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { libc } from "../ffi/mod.ts";
import {
  EventBuffer,
  freeHugePages,
  hugePageSize,
  ioctl,
  Mapping,
  PAGE_IS,
  type PagefaultEvent,
  PagemapScanner,
  pageSize,
  rawIoctl,
  UFFD_EVENT,
  UffdError,
  Userfaultfd,
} from "../mod.ts";
import { readTextFile } from "../src/memory.ts";
import { uffdio_copy } from "../src/structs.ts";
import { Toucher, within } from "./helpers/toucher.ts";
import { runChild } from "./helpers/child.ts";
import { nextEvent, sleep, untilPending, waiters } from "./helpers/uffd_wait.ts";
import { LibcWorker } from "./children/ops_libc.ts";
import { peekByte } from "./helpers/peek.ts";

const T = { timeout: 20000 };
/** poll(2) for POLLIN on a non-blocking uffd without reading. */
function readable(uffd: Userfaultfd, ms: number): boolean {
  const pfd = new Int32Array([uffd.fd, 1]);
  return libc.poll(pfd, 1, ms) === 1 && ((pfd[1] >>> 16) & 1) === 1;
}

function nextFault(uffd: Userfaultfd): PagefaultEvent {
  const ev = nextEvent(uffd);
  assert.equal(ev.type, "pagefault");
  return ev as PagefaultEvent;
}

/**
 * Owns everything a fault test creates and releases it in the only safe order, also on
 * failure: close the descriptors (blocked faulters wake and see ordinary memory), let the
 * touches finish, stop the Workers, and only then unmap.
 */
class Rig {
  readonly uffds: Userfaultfd[] = [];
  readonly maps: Mapping[] = [];
  readonly workers: { close(): void }[] = [];
  readonly #pending: Promise<unknown>[] = [];

  uffd(options: Parameters<typeof Userfaultfd.open>[0] = {}): Userfaultfd {
    const u = Userfaultfd.open({ nonBlocking: true, ...options });
    this.uffds.push(u);
    return u;
  }
  map<M extends Mapping>(m: M): M {
    this.maps.push(m);
    return m;
  }
  toucher(): Toucher {
    const t = new Toucher();
    this.workers.push(t);
    return t;
  }
  libcWorker(): LibcWorker {
    const w = new LibcWorker();
    this.workers.push(w);
    return w;
  }
  /** Tracks a Worker's promise and bounds how long a test may wait for it. */
  track<R>(p: Promise<R>): Promise<R> {
    this.#pending.push(p.catch(() => {}));
    return within(p, 10000, "worker");
  }
  async release(): Promise<void> {
    for (const u of this.uffds) u.close();
    await Promise.race([Promise.allSettled(this.#pending), sleep(5000)]);
    for (const w of this.workers) w.close();
    for (const m of this.maps) m.close();
  }
}

async function withRig(fn: (rig: Rig) => Promise<void> | void): Promise<void> {
  const rig = new Rig();
  try {
    await fn(rig);
  } finally {
    await rig.release();
  }
}

const pageOf = (byte: number) => new Uint8Array(pageSize).fill(byte);

describe("UFFDIO_REGISTER / UFFDIO_UNREGISTER", () => {
  it("reports the ioctls usable per memory type and mode", () => {
    using uffd = Userfaultfd.open({ features: ["MINOR_SHMEM", "WP_HUGETLBFS_SHMEM", "MOVE", "POISON"] });
    using anon = Mapping.anonymous(4 * pageSize);
    using shm = Mapping.memfd(4 * pageSize);
    const reg = (m: Mapping, o: Parameters<Userfaultfd["register"]>[1]) => {
      const r = uffd.register(m, o);
      uffd.unregister(m);
      return [...r.ioctls].sort();
    };
    const base = ["COPY", "MOVE", "POISON", "WAKE", "ZEROPAGE"];
    assert.deepEqual(reg(anon, {}), base);
    assert.deepEqual(reg(anon, { missing: true }), base);
    assert.deepEqual(reg(anon, { wp: true }), [...base, "WRITEPROTECT"].sort());
    assert.deepEqual(reg(anon, { missing: true, wp: true }), [...base, "WRITEPROTECT"].sort());
    assert.deepEqual(reg(shm, { missing: true }), base);
    assert.deepEqual(reg(shm, { minor: true }), [...base, "CONTINUE"].sort());
    assert.deepEqual(reg(shm, { wp: true }), [...base, "WRITEPROTECT"].sort());
    assert.deepEqual(
      reg(shm, { missing: true, wp: true, minor: true }),
      [...base, "CONTINUE", "WRITEPROTECT"].sort(),
    );
    // MINOR is not compatible with private anonymous memory
    assert.throws(
      () => uffd.register(anon, { minor: true }),
      (e: unknown) => e instanceof UffdError && e.code === "EINVAL",
    );
  });

  it(
    "hugetlb (MISSING_HUGETLBFS, MINOR_HUGETLBFS): no ZEROPAGE or MOVE, CONTINUE in minor mode",
    { skip: hugePageSize() && freeHugePages() >= 2 ? false : "fewer than 2 free huge pages" },
    () => {
      using uffd = Userfaultfd.open({ features: ["MISSING_HUGETLBFS", "MINOR_HUGETLBFS"] });
      using huge = Mapping.memfd(hugePageSize(), { hugetlb: true });
      const missing = uffd.register(huge, { missing: true });
      assert.ok(missing.ioctls.includes("COPY"));
      assert.ok(!missing.ioctls.includes("ZEROPAGE"));
      assert.ok(!missing.ioctls.includes("MOVE"));
      // a huge page is placed as one unit: COPY of a whole huge page
      const src = new Uint8Array(hugePageSize()).fill(3);
      assert.equal(uffd.copy({ start: huge.start, len: hugePageSize(), src }), hugePageSize());
      assert.equal(peekByte(huge.start + hugePageSize() - 1), 3);
      uffd.unregister(huge);
      const minor = uffd.register(huge, { minor: true });
      assert.ok(minor.ioctls.includes("CONTINUE"));
    },
  );

  it("a private memfd mapping (shmem-private) is copy-on-write: its COPY is not seen through the shared alias", () => {
    using uffd = Userfaultfd.open({ features: ["MISSING_SHMEM"] });
    using priv = Mapping.memfd(2 * pageSize, { private: true });
    using alias = priv.alias();
    assert.equal(priv.isPrivate, true);
    assert.equal(alias.isPrivate, false);
    alias.bytes()[pageSize] = 9; // page 1 of the memfd exists; page 0 does not
    const reg = uffd.register(priv, { missing: true });
    assert.ok(reg.ioctls.includes("COPY"));
    const src = new Uint8Array(pageSize).fill(7);
    assert.equal(uffd.copy({ start: priv.start, len: pageSize, src }), pageSize);
    assert.equal(peekByte(priv.start), 7);
    assert.equal(peekByte(alias.start), 0, "a COPY into a private mapping must not reach the memfd");
    assert.throws(() => Mapping.memfd(pageSize, { private: "yes" as unknown as boolean }), /private/);
  });

  it("unregister stops fault handling: COPY then fails with ENOENT, and the range can be registered again", () => {
    using uffd = Userfaultfd.open();
    using mem = Mapping.anonymous(2 * pageSize);
    uffd.register(mem);
    uffd.unregister(mem);
    // the descriptor knows the range is no longer registered: ENOENT before the syscall, as the kernel
    assert.throws(
      () => uffd.copy({ start: mem.start, len: pageSize, src: pageOf(1) }),
      (e: unknown) =>
        e instanceof UffdError && e.code === "ENOENT" && e.source === "library" &&
        /not registered with this userfaultfd/.test(e.message),
    );
    const raw = uffdio_copy().set("dst", mem.start).set("src", libc.addressOf(pageOf(1))).set(
      "len",
      pageSize,
    );
    assert.deepEqual(rawIoctl(uffd.fd, ioctl.UFFDIO_COPY, raw.bytes), { result: -1, errno: 2 });
    // after unregister, a touch is an ordinary fault (safe on this thread): a zero page
    assert.equal(peekByte(mem.start), 0);
    uffd.register(mem);
    assert.equal(uffd.copy({ start: mem.start + pageSize, len: pageSize, src: pageOf(2) }), pageSize);
    assert.equal(peekByte(mem.start + pageSize), 2);
  });
});

describe("resolving faults", () => {
  it("COPY resolves a missing fault and returns the bytes copied", T, () =>
    withRig(async (rig) => {
      const uffd = rig.uffd();
      const mem = rig.map(Mapping.anonymous(4 * pageSize));
      uffd.register(mem);
      const touched = rig.track(rig.toucher().read(mem.page(2)));
      const ev = nextFault(uffd);
      assert.equal(ev.kind, "missing");
      assert.equal(ev.write, false);
      assert.equal(ev.address, mem.page(2));
      assert.equal(uffd.copy({ start: ev.address, len: pageSize, src: pageOf(42) }), pageSize);
      assert.equal((await touched).first, 42);
    }));

  it("COPY dontwake leaves the faulter blocked until WAKE", T, () =>
    withRig(async (rig) => {
      const uffd = rig.uffd();
      const mem = rig.map(Mapping.anonymous(pageSize));
      uffd.register(mem);
      let done = false;
      const touched = rig.track(rig.toucher().read(mem.start)).then((r) => {
        done = true;
        return r;
      });
      nextFault(uffd);
      assert.deepEqual(waiters(uffd), { pending: 0, total: 1 });
      assert.equal(uffd.copy({ start: mem.start, len: pageSize, src: pageOf(7), dontwake: true }), pageSize);
      await sleep(50);
      assert.deepEqual(waiters(uffd), { pending: 0, total: 1 }, "still blocked after a DONTWAKE copy");
      assert.equal(done, false);
      uffd.wake(mem);
      assert.equal((await touched).first, 7);
      assert.equal(waiters(uffd).total, 0);
    }));

  it(
    "COPY wp maps the page write-protected: the next write is a WP fault, WRITEPROTECT(wp: false) resolves it",
    T,
    () =>
      withRig(async (rig) => {
        const uffd = rig.uffd();
        const mem = rig.map(Mapping.anonymous(pageSize));
        uffd.register(mem, { missing: true, wp: true });
        const t = rig.toucher();
        const read = rig.track(t.read(mem.start));
        nextFault(uffd);
        assert.equal(uffd.copy({ start: mem.start, len: pageSize, src: pageOf(5), wp: true }), pageSize);
        assert.equal((await read).first, 5);
        const write = rig.track(t.write(mem.start, 1, 9));
        const ev = nextFault(uffd);
        assert.equal(ev.kind, "wp");
        assert.equal(ev.write, true);
        uffd.writeprotect({ start: mem.start, len: pageSize, wp: false });
        await write;
        assert.equal(peekByte(mem.start), 9);
      }),
  );

  it("ZEROPAGE resolves a missing fault with zeros and returns the bytes", T, () =>
    withRig(async (rig) => {
      const uffd = rig.uffd();
      const mem = rig.map(Mapping.anonymous(2 * pageSize));
      uffd.register(mem);
      const touched = rig.track(rig.toucher().read(mem.start, 2 * pageSize));
      nextFault(uffd);
      assert.equal(uffd.zeropage({ start: mem.start, len: 2 * pageSize }), 2 * pageSize);
      assert.deepEqual(await touched, { first: 0, sum: 0 });
    }));

  it("ZEROPAGE dontwake + WAKE", T, () =>
    withRig(async (rig) => {
      const uffd = rig.uffd();
      const mem = rig.map(Mapping.anonymous(pageSize));
      uffd.register(mem);
      const touched = rig.track(rig.toucher().read(mem.start));
      nextFault(uffd);
      assert.equal(uffd.zeropage({ start: mem.start, len: pageSize, dontwake: true }), pageSize);
      assert.equal(waiters(uffd).total, 1);
      uffd.wake(mem);
      assert.equal((await touched).first, 0);
    }));

  it("WRITEPROTECT: protect, WP fault, unprotect with dontwake, then WAKE", T, () =>
    withRig(async (rig) => {
      const uffd = rig.uffd({ features: ["PAGEFAULT_FLAG_WP"] });
      const mem = rig.map(Mapping.anonymous(2 * pageSize));
      uffd.register(mem, { missing: true, wp: true });
      uffd.copy({ start: mem.start, len: 2 * pageSize, src: new Uint8Array(2 * pageSize).fill(1) });
      uffd.writeprotect({ start: mem.start, len: 2 * pageSize, wp: true });
      const write = rig.track(rig.toucher().write(mem.page(1), 1, 8));
      const ev = nextFault(uffd);
      assert.equal(ev.kind, "wp");
      assert.equal(ev.address, mem.page(1));
      assert.equal(ev.flags & 3, 3); // UFFD_PAGEFAULT_FLAG_WRITE | UFFD_PAGEFAULT_FLAG_WP
      uffd.writeprotect({ start: mem.page(1), len: pageSize, wp: false, dontwake: true });
      await sleep(50);
      assert.equal(waiters(uffd).total, 1, "DONTWAKE unprotect leaves the writer blocked");
      uffd.wake({ start: mem.page(1), len: pageSize });
      await write;
      assert.equal(peekByte(mem.start + pageSize), 8);
    }));

  it(
    "WP_UNPOPULATED: write-protecting unpopulated anonymous memory makes the first write a WP fault",
    T,
    () =>
      withRig(async (rig) => {
        const uffd = rig.uffd({ features: ["WP_UNPOPULATED"] });
        const mem = rig.map(Mapping.anonymous(pageSize));
        uffd.register(mem, { wp: true });
        uffd.writeprotect({ start: mem.start, len: pageSize, wp: true });
        const write = rig.track(rig.toucher().write(mem.start, 1, 4));
        const ev = nextFault(uffd);
        assert.equal(ev.kind, "wp");
        uffd.writeprotect({ start: mem.start, len: pageSize, wp: false });
        await write;
        assert.equal(peekByte(mem.start), 4);
      }),
  );

  it(
    "CONTINUE (MINOR_SHMEM): fill the page cache through an alias, then map it",
    T,
    () =>
      withRig(async (rig) => {
        const uffd = rig.uffd({ features: ["MINOR_SHMEM"] });
        const mem = rig.map(Mapping.memfd(2 * pageSize));
        const alias = rig.map(mem.alias());
        alias.bytes().fill(6, 0, 2 * pageSize); // page cache populated, mem has no PTEs yet
        uffd.register(mem, { minor: true });
        const touched = rig.track(rig.toucher().read(mem.page(1)));
        const ev = nextFault(uffd);
        assert.equal(ev.kind, "minor");
        assert.equal(ev.address, mem.page(1));
        alias.bytes()[pageSize] = 61; // modify in place before mapping it
        assert.equal(uffd.continue({ start: mem.page(1), len: pageSize }), pageSize);
        assert.equal((await touched).first, 61);
        // dontwake + wp on the other page
        const t2 = rig.track(rig.toucher().read(mem.start));
        nextFault(uffd);
        assert.equal(uffd.continue({ start: mem.start, len: pageSize, dontwake: true }), pageSize);
        assert.equal(waiters(uffd).total, 1);
        uffd.wake({ start: mem.start, len: pageSize });
        assert.equal((await t2).first, 6);
      }),
  );

  it(
    "CONTINUE wp maps the page write-protected: the next write is a WP fault",
    T,
    () =>
      withRig(async (rig) => {
        const uffd = rig.uffd({ features: ["MINOR_SHMEM", "WP_HUGETLBFS_SHMEM"] });
        const mem = rig.map(Mapping.memfd(pageSize));
        const alias = rig.map(mem.alias());
        alias.bytes()[0] = 21;
        uffd.register(mem, { minor: true, wp: true });
        const t = rig.toucher();
        const read = rig.track(t.read(mem.start));
        assert.equal(nextFault(uffd).kind, "minor");
        assert.equal(uffd.continue({ start: mem.start, len: pageSize, wp: true }), pageSize);
        assert.equal((await read).first, 21);
        const write = rig.track(t.write(mem.start, 1, 22));
        const ev = nextFault(uffd);
        assert.equal(ev.kind, "wp");
        uffd.writeprotect({ start: mem.start, len: pageSize, wp: false });
        await write;
        assert.equal(peekByte(alias.start), 22);
      }),
  );

  it(
    "MISSING_SHMEM: missing faults on a memfd mapping are resolved with COPY",
    T,
    () =>
      withRig(async (rig) => {
        const uffd = rig.uffd({ features: ["MISSING_SHMEM"] });
        const mem = rig.map(Mapping.memfd(pageSize));
        uffd.register(mem, { missing: true });
        const touched = rig.track(rig.toucher().read(mem.start));
        assert.equal(nextFault(uffd).kind, "missing");
        assert.equal(uffd.copy({ start: mem.start, len: pageSize, src: pageOf(12) }), pageSize);
        assert.equal((await touched).first, 12);
      }),
  );

  it("WP_HUGETLBFS_SHMEM: write protection on shmem", T, () =>
    withRig(async (rig) => {
      const uffd = rig.uffd({ features: ["WP_HUGETLBFS_SHMEM"] });
      const mem = rig.map(Mapping.memfd(pageSize));
      mem.bytes()[0] = 1; // populate before registering
      uffd.register(mem, { wp: true });
      uffd.writeprotect({ start: mem.start, len: pageSize, wp: true });
      const write = rig.track(rig.toucher().write(mem.start, 1, 2));
      assert.equal(nextFault(uffd).kind, "wp");
      uffd.writeprotect({ start: mem.start, len: pageSize, wp: false });
      await write;
      assert.equal(peekByte(mem.start), 2);
    }));

  it("MOVE remaps pages (anon) and returns the bytes moved; the source becomes empty", () => {
    using uffd = Userfaultfd.open({ features: ["MOVE"] });
    using src = Mapping.anonymous(2 * pageSize);
    using dst = Mapping.anonymous(2 * pageSize);
    src.bytes().fill(3);
    uffd.register(dst);
    assert.equal(uffd.move({ start: dst.start, src: src.start, len: 2 * pageSize }), 2 * pageSize);
    assert.equal(peekByte(dst.start), 3);
    assert.equal(peekByte(dst.start + 2 * pageSize - 1), 3);
    assert.equal(
      peekByte(src.start),
      0,
      "the source pages are gone (src is not registered: fresh zero page)",
    );
  });

  it("MOVE allowSrcHoles skips unpopulated source pages; without it a hole stops the move (partial, EAGAIN)", () => {
    using uffd = Userfaultfd.open({ features: ["MOVE"] });
    using src = Mapping.anonymous(2 * pageSize);
    using dst = Mapping.anonymous(2 * pageSize);
    src.bytes()[0] = 9; // page 0 populated, page 1 a hole
    uffd.register(dst);
    assert.throws(() => uffd.move({ start: dst.start, src: src.start, len: 2 * pageSize }), (e: unknown) => {
      assert.ok(e instanceof UffdError);
      assert.equal(e.code, "EAGAIN");
      assert.equal(e.result, pageSize); // the populated page moved, the hole stopped it
      assert.equal(e.done, pageSize);
      return true;
    });
    assert.equal(
      uffd.move({ start: dst.page(1), src: src.page(1), len: pageSize, allowSrcHoles: true }),
      pageSize,
    );
    assert.equal(peekByte(dst.start), 9);
  });

  it("MOVE dontwake resolves a fault without waking until WAKE", T, () =>
    withRig(async (rig) => {
      const uffd = rig.uffd({ features: ["MOVE"] });
      const src = rig.map(Mapping.anonymous(pageSize));
      const dst = rig.map(Mapping.anonymous(pageSize));
      src.bytes().fill(77);
      uffd.register(dst);
      const touched = rig.track(rig.toucher().read(dst.start));
      nextFault(uffd);
      assert.equal(uffd.move({ start: dst.start, src: src.start, len: pageSize, dontwake: true }), pageSize);
      assert.equal(waiters(uffd).total, 1);
      uffd.wake(dst);
      assert.equal((await touched).first, 77);
    }));

  it("POISON marks pages; a touch raises SIGBUS (child process)", { timeout: 30000 }, () => {
    const r = runChild(fileURLToPath(new URL("./children/ops_poison.ts", import.meta.url)), ["direct"]);
    assert.equal(r.stdout, `poisoned ${pageSize}\nclean page 0\n`, r.stderr);
    assert.equal(r.signal, "SIGBUS", `child ended with ${r.status}/${r.signal}: ${r.stderr}`);
  });

  it("POISON dontwake resolves a fault without waking; WAKE then delivers SIGBUS (child process)", {
    timeout: 30000,
  }, () => {
    const r = runChild(fileURLToPath(new URL("./children/ops_poison.ts", import.meta.url)), ["fault"]);
    assert.equal(r.stdout, `poisoned ${pageSize}\nblocked 1\n`, r.stderr);
    assert.equal(r.signal, "SIGBUS", `child ended with ${r.status}/${r.signal}: ${r.stderr}`);
  });

  it(
    "SIGBUS feature: a missing fault raises SIGBUS instead of an event (child process)",
    { timeout: 30000 },
    () => {
      const r = runChild(fileURLToPath(new URL("./children/sigbus.ts", import.meta.url)));
      assert.match(r.stdout, /touching/);
      assert.doesNotMatch(r.stdout, /survived/);
      assert.equal(r.signal, "SIGBUS", `child ended with ${r.status}/${r.signal}: ${r.stderr}`);
    },
  );
});

describe("results and partial progress", () => {
  it("EEXIST on a second COPY: result is -EEXIST, nothing done, WAKE still possible", () => {
    using uffd = Userfaultfd.open();
    using mem = Mapping.anonymous(pageSize);
    uffd.register(mem);
    assert.equal(uffd.copy({ start: mem.start, len: pageSize, src: pageOf(1) }), pageSize);
    assert.throws(() => uffd.copy({ start: mem.start, len: pageSize, src: pageOf(2) }), (e: unknown) => {
      assert.ok(e instanceof UffdError);
      assert.equal(e.code, "EEXIST");
      assert.equal(e.op, "UFFDIO_COPY");
      assert.equal(e.result, -17);
      assert.equal(e.done, 0);
      assert.equal(e.source, "kernel");
      assert.match(e.message, /wake/);
      return true;
    });
    assert.equal(peekByte(mem.start), 1, "the first copy stays");
    uffd.wake(mem);
    assert.throws(
      () => uffd.zeropage({ start: mem.start, len: pageSize }),
      (e: unknown) => e instanceof UffdError && e.code === "EEXIST" && e.result === -17,
    );
  });

  it("a partial COPY reports the bytes done in the signed result field and fails with EAGAIN", () => {
    using uffd = Userfaultfd.open();
    using mem = Mapping.anonymous(3 * pageSize);
    uffd.register(mem);
    uffd.zeropage({ start: mem.page(1), len: pageSize }); // page 1 already present
    assert.throws(
      () => uffd.copy({ start: mem.start, len: 3 * pageSize, src: new Uint8Array(3 * pageSize).fill(4) }),
      (e: unknown) => {
        assert.ok(e instanceof UffdError);
        assert.equal(e.code, "EAGAIN");
        assert.equal(e.result, pageSize);
        assert.equal(e.done, pageSize);
        return true;
      },
    );
    assert.equal(peekByte(mem.start), 4);
    // retry the remainder past the present page
    assert.equal(uffd.copy({ start: mem.page(2), len: pageSize, src: pageOf(4) }), pageSize);
    assert.equal(peekByte(mem.start + 2 * pageSize), 4);
  });
});

describe("reading events", () => {
  it(
    "readEvents reads a batch of faults from several Workers with one read()",
    T,
    () =>
      withRig(async (rig) => {
        const uffd = rig.uffd();
        const mem = rig.map(Mapping.anonymous(4 * pageSize));
        uffd.register(mem);
        const touches = [0, 1, 2].map((i) => rig.track(rig.toucher().read(mem.page(i))));
        await untilPending(uffd, 3);
        const buf = new EventBuffer(8);
        assert.equal(uffd.readEvents(buf), 3);
        assert.equal(buf.count, 3);
        const addrs = buf.events().map((e) => (e as PagefaultEvent).address).sort((a, b) => a - b);
        assert.deepEqual(addrs, [mem.page(0), mem.page(1), mem.page(2)]);
        // The allocation-free accessors read the same fields as the decoded events.
        for (let i = 0; i < 3; i++) {
          const ev = buf.event(i) as PagefaultEvent;
          assert.equal(buf.code(i), UFFD_EVENT.PAGEFAULT);
          assert.equal(buf.pagefaultAddress(i), ev.address);
          assert.equal(buf.pagefaultFlags(i), ev.flags);
          assert.equal(buf.pagefaultPtid(i), 0, "no THREAD_ID feature");
        }
        assert.equal(uffd.readEvents(buf), 0, "non-blocking: nothing left");
        for (const [i, a] of addrs.entries()) uffd.copy({ start: a, len: pageSize, src: pageOf(10 + i) });
        assert.deepEqual((await Promise.all(touches)).map((r) => r.first), [10, 11, 12]);
      }),
  );

  it("readEvent with a timeout returns undefined when nothing is pending", () => {
    using uffd = Userfaultfd.open({ nonBlocking: true });
    const t0 = Date.now();
    assert.equal(uffd.readEvent({ timeout: 50 }), undefined);
    assert.ok(Date.now() - t0 >= 40);
  });

  it(
    "events() does not block the event loop while it waits, yields faults, and ends on abort",
    T,
    () =>
      withRig(async (rig) => {
        const uffd = rig.uffd();
        const mem = rig.map(Mapping.anonymous(2 * pageSize));
        uffd.register(mem);
        const ac = new AbortController();
        let ticks = 0;
        const timer = setInterval(() => ticks++, 5);
        const seen: number[] = [];
        const t = rig.toucher();
        try {
          const loop = (async () => {
            for await (const ev of uffd.events({ signal: ac.signal })) {
              assert.equal(ev.type, "pagefault");
              seen.push(ticks);
              const a = (ev as PagefaultEvent).address;
              uffd.copy({ start: a, len: pageSize, src: pageOf(a === mem.start ? 1 : 2) });
            }
            return "ended";
          })();
          await sleep(100); // the iterator is waiting: timers keep firing
          assert.ok(ticks >= 5, `only ${ticks} timer ticks while events() waited`);
          assert.equal((await rig.track(t.read(mem.start))).first, 1);
          assert.equal((await rig.track(t.read(mem.page(1)))).first, 2);
          assert.equal(seen.length, 2);
          ac.abort();
          assert.equal(await within(loop, 5000, "events() after abort"), "ended");
        } finally {
          clearInterval(timer);
        }
      }),
  );

  it("events() ends when the descriptor is closed", T, async () => {
    const uffd = Userfaultfd.open({ nonBlocking: true });
    try {
      const loop = (async () => {
        let n = 0;
        for await (const _ of uffd.events()) n++;
        return n;
      })();
      await sleep(50);
      uffd.close();
      assert.equal(await within(loop, 5000, "events() after close"), 0);
    } finally {
      uffd.close();
    }
  });

  it("events() and timeouts on a blocking descriptor fail fast instead of hanging (child process)", T, () => {
    const r = runChild(
      fileURLToPath(new URL("./children/ops_blocking_timeout.ts", import.meta.url)),
      [],
      15000,
    );
    assert.equal(r.signal, null, `the child hung and was killed: ${r.stdout}${r.stderr}`);
    assert.equal(r.stdout, "readEvent: EINVAL/library\nevents: EINVAL/library\n", r.stderr);
  });

  it("THREAD_ID reports the faulting thread's id (not the reader's)", T, () =>
    withRig(async (rig) => {
      const uffd = rig.uffd({ features: ["THREAD_ID"] });
      const mem = rig.map(Mapping.anonymous(pageSize));
      uffd.register(mem);
      const touched = rig.track(rig.toucher().write(mem.start + 100, 1));
      const buf = new EventBuffer(4);
      assert.equal(uffd.readEvents(buf, { timeout: 5000 }), 1);
      const ev = buf.event(0) as PagefaultEvent;
      const self = libc.syscall(186); // gettid
      assert.ok(ev.threadId > 0);
      assert.equal(buf.pagefaultPtid(0), ev.threadId);
      assert.equal(buf.pagefaultFlags(0), ev.flags);
      assert.equal(buf.pagefaultFlags(0) & 1, 1, "UFFD_PAGEFAULT_FLAG_WRITE: a write fault");
      assert.equal(buf.pagefaultAddress(0), mem.start, "page-aligned without EXACT_ADDRESS");
      assert.notEqual(ev.threadId, self);
      // the thread belongs to this process
      assert.ok(readTextFile(`/proc/self/task/${ev.threadId}/stat`) !== undefined);
      uffd.zeropage(mem);
      await touched;
    }));

  it("without THREAD_ID the thread id is 0", T, () =>
    withRig(async (rig) => {
      const uffd = rig.uffd();
      const mem = rig.map(Mapping.anonymous(pageSize));
      uffd.register(mem);
      const touched = rig.track(rig.toucher().read(mem.start));
      assert.equal(nextFault(uffd).threadId, 0);
      uffd.zeropage(mem);
      await touched;
    }));

  it(
    "EXACT_ADDRESS reports the unaligned faulting address; without it the address is page-aligned",
    T,
    () =>
      withRig(async (rig) => {
        const exact = rig.uffd({ features: ["EXACT_ADDRESS"] });
        const plain = rig.uffd();
        const a = rig.map(Mapping.anonymous(pageSize));
        const b = rig.map(Mapping.anonymous(pageSize));
        exact.register(a);
        plain.register(b);
        const t = rig.toucher();
        const ta = rig.track(t.read(a.start + 123));
        assert.equal(nextFault(exact).address, a.start + 123);
        exact.zeropage(a);
        await ta;
        const tb = rig.track(t.read(b.start + 123));
        assert.equal(nextFault(plain).address, b.start);
        plain.zeropage(b);
        await tb;
      }),
  );

  it(
    "EVENT_REMOVE: madvise(DONTNEED) is reported; resolving ioctls get EAGAIN until it is read",
    T,
    () =>
      withRig(async (rig) => {
        const uffd = rig.uffd({ features: ["EVENT_REMOVE"] });
        const mem = rig.map(Mapping.anonymous(2 * pageSize));
        uffd.register(mem);
        uffd.zeropage({ start: mem.start, len: pageSize });
        // the madvise blocks in the Worker until the event is read
        const advised = rig.track(rig.libcWorker().madvise(mem.start, pageSize, 4 /* MADV_DONTNEED */));
        assert.ok(readable(uffd, 10000), "no REMOVE event queued");
        // queued, not read: the address space is changing, so resolving ioctls ask to retry
        assert.throws(() => uffd.zeropage({ start: mem.page(1), len: pageSize }), (e: unknown) => {
          assert.ok(e instanceof UffdError);
          assert.equal(e.code, "EAGAIN");
          assert.equal(e.result, -11);
          assert.equal(e.done, 0);
          return true;
        });
        const ev = nextEvent(uffd);
        assert.deepEqual(ev, { type: "remove", start: mem.start, end: mem.start + pageSize });
        assert.deepEqual(await advised, { ret: 0, errno: 0 });
        assert.equal(uffd.zeropage({ start: mem.page(1), len: pageSize }), pageSize, "the retry succeeds");
      }),
  );

  it(
    "EVENT_REMAP: mremap of a registered range is reported with from, to, len",
    T,
    () =>
      withRig(async (rig) => {
        const uffd = rig.uffd({ features: ["EVENT_REMAP"] });
        const len = 2 * pageSize;
        const addr = libc.mmap(0, len, 3, 0x22, -1, 0);
        assert.ok(addr > 0);
        let moved = 0;
        try {
          const mem = rig.map(Mapping.adopt(addr, len));
          uffd.register(mem);
          // the mremap returns only once the event has been read
          const remapped = rig.track(rig.libcWorker().mremap(addr, len, 2 * len, 1 /* MREMAP_MAYMOVE */));
          const ev = nextEvent(uffd);
          const r = await remapped;
          assert.equal(r.errno, 0);
          moved = r.ret;
          assert.equal(ev.type, "remap");
          if (ev.type === "remap") {
            assert.equal(ev.from, addr);
            assert.equal(ev.len, len);
            assert.equal(ev.to, moved);
          }
        } finally {
          uffd.close();
          if (moved > 0 && moved !== addr) libc.munmap(moved, 2 * len);
          else libc.munmap(addr, len);
        }
      }),
  );

  it("EVENT_UNMAP: munmap of a registered range is reported", T, () =>
    withRig(async (rig) => {
      const uffd = rig.uffd({ features: ["EVENT_UNMAP"] });
      const len = 2 * pageSize;
      const addr = libc.mmap(0, len, 3, 0x22, -1, 0);
      assert.ok(addr > 0);
      const mem = rig.map(Mapping.adopt(addr, len)); // adopted: close() does not unmap
      uffd.register(mem);
      const unmapped = rig.track(rig.libcWorker().munmap(addr, len));
      const ev = nextEvent(uffd);
      assert.deepEqual(ev, { type: "unmap", start: addr, end: addr + len });
      assert.deepEqual(await unmapped, { ret: 0, errno: 0 });
    }));
});

describe("dirty tracking: WP_ASYNC + PAGEMAP_SCAN", () => {
  it(
    "scan finds the written pages, reprotects them, and a second scan is empty",
    T,
    () =>
      withRig(async (rig) => {
        const uffd = rig.uffd({ features: ["WP_ASYNC", "WP_UNPOPULATED"] });
        const mem = rig.map(Mapping.anonymous(8 * pageSize));
        uffd.register(mem, { wp: true });
        uffd.writeprotect({ start: mem.start, len: mem.len, wp: true });
        using scan = new PagemapScanner();
        assert.deepEqual(scan.scan(mem, { reprotect: true, checkWpAsync: true }), []);
        const t = rig.toucher();
        // WP_ASYNC: the kernel resolves write-protect faults itself, no event is raised
        await rig.track(t.write(mem.page(1), 1, 1));
        await rig.track(t.write(mem.page(5), 2 * pageSize, 1));
        assert.equal(waiters(uffd).total, 0);
        const written = scan.scan(mem, { reprotect: true });
        assert.deepEqual(
          written.map((r) => [r.start, r.end]),
          [[mem.page(1), mem.page(2)], [mem.page(5), mem.page(7)]],
        );
        assert.ok(written.every((r) => (r.categories & PAGE_IS.WRITTEN) !== 0));
        assert.deepEqual(scan.scan(mem), [], "reprotected: nothing written since");
        await rig.track(t.write(mem.page(5), 1, 2));
        assert.deepEqual(scan.scan(mem).map((r) => [r.start, r.end]), [[mem.page(5), mem.page(6)]]);
        assert.equal(peekByte(mem.start + 5 * pageSize), 2);
        assert.equal(uffd.readEvent({ timeout: 0 }), undefined, "no events under WP_ASYNC");
      }),
  );
});

describe("trackWrites(): the dirty-tracking recipe in one call", () => {
  /** The page indices a scan reports, in order. */
  const pagesOf = (regions: { start: number; end: number }[], base: number): number[] =>
    regions.flatMap((r) =>
      Array.from({ length: (r.end - r.start) / pageSize }, (_, i) => (r.start - base) / pageSize + i)
    );

  it(
    "16384 pages: 0 written before any write, exactly the 1000 pages written, 0 again after reprotect",
    { timeout: 60000 },
    () =>
      withRig(async (rig) => {
        const uffd = rig.uffd({ features: ["WP_ASYNC"] });
        const n = 16384;
        const mem = rig.map(Mapping.anonymous(n * pageSize));
        const reg = uffd.trackWrites(mem);
        assert.ok(reg.ioctls.includes("WRITEPROTECT"));
        using scan = new PagemapScanner();
        assert.deepEqual(pagesOf(scan.scan(mem, { reprotect: true }), mem.start), [], "nothing written yet");
        const pages = new Set<number>();
        let seed = 12345;
        while (pages.size < 1000) {
          seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; // a 32-bit LCG: random, repeatable
          pages.add((seed >>> 8) % n);
        }
        const t = rig.toucher();
        for (const p of pages) await rig.track(t.write(mem.page(p), 1, 1)); // from a Worker
        assert.equal(waiters(uffd).total, 0, "WP_ASYNC: nobody waits");
        const written = pagesOf(scan.scan(mem, { reprotect: true }), mem.start);
        assert.deepEqual(written, [...pages].sort((a, b) => a - b));
        assert.deepEqual(pagesOf(scan.scan(mem, { reprotect: true }), mem.start), [], "reprotected");
        assert.equal(uffd.readEvent({ timeout: 0 }), undefined, "no events under WP_ASYNC");
      }),
  );

  it("needs WP_ASYNC (a typed error naming it); { missing: true } keeps missing mode", () => {
    using plain = Userfaultfd.open();
    using mem = Mapping.anonymous(4 * pageSize);
    assert.throws(() => plain.trackWrites(mem), (e: unknown) => {
      assert.ok(e instanceof UffdError);
      assert.equal(e.code, "EINVAL");
      assert.equal(e.source, "library");
      assert.match(e.message, /needs feature WP_ASYNC: open with \{ features: \["WP_ASYNC"\] \}/);
      return true;
    });
    using uffd = Userfaultfd.open({ features: ["WP_ASYNC"] });
    uffd.trackWrites(mem, { missing: true });
    using scan = new PagemapScanner();
    assert.deepEqual(scan.scan(mem), []);
    // missing mode kept: a page can still be placed; copy(wp: true) keeps it unwritten. ZEROPAGE
    // refuses a write-protected hole (a uffd-wp marker): EEXIST from the kernel
    assert.equal(
      uffd.copy({ start: mem.start, len: pageSize, src: new Uint8Array(pageSize), wp: true }),
      pageSize,
    );
    assert.equal(uffd.copy({ start: mem.page(1), len: pageSize, src: new Uint8Array(pageSize) }), pageSize);
    assert.deepEqual(scan.scan(mem).map((r) => [r.start, r.end]), [[mem.page(1), mem.page(2)]]);
    assert.throws(() => uffd.zeropage({ start: mem.page(2), len: pageSize }), (e: unknown) => {
      assert.ok(e instanceof UffdError && e.code === "EEXIST", String(e));
      assert.match(e.hint, /write-protected hole/);
      return true;
    });
  });
});

describe("a fault on the thread that serves it", () => {
  const SELF = fileURLToPath(new URL("./children/events_self_fault.ts", import.meta.url));

  it(
    "events() on a THREAD_ID descriptor ends the process with an explanation instead of hanging (child process)",
    {
      timeout: 30000,
    },
    () => {
      const r = runChild(SELF, ["self"], 15000);
      assert.notEqual(r.signal, "SIGKILL", `the child hung until the deadline: ${r.stdout}${r.stderr}`);
      assert.match(r.stdout, /touching/);
      assert.doesNotMatch(r.stdout, /survived/);
      assert.equal(r.status, 70, "ended by the library (EX_SOFTWARE), not by a crash");
      assert.match(
        r.stderr,
        /the thread that reads this userfaultfd's events \(tid \d+, the one iterating events\(\)\)/,
      );
      assert.match(r.stderr, /blocked on a missing-page fault at 0x[0-9a-f]+ of that same userfaultfd/);
      assert.match(r.stderr, /would hang forever/);
    },
  );

  it("a wait on another descriptor's fault is not taken for one (the pending events are delivered after)", {
    timeout: 30000,
  }, () => {
    const r = runChild(SELF, ["other"], 15000);
    assert.equal(r.status, 0, `${r.signal} ${r.stdout}\n${r.stderr}`);
    const out = JSON.parse(r.stdout.trim().split("\n").pop()!);
    assert.deepEqual(out, { first: 0, worker: 7, served: 1 });
  });

  it("without THREAD_ID the library cannot tell: the child hangs until its deadline (documented)", {
    timeout: 30000,
  }, () => {
    const r = runChild(SELF, ["plain"], 3000);
    assert.equal(r.signal, "SIGKILL", `${r.status} ${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /touching/);
    assert.doesNotMatch(r.stderr, /would hang forever/);
  });
});
