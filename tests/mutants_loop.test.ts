// Mutants of the fault loop (src/server/loop.ts windowFor, finish, finishSingle, result) that
// StrykerJS left alive (tests/README.md "Mutation testing"): each test here makes the loop take one
// branch that no other test reaches deterministically (a placement answered EAGAIN, EEXIST, EFAULT,
// ESRCH or a source failure, for a window or for the faulting page alone; a window at a region's
// first pages or before a dropped page; the working-set record) and checks what the branch must do,
// so the mutants that change it fail here. Served memory is only touched from Workers with deadlines
// (Toucher, Peeker).
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { libc } from "../ffi/mod.ts";
import { FaultServer, Mapping, pageSize, Userfaultfd } from "../mod.ts";
import { Peeker } from "./helpers/peek.ts";
import { Toucher, within } from "./helpers/toucher.ts";
import { cleanupSenders, compiler, NO_CC, startSender } from "./helpers/sender.ts";

const T = { timeout: 30000 };
const PS = pageSize;
const MADV_DONTNEED = 4;
const source = (name: string): string => new URL(`./helpers/sources/${name}`, import.meta.url).href;

/** Resolves once `cond()` holds, polling; fails the test after `ms`. */
async function waitFor(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return assert.fail(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Whether a message waits to be read on descriptor fd (poll POLLIN, no wait). */
function readable(fd: number): boolean {
  return libc.poll(new Int32Array([fd, 1]), 1, 0) === 1;
}

/** The control block of tests/helpers/sources/gated_source.ts: one window's calls wait until open(). */
class Gate {
  readonly ctl = new Int32Array(new SharedArrayBuffer(24));
  constructor(offset: number, length: number, fails = false) {
    this.ctl[2] = offset;
    this.ctl[3] = length;
    this.ctl[4] = fails ? 1 : 0;
  }
  /** The source for a FaultServer of `pages` pages. */
  source(pages: number): { kind: "module"; url: string; length: number; options: unknown } {
    return {
      kind: "module",
      url: source("gated_source.ts"),
      length: pages * PS,
      options: { ctl: this.ctl.buffer },
    };
  }
  /** Calls that reached the gate. */
  get gated(): number {
    return Atomics.load(this.ctl, 0);
  }
  /** Waits until `n` calls reached the gate. */
  reached(n = 1): Promise<void> {
    return waitFor(() => this.gated >= n, `the source's call for the gated window (${n})`);
  }
  open(): void {
    Atomics.store(this.ctl, 1, 1);
    Atomics.notify(this.ctl, 1);
  }
}

/**
 * Raises a REMOVE event (MADV_DONTNEED of [addr, addr+len), from a Worker: it blocks until the server
 * reads the event) and waits until the event is pending on the server's descriptor. While it is,
 * every placement ioctl answers EAGAIN. `done` resolves once the server has read it.
 */
async function raiseRemove(
  server: FaultServer,
  addr: number,
  len: number,
): Promise<{ done: Promise<number>; [Symbol.dispose](): void }> {
  const w = new Worker(new URL("./helpers/madvise_worker.ts", import.meta.url), { type: "module" });
  const done = new Promise<number>((resolve) => (w.onmessage = (e) => resolve(e.data)));
  w.postMessage({ addr, len, advice: MADV_DONTNEED });
  try {
    await waitFor(() => readable(server.uffd.fd), "the REMOVE event pending");
  } catch (e) {
    w.terminate();
    throw e;
  }
  return { done, [Symbol.dispose]: () => w.terminate() };
}

/** Bytes of page k of the gated source. */
const srcByte = (k: number): number => (k + 1) & 0xff;

/** Why a userfaultfd that takes kernel-mode faults cannot be had here, or "" when it can. */
function noKernelFaults(): string {
  try {
    Userfaultfd.open({ userModeOnly: false }).close();
    return "";
  } catch (e) {
    return `no userfaultfd for kernel-mode faults here (${(e as Error).message})`;
  }
}

describe("mutants: the fault loop's failure branches (src/server/loop.ts finish, finishSingle)", () => {
  it(
    "a window answered EAGAIN (an event raised while the source ran) is placed again after the event",
    T,
    async () => {
      const gate = new Gate(2 * PS, PS);
      const server = await FaultServer.start({
        source: gate.source(8),
        onError: { retries: 0, then: "zero" },
      });
      const t = new Toucher();
      try {
        const read = t.read(server.address + 2 * PS);
        await gate.reached();
        using ev = await raiseRemove(server, server.address + 6 * PS, PS);
        gate.open();
        assert.equal(
          (await within(read, 5000, "the faulting page")).first,
          srcByte(2),
          "served from the source",
        );
        assert.equal(await within(ev.done, 5000, "madvise"), 0);
        const s = server.stats;
        // At least once: until the madvise thread runs again after its event was read, the kernel still
        // counts the address space as changing, and a retry may get EAGAIN once more.
        assert.ok(s.eagain >= 1, `the window's COPY answered EAGAIN (${s.eagain})`); // kills `{}`, `eagain--`
        assert.ok(gate.gated >= 2, "the source ran again for the retried window");
        assert.equal(s.pages, 1);
        assert.equal(s.bytes, PS);
        assert.equal(s.errors, 0, server.lastError); // kills `r === -EAGAIN` -> false (an error, then zeros)
        assert.equal(s.zeroed, 0);
      } finally {
        gate.open();
        t.close();
        server.close();
      }
    },
  );

  /**
   * A server of 8 pages with readahead 4 over a caller's mapping whose page 1 was written before it
   * was registered: a fault on page 2 places page 0 with the window [0, 4) (the COPY stops at the
   * present page 1), then page 2 alone, from the gated source.
   */
  async function cutWindow(gate: Gate): Promise<{ server: FaultServer; mapping: Mapping }> {
    const mapping = Mapping.anonymous(8 * PS);
    mapping.bytes().fill(0x33, PS, 2 * PS); // present before it is registered: the server cannot know
    try {
      const server = await FaultServer.start({
        source: gate.source(8),
        mapping,
        readahead: 4,
        onError: { retries: 0, then: "zero" },
      });
      return { server, mapping };
    } catch (e) {
      mapping.close();
      throw e;
    }
  }

  it("the faulting page alone answered EAGAIN is placed again after the event", T, async () => {
    const gate = new Gate(2 * PS, PS);
    const { server, mapping } = await cutWindow(gate);
    const t = new Toucher();
    try {
      const read = t.read(mapping.start + 2 * PS);
      await gate.reached();
      using ev = await raiseRemove(server, mapping.start + 6 * PS, PS);
      gate.open();
      assert.equal(
        (await within(read, 5000, "the faulting page")).first,
        srcByte(2),
        "served from the source",
      );
      assert.equal(await within(ev.done, 5000, "madvise"), 0);
      const s = server.stats;
      // The window stopped before page 2 (1), page 2 alone answered EAGAIN (2); after the event the
      // window [1, 4) answers EEXIST at page 1, and page 2 alone is placed.
      assert.ok(s.eagain >= 2, `EAGAIN: ${s.eagain}`); // kills finishSingle's EAGAIN `{}` and `eagain--`
      assert.equal(s.eexist, 1);
      assert.ok(gate.gated >= 2, "page 2 alone was asked of the source again");
      assert.equal(s.errors, 0, server.lastError); // kills `r === -EAGAIN` -> false in finishSingle
      assert.equal(s.zeroed, 0);
      assert.equal(s.pages, 2, "pages 0 and 2");
      assert.equal(s.bytes, 2 * PS);
      assert.equal((await within(t.read(mapping.start + PS), 5000, "page 1")).first, 0x33, "page 1 kept");
    } finally {
      gate.open();
      t.close();
      server.close();
      mapping.close();
    }
  });

  it(
    "the faulting page placed behind the server's back while its source ran is woken, not failed",
    T,
    async () => {
      const gate = new Gate(2 * PS, PS);
      const { server, mapping } = await cutWindow(gate);
      const t = new Toucher();
      try {
        const read = t.read(mapping.start + 2 * PS);
        await gate.reached();
        // Zeros, without waking the faulter: only the server's UFFDIO_WAKE after its EEXIST wakes it.
        server.uffd.zeropage({ start: mapping.start + 2 * PS, len: PS, dontwake: true });
        gate.open();
        // kills finishSingle's EEXIST `{}` and `r > 0` -> true (no wake: the faulter stays blocked)
        assert.equal(
          (await within(read, 5000, "the faulting page")).first,
          0,
          "the zeros placed behind its back",
        );
        await waitFor(() => server.stats.wakes === 1, "one UFFDIO_WAKE (counted after the ioctl)");
        const s = server.stats;
        assert.equal(s.errors, 0, server.lastError); // kills `r === -EEXIST` -> false (an error, then fail())
        assert.equal(s.zeroed, 0);
        assert.equal(s.pages, 1, "page 0 only: the server placed nothing else");
        assert.equal(s.bytes, PS);
      } finally {
        gate.open();
        t.close();
        server.close();
        mapping.close();
      }
    },
  );

  it(
    "a faulting page placed behind the server's back while its source ran is woken, the source not asked again",
    T,
    async () => {
      const gate = new Gate(2 * PS, PS);
      const server = await FaultServer.start({
        source: gate.source(8),
        onError: { retries: 0, then: "zero" },
      });
      const t = new Toucher();
      try {
        const read = t.read(server.address + 2 * PS);
        await gate.reached();
        server.uffd.zeropage({ start: server.address + 2 * PS, len: PS, dontwake: true });
        gate.open(); // the window [2, 3) answers EEXIST at the faulting page itself
        assert.equal(
          (await within(read, 5000, "the faulting page")).first,
          0,
          "the zeros placed behind its back",
        );
        await waitFor(() => server.stats.wakes === 1, "one UFFDIO_WAKE (counted after the ioctl)");
        const s = server.stats;
        // kills `a !== p` -> true in finish (page 2 placed alone: the source asked a second time)
        assert.equal(Atomics.load(gate.ctl, 5), 1, "the source was asked once");
        assert.equal(s.eexist, 1);
        assert.equal(s.errors, 0, server.lastError);
        assert.equal(s.pages, 0);
        assert.equal(s.bytes, 0);
      } finally {
        gate.open();
        t.close();
        server.close();
      }
    },
  );

  it(
    "a window stopped by the faulting page itself (placed behind the server's back) wakes its faulter",
    T,
    async () => {
      const gate = new Gate(0, 4 * PS); // the window [0, 4) of a fault on page 2
      const server = await FaultServer.start({
        source: gate.source(8),
        readahead: 4,
        onError: { retries: 0, then: "zero" },
      });
      const t = new Toucher();
      try {
        const read = t.read(server.address + 2 * PS);
        await gate.reached();
        server.uffd.zeropage({ start: server.address + 2 * PS, len: PS, dontwake: true });
        gate.open(); // COPY places pages 0 and 1, then stops at page 2: exactly the faulting page
        // kills `a + done > p` -> `>=` in finish (done without placing page 2: its faulter never woken)
        assert.equal(
          (await within(read, 5000, "the faulting page")).first,
          0,
          "the zeros placed behind its back",
        );
        await waitFor(() => server.stats.wakes === 1, "one UFFDIO_WAKE (counted after the ioctl)");
        const s = server.stats;
        assert.equal(s.pages, 2, "pages 0 and 1");
        assert.equal(s.eagain, 1, "one window stopped short");
        assert.equal(s.errors, 0, server.lastError);
        using pk = new Peeker();
        assert.equal(pk.byte(server.address + PS + 9), srcByte(1));
      } finally {
        gate.open();
        t.close();
        server.close();
      }
    },
  );

  for (const withEvent of [false, true]) {
    it(
      `a source failing on the faulting page alone is resolved by the policy${
        withEvent ? ", after the event pending then" : ""
      }`,
      T,
      async () => {
        const gate = new Gate(2 * PS, PS, true);
        const { server, mapping } = await cutWindow(gate);
        const t = new Toucher();
        try {
          const read = t.read(mapping.start + 2 * PS);
          await gate.reached();
          using ev = withEvent ? await raiseRemove(server, mapping.start + 6 * PS, PS) : undefined;
          gate.open();
          assert.equal((await within(read, 5000, "the faulting page")).first, 0, "zeros (onError then zero)");
          if (ev) assert.equal(await within(ev.done, 5000, "madvise"), 0);
          await waitFor(() => server.stats.zeroed === 1, "page 2 zeroed");
          const s = server.stats;
          assert.equal(s.errors, 1, server.lastError); // kills `r === SOURCE_FAILED` -> false (a second error)
          assert.match(server.lastError ?? "", /page source failed at offset 8192/);
          // With the event pending the policy's zeros answer EAGAIN too and are placed after it
          // (kills `if (!fail(p))` -> `if (false)` and `fail(p)`: the page left failing, its faulter
          // blocked); without, the page is done (kills `if (true)`: a retry that wakes it again).
          assert.equal(s.wakes, 0, "no UFFDIO_WAKE: the zeros woke the faulter");
          if (withEvent) assert.ok(s.eagain >= 2, `EAGAIN: ${s.eagain}`);
          else assert.equal(s.eagain, 1, "the window stopped before page 2");
          assert.equal(gate.gated, 1, "the source is not asked again after the policy");
          assert.equal(s.pages, 1, "page 0 only");
        } finally {
          gate.open();
          t.close();
          server.close();
          mapping.close();
        }
      },
    );
  }
});

describe("mutants: placements the kernel refuses (src/server/loop.ts finish, finishSingle, result)", () => {
  it(
    "the faulting page alone refused (EFAULT) while an event is pending gets the policy after the event",
    { ...T, skip: noKernelFaults() || false },
    async () => {
      // The source of page 2 alone is memory registered with a descriptor of this test: the server's
      // COPY blocks in the kernel on its fault. Meanwhile a REMOVE event is raised; then that memory
      // is poisoned, so the COPY (which checked for events before it blocked) answers EFAULT, and the
      // policy's zeros right after it answer EAGAIN: placed after the event.
      using borrowed = Userfaultfd.open({ userModeOnly: false, nonBlocking: true, features: ["POISON"] });
      using lent = Mapping.anonymous(PS);
      borrowed.register(lent);
      using mapping = Mapping.anonymous(8 * PS);
      mapping.bytes().fill(0x33, PS, 2 * PS); // the window [0, 4) stops at page 1: then page 2 alone
      const server = await FaultServer.start({
        source: {
          kind: "module",
          url: source("borrowed_source.ts"),
          length: 8 * PS,
          options: { offset: 2 * PS, length: PS, addr: lent.start },
        },
        mapping,
        readahead: 4,
        onError: { retries: 0, then: "zero" },
      });
      const t = new Toucher();
      try {
        const read = t.read(mapping.start + 2 * PS);
        await waitFor(() => readable(borrowed.fd), "the server's COPY faulting on the lent memory");
        using ev = await raiseRemove(server, mapping.start + 6 * PS, PS);
        borrowed.poison({ start: lent.start, len: PS }); // the COPY's source read fails: EFAULT
        // The policy's EAGAIN defers the page (a `return DONE` there would leave it failing and its
        // faulter blocked). Stryker's `if (!fail(p))` -> `if (false)` drops the call to fail() too and
        // is killed by the EFAULT test below; this one checks the deferral itself.
        assert.equal((await within(read, 5000, "the faulting page")).first, 0, "zeros (onError then zero)");
        assert.equal(await within(ev.done, 5000, "madvise"), 0);
        await waitFor(() => server.stats.zeroed === 1, "page 2 zeroed");
        const s = server.stats;
        assert.match(server.lastError ?? "", /^copy of page 2 failed: errno 14$/);
        assert.equal(s.errors, 1, server.lastError);
        assert.ok(s.eagain >= 2, `the window cut short, then the zeros answered EAGAIN (${s.eagain})`);
        assert.equal(s.pages, 1, "page 0 only");
      } finally {
        t.close();
        server.close();
      }
    },
  );

  /** A file of `pages` pages, page k holding byte k + 1; removed by dispose. */
  function sourceFile(pages: number): { path: string; [Symbol.dispose](): void } {
    const dir = mkdtempSync(join(tmpdir(), "uffd-mutants-"));
    const path = join(dir, "src.bin");
    const data = new Uint8Array(pages * PS);
    for (let k = 0; k < pages; k++) data.fill(srcByte(k), k * PS, (k + 1) * PS);
    writeFileSync(path, data);
    return { path, [Symbol.dispose]: () => rmSync(dir, { recursive: true, force: true }) };
  }

  it(
    "a window whose source became unreadable (EFAULT) is reported and resolved by the policy",
    T,
    async () => {
      using file = sourceFile(8);
      const server = await FaultServer.start({
        source: { kind: "file", path: file.path },
        onError: { retries: 0, then: "zero" },
      });
      try {
        truncateSync(file.path, 2 * PS); // the mapped source past 2 pages: SIGBUS, so COPY answers EFAULT
        using pk = new Peeker();
        assert.equal(pk.byte(server.address + PS + 5), srcByte(1), "a page still in the file");
        // kills `r === -EFAULT` -> false, `-ERRNO.EFAULT`, `||` (no policy: the faulter stays blocked)
        assert.equal(pk.byte(server.address + 3 * PS + 5), 0, "zeros (onError then zero)");
        await waitFor(() => server.stats.zeroed === 1, "page 3 zeroed");
        const s = server.stats;
        // kills `r === SOURCE_FAILED` -> true (no error recorded) and the message's `-r`
        assert.equal(s.errors, 1, server.lastError);
        assert.match(server.lastError ?? "", /^copy of pages \[3, 4\) failed: errno 14$/);
        assert.equal(s.wakes, 0, "done: no retry wakes it again"); // kills `!fail(p)` -> `fail(p)`
        assert.equal(s.pages, 1, "page 1 only");
        assert.equal(s.bytes, PS);
      } finally {
        server.close();
      }
    },
  );

  it(
    "the faulting page alone whose source became unreadable (EFAULT) is reported and resolved",
    T,
    async () => {
      using file = sourceFile(8);
      using mapping = Mapping.anonymous(8 * PS);
      mapping.bytes().fill(0x33, PS, 2 * PS); // present before registration: the window stops there
      const server = await FaultServer.start({
        source: { kind: "file", path: file.path },
        mapping,
        readahead: 4,
        onError: { retries: 0, then: "zero" },
      });
      try {
        truncateSync(file.path, 2 * PS);
        using pk = new Peeker();
        // Window [0, 4): page 0 placed, stopped at page 1; page 2 alone: EFAULT.
        assert.equal(pk.byte(mapping.start + 2 * PS + 5), 0, "zeros (onError then zero)");
        await waitFor(() => server.stats.zeroed === 1, "page 2 zeroed");
        const s = server.stats;
        assert.equal(s.errors, 1, server.lastError);
        assert.match(server.lastError ?? "", /^copy of page 2 failed: errno 14$/); // kills the message's `-r`
        assert.equal(s.wakes, 0, "done: no retry wakes it again"); // kills `if (!fail(p))` -> `if (true)`
        assert.equal(s.pages, 1, "page 0 only");
        assert.equal(pk.byte(mapping.start + 5), srcByte(0));
      } finally {
        server.close();
      }
    },
  );

  it(
    "a window placed after the served process ended (ESRCH, no result written) is reported, not failed",
    { ...T, skip: compiler ? false : NO_CC },
    async () => {
      const fx = startSender("region"); // a C process: 64 pages registered, read in order
      const gate = new Gate(0, PS);
      let server: FaultServer | undefined;
      try {
        const uffd = Userfaultfd.fromFd(fx.fd, 0, { remote: true });
        await waitFor(() => /^region /m.test(fx.out()), "the fixture's region");
        const [, start, length] = fx.out().match(/^region ([0-9a-f]+) ([0-9a-f]+)$/m)!.map((x) =>
          parseInt(x, 16)
        );
        server = await FaultServer.start({ source: gate.source(64), remote: { uffd, start, length } });
        await gate.reached(); // the fault on page 0 was read; its source waits
        fx.kill();
        await within(fx.exited, 5000, "the fixture's end");
        gate.open(); // COPY into an address space that is gone: ESRCH, before the result field is written
        await waitFor(() => server!.stats.errors > 0, "the COPY's error");
        await new Promise((r) => setTimeout(r, 100)); // anything the loop would do after it
        const s = server.stats;
        // kills result()'s `field !== 0` -> true, `field === 0` and `r !== 0` (errno 0 instead of 3)
        assert.match(server.lastError ?? "", /^copy of pages \[0, 1\) failed: errno 3$/);
        // kills `r === -EFAULT` -> true, `&&` -> `||` and `r === SOURCE_FAILED` -> true: no POISON
        // tried (it would answer ESRCH too, counted as unserved)
        assert.equal(s.errors, 1, server.lastError);
        assert.equal(s.unserved, 0);
        assert.equal(s.poisoned, 0);
        assert.equal(s.pages, 0);
        assert.equal(s.bytes, 0);
      } finally {
        gate.open();
        server?.close();
        fx.close();
        cleanupSenders();
      }
    },
  );
});

describe("mutants: the working-set record (src/server/loop.ts finish, finishSingle)", () => {
  it("records each window and each page placed alone, in first-touch order", T, async () => {
    const data = new Uint8Array(new SharedArrayBuffer(12 * PS));
    for (let k = 0; k < 12; k++) data.fill(srcByte(k), k * PS, (k + 1) * PS);
    using mapping = Mapping.anonymous(12 * PS);
    mapping.bytes().fill(0x33, 9 * PS, 10 * PS); // present before registration: cuts the window [8, 12)
    const server = await FaultServer.start({
      source: { kind: "bytes", data },
      mapping,
      readahead: 4,
      record: true,
    });
    try {
      using pk = new Peeker();
      assert.equal(pk.byte(mapping.start + 5 * PS), srcByte(5));
      await waitFor(() => server.stats.pages === 4, "window [4, 8)");
      assert.equal(pk.byte(mapping.start + 10 * PS), srcByte(10));
      await waitFor(() => server.stats.pages === 6, "page 8 by the window [8, 12), then page 10 alone");
      assert.equal(pk.byte(mapping.start + 2 * PS), srcByte(2));
      await waitFor(() => server.stats.pages === 10, "window [0, 4)");
      // recorded after the ioctl that woke the reader
      await waitFor(
        () => server.workingSet().runs.some(([a]) => a === 0),
        "the run of [0, 4) recorded",
        2000,
      );
      // kills `rec !== undefined` -> false / `rec === undefined` in finish (windows not recorded)
      assert.deepEqual(server.workingSet().runs, [[4, 5], [10, 1], [0, 4]], "[4, 8) and [8, 9) coalesced");
    } finally {
      server.close();
    }
  });
});

describe("mutants: a window ends at a page that is not empty (src/server/loop.ts windowFor)", () => {
  it("a dropped page that was never placed stays zeros when a window reaches it", T, async () => {
    const data = new Uint8Array(new SharedArrayBuffer(8 * PS));
    for (let k = 0; k < 8; k++) data.fill(srcByte(k), k * PS, (k + 1) * PS);
    const server = await FaultServer.start({ source: { kind: "bytes", data }, readahead: 4 }); // onRemove "zero"
    try {
      server.mapping.dontneed(2 * PS, PS); // not present in the kernel, but removed for the server
      await waitFor(() => server.stats.removed === 1, "REMOVE of page 2");
      using pk = new Peeker();
      assert.equal(pk.byte(server.address + PS + 3), srcByte(1));
      await waitFor(() => server.stats.pages === 2, "window [0, 2)");
      // kills `pages[hi] === PAGE.empty` -> true (the window [0, 4) would COPY the source into page 2)
      assert.equal(pk.byte(server.address + 2 * PS + 3), 0, "zeros, as madvise promises");
      assert.equal(pk.byte(server.address + 3 * PS + 3), srcByte(3));
      assert.equal(server.stats.pages, 3, "pages 0, 1 and 3 from the source");
    } finally {
      server.close();
    }
  });
});

describe("mutants: adaptive windows at a region's first pages (src/server/loop.ts windowFor)", () => {
  it("a placed page of the region before is no sequential stream", T, async () => {
    // Four regions of 16 pages on one descriptor (ours, dup'ed as a "remote" one), next to each other
    // in the source: pages [0, 16), [16, 32), [32, 48), [48, 64).
    using own = Userfaultfd.open();
    using mem = Mapping.anonymous(64 * PS);
    own.register(mem);
    const data = new Uint8Array(new SharedArrayBuffer(64 * PS));
    for (let k = 0; k < 64; k++) data.fill(srcByte(k), k * PS, (k + 1) * PS);
    const regions = [0, 1, 2, 3].map((r) => ({
      start: mem.start + r * 16 * PS,
      length: 16 * PS,
      offset: r * 16 * PS,
    }));
    const server = await FaultServer.start({
      source: { kind: "bytes", data },
      remote: { uffd: Userfaultfd.fromFd(libc.syscall(32, /* dup */ own.fd), 0, { remote: true }), regions },
      readahead: "adaptive",
    });
    try {
      using pk = new Peeker();
      let placed = 0;
      const touch = async (p: number, window: number, why: string): Promise<void> => {
        assert.equal(pk.byte(mem.start + p * PS + 3), srcByte(p), `page ${p}`);
        placed += window;
        await waitFor(() => server.stats.pages === placed, `page ${p}: ${placed} pages placed`);
        assert.equal(server.stats.window, window, `page ${p}: ${why}`);
      };
      await touch(14, 1, "a first fault");
      await touch(5, 1, "random");
      // Page 16 opens region 1; page 14 of region 0 is placed (kills `rLo + 1` -> `rLo - 1` and
      // `p > rLo + 1` -> true: they look two pages back, into region 0).
      await touch(16, 1, "two back is the region before's");
      await touch(31, 1, "random");
      await touch(8, 1, "random");
      // Page 33, region 2's second: page 31 of region 1 is placed, page 32 empty (kills `p >= rLo + 1`).
      await touch(33, 1, "two back is the region before's");
      await touch(47, 1, "random");
      await touch(2, 1, "random");
      // Page 48 opens region 3; page 47 of region 2 is placed (kills `p > rLo` -> true and `p >= rLo`).
      await touch(48, 1, "the page before is the region before's");
      await touch(49, 2, "the page before is placed: doubled"); // within a region it counts
      assert.equal(server.stats.eagain, 0);
      assert.equal(server.stats.eexist, 0);
    } finally {
      server.close();
    }
  });
});
