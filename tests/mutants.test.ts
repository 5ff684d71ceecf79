// Mutants that StrykerJS left alive (npm run mutate; tests/README.md "Mutation testing"): each test
// here kills one or more of them, and says which. Memory that is registered is only touched through
// a Worker with a deadline (tests/helpers/peek.ts), so a broken fault path fails the test named here.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { libc } from "../ffi/mod.ts";
import {
  FaultServer,
  freeHugePages,
  hugePageSize,
  Mapping,
  PagemapScanner,
  pageSize,
  UffdError,
  Userfaultfd,
} from "../mod.ts";
import { U64Struct } from "../src/structs.ts";
import { Peeker } from "./helpers/peek.ts";
import { pattern } from "./helpers/faulters.ts";

const T = { timeout: 20000 };
const PS = pageSize;
const PROT_NONE = 0;
const MAP_PRIVATE_ANONYMOUS = 0x22;
/** #runOn's explanation of a kernel ENOENT on a range this descriptor registered. */
const CHANGED = /is registered with this userfaultfd, but its mapping changed under the operation/;

/** The UffdError `f` throws (fails when it throws anything else, or nothing). */
function thrown(f: () => unknown, what: string): UffdError {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof UffdError, `${what}: ${e}`);
    return e;
  }
  assert.fail(`${what}: no error`);
}

const MAP_FIXED_NOREPLACE = 0x100000;

/**
 * Address space mapped with plain mmap (the library knows nothing of it); unmapped by dispose. It is
 * placed at a random address far from where the kernel puts new mappings, so that it is not where a
 * Mapping that an earlier test closed used to be (the library reports such a range as closed).
 */
function foreign(pages: number): { start: number; [Symbol.dispose](): void } {
  for (let i = 0; i < 16; i++) {
    const hint = 0x2000_0000_0000 + Math.floor(Math.random() * 2 ** 24) * 16 * PS;
    const start = libc.mmap(hint, pages * PS, PROT_NONE, MAP_PRIVATE_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (start === hint) return { start, [Symbol.dispose]: () => void libc.munmap(start, pages * PS) };
  }
  assert.fail("no free address for a foreign mapping");
}

/** Resolves once `cond()` holds (the server counts a fault just after waking its thread). */
async function settle(cond: () => boolean, what: string, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return assert.fail(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

const source = (name: string): string => new URL(`./helpers/sources/${name}`, import.meta.url).href;

// First in this file: under a mutant of the fault loop these fail within seconds, and the mutation
// run's Deno suite stops at the first failing file (--fail-fast).
describe("mutants: the fault loop (src/server/loop.ts windowFor, finish, finishSingle)", () => {
  it("the adaptive window doubles on each sequential rule alone and falls back to one page", T, async () => {
    const n = 40;
    const data = pattern(n, PS, 41);
    const src = new Uint8Array(data);
    const server = await FaultServer.start({
      source: { kind: "bytes", data },
      readahead: "adaptive",
      onRemove: "source",
    });
    try {
      using pk = new Peeker();
      const touch = async (p: number, pages: number, window: number, why: string): Promise<void> => {
        assert.equal(pk.byte(server.address + p * PS + 7, 2000), src[p * PS + 7], `page ${p}`);
        await settle(() => server.stats.pages === pages, `page ${p}: ${pages} pages placed`);
        assert.equal(server.stats.window, window, `page ${p}: ${why}`);
      };
      await touch(0, 1, 1, "a first fault: one page");
      await touch(1, 3, 2, "right after the last window: doubled"); // kills `p === lastEnd && ...`
      server.mapping.dontneed(PS, 2 * PS); // pages 1-2 empty again ("source"): only lastEnd says sequential
      await settle(() => server.stats.removed === 2, "REMOVE of pages 1-2");
      await touch(3, 7, 4, "at lastEnd alone: doubled"); // kills `p === lastEnd` -> false
      await touch(20, 8, 1, "a random fault: one page");
      await touch(10, 9, 1, "another random fault");
      await touch(21, 11, 2, "the page before is placed: doubled"); // kills `p <= rLo`, `p + 1`, `-> false`
      await touch(30, 12, 1, "random again");
      await touch(32, 14, 2, "two back is placed (interleaved streams): doubled"); // kills `p + 2`, `false`, `<=`
      const s = server.stats;
      assert.equal(s.eagain, 0, "no window stopped short"); // kills `a - done > p`
      assert.equal(s.eexist, 0);
      assert.equal(s.bytes, s.pages * PS);
    } finally {
      server.close();
    }
  });

  it(
    "a fixed window around a dropped page covers only the empty pages next to it (no EEXIST)",
    T,
    async () => {
      const data = pattern(8, PS, 43);
      const src = new Uint8Array(data);
      const server = await FaultServer.start({
        source: { kind: "bytes", data },
        readahead: 4,
        onRemove: "source",
      });
      try {
        using pk = new Peeker();
        assert.equal(pk.byte(server.address + 5, 2000), src[5]);
        await settle(() => server.stats.pages === 4, "window [0, 4)");
        server.mapping.dontneed(PS, PS);
        await settle(() => server.stats.removed === 1, "REMOVE of page 1");
        assert.equal(pk.byte(server.address + PS + 5, 2000), src[PS + 5], "page 1 again");
        await settle(() => server.stats.pages === 5, "page 1 placed again");
        assert.equal(server.stats.eexist, 0, "the window [1, 2), not over the placed page 0"); // kills `|| true` in lo--
      } finally {
        server.close();
      }
    },
  );

  it(
    "a window cut short by a present page places the faulting page alone and counts its bytes",
    T,
    async () => {
      const data = pattern(8, PS, 47);
      const src = new Uint8Array(data);
      using mapping = Mapping.anonymous(8 * PS);
      mapping.bytes().fill(0x33, PS, 2 * PS); // present before it is registered: the server cannot know
      const server = await FaultServer.start({ source: { kind: "bytes", data }, mapping, readahead: 4 });
      try {
        using pk = new Peeker();
        assert.equal(pk.byte(mapping.start + 2 * PS + 9, 2000), src[2 * PS + 9]);
        await settle(() => server.stats.pages === 2, "page 0 by the window, page 2 alone");
        const s = server.stats;
        assert.equal(s.bytes, 2 * PS, "bytes of both placements"); // kills `bytes -= r` in finishSingle
        assert.equal(s.eagain, 1, "one window stopped before the faulting page");
        assert.equal(pk.byte(mapping.start + PS, 2000), 0x33, "the present page kept");
      } finally {
        server.close();
      }
    },
  );

  it("a source failure is not counted as EEXIST (onError zero)", T, async () => {
    const server = await FaultServer.start({
      source: { kind: "module", url: source("failing_source.ts"), length: 8 * PS },
      onError: { retries: 0, then: "zero" },
    });
    try {
      using pk = new Peeker();
      assert.equal(pk.byte(server.address + 3 * PS, 2000), 0, "zero-filled as asked");
      await settle(() => server.stats.zeroed === 1, "page 3 zeroed");
      assert.equal(server.stats.eexist, 0); // kills `r === -EEXIST` -> true in finish
      assert.equal(server.stats.errors, 1);
    } finally {
      server.close();
    }
  });
});

describe("mutants: range checks (src/memory.ts checkRange, Mapping#sub)", () => {
  it("each bad range gets the message of the check that refused it, in the kernel's order", T, () => {
    using uffd = Userfaultfd.open();
    using mem = Mapping.anonymous(2 * PS);
    const reg = (start: unknown, len: unknown): UffdError =>
      thrown(
        () => uffd.register({ start, len } as { start: number; len: number }),
        `register(${start}, ${len})`,
      );
    // typeof check (kills `if (false)` on it: a string would reach the integer check instead)
    assert.match(reg(String(mem.start), PS).message, /start and length must be numbers/);
    assert.match(reg(mem.start, "4096").message, /start and length must be numbers/);
    // integer / sign check, each operand alone (kills `&&` for `||` and `if (false)`)
    for (const [s, l] of [[-PS, PS], [mem.start + 0.5, PS], [mem.start, PS + 0.5], [2 ** 60, PS]]) {
      const e = reg(s, l);
      assert.equal(e.source, "library");
      assert.match(e.message, /must be non-negative integers/, `(${s}, ${l})`);
    }
    // address 0 is a non-negative integer: refused for lying in no mapping (kills `start <= 0`)
    assert.match(reg(0, PS).message, /is not inside a mapping created by this library/);
    // alignment to the base page size, checked before the mapping is looked up
    for (const [s, l] of [[mem.start + 512, PS], [mem.start, PS + 512]]) {
      const e = reg(s, l);
      assert.match(e.message, /is not aligned to the \d+-byte page size$/, `(${s}, ${l})`);
    }
  });

  it("a remote descriptor gets the integer and alignment checks too (no mapping to look up)", T, () => {
    using own = Userfaultfd.open();
    using remote = Userfaultfd.fromFd(libc.syscall(32, /* dup */ own.fd), 0, { remote: true });
    for (const [start, len] of [[0x10000000 + 512, PS], [0x10000000, PS + 512], [-PS, PS]]) {
      const e = thrown(() => remote.zeropage({ start, len }), `remote zeropage(${start}, ${len})`);
      assert.equal(e.source, "library", e.message);
      assert.equal(e.code, "EINVAL");
    }
  });

  it(
    "memory the library does not know: the kernel's errno per operation, and closed Mappings named",
    T,
    () => {
      using uffd = Userfaultfd.open();
      using raw = foreign(5);
      const inside = Mapping.adopt(raw.start, 4 * PS);
      inside.close(); // adopted: not unmapped; the library remembers it was closed
      const src = new Uint8Array(PS);
      // Inside the closed Mapping: said to be closed.
      const closed = thrown(() => uffd.copy({ start: raw.start + PS, len: PS, src }), "copy into closed");
      assert.match(closed.message, /is in a Mapping that was closed/);
      // Right past its end (still mmap'ed, but not by the library): not "closed" (kills `start <= e`)
      // and for COPY the kernel's ENOENT (kills `NO_MAPPING_ERRNO[op] && "EINVAL"`).
      const past = thrown(() => uffd.copy({ start: raw.start + 4 * PS, len: PS, src }), "copy past");
      assert.doesNotMatch(past.message, /closed/);
      assert.match(past.message, /is not inside a mapping created by this library/);
      assert.equal(past.code, "ENOENT");
      assert.equal(past.source, "library");
      const wake = thrown(() => uffd.wake({ start: raw.start + 4 * PS, len: PS }), "wake past");
      assert.equal(wake.code, "EINVAL", "an operation without a kernel errno of its own: EINVAL");
      // A range never mapped by anyone the library knows, while a closed one is remembered:
      // not "closed" (kills `if (true) throw closedError`).
      using other = foreign(1);
      assert.doesNotMatch(
        thrown(() => uffd.copy({ start: other.start, len: PS, src }), "other").message,
        /closed/,
      );
    },
  );

  it("PagemapScanner checks the range against this process's mappings (checkRange's default)", T, () => {
    using raw = foreign(1);
    using scan = new PagemapScanner(4);
    const e = thrown(() => scan.scan({ start: raw.start, len: PS }), "scan of foreign memory");
    assert.equal(e.source, "library");
    assert.match(e.message, /is not inside a mapping created by this library/);
  });

  it(
    "a range aligned to 4 KiB but not to its hugetlb mapping's page size is refused before the syscall",
    { ...T, skip: hugePageSize() && freeHugePages() >= 2 ? false : "fewer than 2 free huge pages" },
    () => {
      using uffd = Userfaultfd.open({ features: ["MISSING_HUGETLBFS"] });
      const hps = hugePageSize();
      using huge = Mapping.hugetlb(2 * hps);
      for (const [s, l] of [[huge.start + PS, hps], [huge.start, hps + PS], [huge.start + PS, hps + PS]]) {
        const e = thrown(() => uffd.register({ start: s, len: l }), `register(+${s - huge.start}, ${l})`);
        assert.equal(e.source, "library");
        assert.match(e.message, /page size of its mapping/);
      }
    },
  );

  it("Mapping.madvise/dontneed/protect work on the part they are given and refuse bad parts", T, () => {
    using mem = Mapping.anonymous(4 * PS); // not registered: this thread may touch it
    const b = mem.bytes();
    b.fill(1);
    mem.dontneed(PS, 2 * PS); // kills `this.address - offset` and `offset * this.pageSize`
    assert.deepEqual([b[0], b[PS], b[2 * PS], b[3 * PS]], [1, 0, 0, 1]);
    mem.protect(1, /* PROT_READ */ 3 * PS, PS);
    mem.protect(3, /* PROT_READ|PROT_WRITE */ 3 * PS, PS);
    const bad: [string, () => void, RegExp][] = [
      ["offset not a number", () => mem.dontneed("0" as unknown as number, PS), /must be numbers/],
      ["length not a number", () => mem.dontneed(0, "1" as unknown as number), /must be numbers/],
      ["unaligned offset", () => mem.dontneed(1, PS), /positive multiples/],
      ["unaligned length", () => mem.dontneed(0, PS + 1), /positive multiples/],
      ["zero length", () => mem.dontneed(0, 0), /positive multiples/],
      ["negative offset", () => mem.madvise(4, -PS, PS), /lies outside/],
      ["past the end", () => mem.protect(1, 3 * PS, 2 * PS), /\[12288, 20480\) lies outside the 16384-byte/],
    ];
    for (const [what, f, re] of bad) {
      const e = thrown(f, what);
      assert.equal(e.source, "library", what);
      assert.match(e.message, re, what);
    }
    assert.equal(b[3 * PS], 1, "nothing was changed by a refused call");
  });
});

describe("mutants: error path (src/userfaultfd.ts #run/#runOn/#checkRegistered, src/errors.ts)", () => {
  it("a library error says it was checked before the syscall; a kernel error does not", T, () => {
    using uffd = Userfaultfd.open();
    using mem = Mapping.anonymous(PS);
    const lib = thrown(() => uffd.register({ start: mem.start + 1, len: PS }), "unaligned");
    assert.equal(lib.source, "library");
    assert.match(lib.message, /^UFFDIO_REGISTER failed: EINVAL \(checked before the syscall\): /);
    uffd.register(mem);
    uffd.zeropage(mem);
    const kernel = thrown(() => uffd.zeropage(mem), "second zeropage");
    assert.equal(kernel.source, "kernel");
    assert.match(kernel.message, /^UFFDIO_ZEROPAGE failed: EEXIST: /);
  });

  it(
    "a kernel error of an ioctl without a result field has no result (EBUSY: registered elsewhere)",
    T,
    () => {
      using a = Userfaultfd.open();
      using b = Userfaultfd.open();
      using mem = Mapping.anonymous(PS);
      a.register(mem);
      const e = thrown(() => b.register(mem), "register with a second descriptor");
      assert.equal(e.code, "EBUSY");
      assert.equal(e.source, "kernel");
      assert.equal(e.result, undefined, "no result field for UFFDIO_REGISTER");
      assert.equal(e.done, 0);
    },
  );

  it("only a kernel ENOENT on a fully registered range is explained as a mapping that changed", T, () => {
    using uffd = Userfaultfd.open({ features: ["EVENT_REMAP"] }); // the kernel checks registrations
    using mem = Mapping.anonymous(2 * PS);
    uffd.register({ start: mem.start, len: PS });
    // Half registered: the kernel's ENOENT, without the "changed" explanation (kills `start - len`).
    const half = thrown(() => uffd.zeropage({ start: mem.start, len: 2 * PS }), "half registered");
    assert.equal(half.code, "ENOENT");
    assert.doesNotMatch(half.message, CHANGED);
    // Another errno is never explained so (kills `if (true)` on the ENOENT condition).
    uffd.zeropage({ start: mem.start, len: PS });
    const exists = thrown(() => uffd.zeropage({ start: mem.start, len: PS }), "present page");
    assert.equal(exists.code, "EEXIST");
    assert.doesNotMatch(exists.message, CHANGED);
    // Registered, then unmapped behind the library's back: ENOENT explained.
    using plain = Userfaultfd.open();
    using gone = Mapping.anonymous(PS);
    plain.register(gone);
    libc.munmap(gone.start, PS);
    const changed = thrown(() => plain.zeropage(gone), "unmapped under it");
    assert.equal(changed.code, "ENOENT");
    assert.match(changed.message, CHANGED);
  });

  it("two adjacent registrations with no mode in common still count as registered (mode 0)", T, () => {
    using uffd = Userfaultfd.open({ features: ["WP_UNPOPULATED"] });
    using mem = Mapping.anonymous(2 * PS);
    uffd.register({ start: mem.start, len: PS }, { missing: true });
    uffd.register({ start: mem.start + PS, len: PS }, { missing: false, wp: true });
    // The library lets it through (kills `mode <= 0`); the kernel refuses a range over two VMAs,
    // and the error says so, not that the mapping changed (kills `registeredMode(...) > 0`).
    const e = thrown(() => uffd.zeropage({ start: mem.start, len: 2 * PS }), "zeropage over both");
    assert.equal(e.source, "kernel", e.message);
    assert.equal(e.code, "ENOENT");
    assert.match(e.message, /spans registrations of different modes.*split the call where the mode changes/);
    assert.doesNotMatch(e.message, CHANGED);
  });

  it("the explanation of ENOENT weighs only the registrations the range covers, each by its mode", T, () => {
    const unmappedEnoent = (regs: [number, { missing?: boolean; wp?: boolean }][], page: number, n = 1) => {
      using uffd = Userfaultfd.open({ features: ["WP_UNPOPULATED"] });
      using mem = Mapping.anonymous(3 * PS);
      for (const [p, mode] of regs) uffd.register({ start: mem.start + p * PS, len: PS }, mode);
      libc.munmap(mem.start + page * PS, n * PS); // behind the library's back
      return thrown(() => uffd.zeropage({ start: mem.start + page * PS, len: n * PS }), "zeropage");
    };
    const WP = { missing: false, wp: true };
    const MISSING = { missing: true };
    // One wp-only registration (mode 2): changed (kills `let mode = +1`).
    assert.match(unmappedEnoent([[1, WP]], 1).message, CHANGED);
    // Registrations of another mode right before and right after do not count (kills the skip's
    // `if (false)`, `&&`, `r.end < start` and `r.start > end`).
    assert.match(unmappedEnoent([[0, WP], [1, MISSING], [2, WP]], 1).message, CHANGED);
    // Two separate registrations of the same mode are not mixed (kills `r.mode !== mode` -> true).
    assert.match(unmappedEnoent([[0, MISSING], [1, MISSING]], 0, 2).message, CHANGED);
  });

  it("UFFDIO_MOVE's ENOENT (a hole at the source) is never explained as a changed mapping", T, () => {
    using uffd = Userfaultfd.open({ features: ["MOVE"] });
    using mem = Mapping.anonymous(PS);
    using src = Mapping.anonymous(PS);
    uffd.register(mem);
    const e = thrown(() => uffd.move({ start: mem.start, len: PS, src: src.start }), "move from a hole");
    assert.equal(e.code, "ENOENT");
    assert.doesNotMatch(e.message, CHANGED); // kills `op !== "UFFDIO_MOVE"` -> true
  });

  it("an ioctl's result is read from its own field, whatever the field before it holds", T, () => {
    const s = new U64Struct("uffdio_range", ["start", "len"]);
    s.set("start", 0x7f12_3456_7000).set("len", 3 * PS);
    assert.equal(s.get("len"), 3 * PS); // kills `words[i - 1]`
    assert.equal(s.get("start"), 0x7f12_3456_7000);
  });
});

describe("mutants: served memory through a Worker", () => {
  it("a Peeker reads what a COPY placed and fails with a deadline on a fault nobody serves", T, () => {
    using uffd = Userfaultfd.open();
    using mem = Mapping.anonymous(2 * PS);
    uffd.register(mem);
    uffd.copy({ start: mem.start, len: PS, src: new Uint8Array(PS).fill(9) });
    using pk = new Peeker();
    assert.equal(pk.byte(mem.start + 5), 9);
    const t0 = Date.now();
    assert.throws(() => pk.byte(mem.start + PS, 300), /no answer within 300 ms/);
    assert.ok(Date.now() - t0 < 5000, "the deadline, not the test's timeout");
  });
});
