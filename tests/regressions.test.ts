// Behaviours that mutation testing found unchecked (issue 13): each test here fails when the
// behaviour breaks, within its own timeout (faults are raised from Workers, never this thread).
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { libc } from "../ffi/mod.ts";
import { Mapping, type PagefaultEvent, PagemapScanner, pageSize, UffdError, Userfaultfd } from "../mod.ts";
import { Toucher, within } from "./helpers/toucher.ts";
import { untilPending } from "./helpers/uffd_wait.ts";
import { peekByte, Peeker } from "./helpers/peek.ts";
import { runChild } from "./helpers/child.ts";

const T = { timeout: 20000 };
const PS = pageSize;

describe("regressions", () => {
  it(
    "a Worker that opens libc, terminated at once, before, while or after its FFI initializes, ends without taking the process with it (Node: koffi's init aborted the soak)",
    { timeout: 60000 },
    () => {
      const script = new URL("./children/worker_terminate_early.ts", import.meta.url).pathname;
      const r = runChild(script, ["96"], 50000);
      assert.equal(r.signal, null, `the process ended by ${r.signal}\n${r.stderr.slice(0, 2000)}`);
      assert.equal(r.status, 0, r.stderr.slice(0, 2000));
      assert.match(r.stdout, /ended 96/);
    },
  );

  it(
    "a scan that finds more written regions than its buffer holds continues past the first batch (walk_end)",
    T,
    () => {
      using uffd = Userfaultfd.open({ features: ["WP_ASYNC", "WP_UNPOPULATED"] });
      using mem = Mapping.anonymous(256 * PS);
      uffd.trackWrites(mem);
      const written = Array.from({ length: 40 }, (_, i) => i * 6 + 1); // 40 separate runs
      using pk = new Peeker(); // WP_ASYNC: the kernel resolves these writes itself, no event
      for (const p of written) pk.poke(mem.start + p * PS, Uint8Array.of(1));
      using scan = new PagemapScanner(4); // room for 4 regions per PAGEMAP_SCAN call
      const found = scan.scan(mem).map((r) => (r.start - mem.start) / PS);
      assert.deepEqual(found, written, "every run, across 10 batches of 4");
    },
  );

  it(
    "a range that starts inside a mapping and ends one page past it is refused before the syscall",
    T,
    () => {
      using uffd = Userfaultfd.open();
      using mem = Mapping.anonymous(4 * PS);
      using next = Mapping.anonymous(4 * PS); // a neighbour that a one-page overrun could reach
      void next;
      for (const len of [5 * PS, 4 * PS + PS]) {
        assert.throws(
          () => uffd.register({ start: mem.start, len }),
          (e: unknown) => e instanceof UffdError && e.source === "library" && e.code === "EINVAL",
        );
      }
      assert.throws(
        () => uffd.register({ start: mem.start + PS, len: 4 * PS }),
        (e: unknown) => e instanceof UffdError && e.source === "library",
      );
    },
  );

  it("a length that is not a whole number of pages is refused on a remote descriptor too", T, () => {
    using own = Userfaultfd.open();
    using remote = Userfaultfd.fromFd(libc.syscall(32, /* dup */ own.fd), 0, { remote: true });
    for (const op of ["copy", "zeropage", "wake"] as const) {
      const args = op === "copy"
        ? { start: 0x10000000, len: PS + 1, src: new Uint8Array(2 * PS) }
        : { start: 0x10000000, len: PS + 1 };
      assert.throws(
        // deno-lint-ignore no-explicit-any
        () => (remote as any)[op](args),
        (e: unknown) => e instanceof UffdError && e.source === "library" && e.code === "EINVAL",
        op,
      );
    }
  });

  it("a write fault on a missing page is a 'missing' fault with write set (not 'wp')", T, async () => {
    using uffd = Userfaultfd.open({ features: ["THREAD_ID"] });
    using mem = Mapping.anonymous(2 * PS);
    uffd.register(mem, { missing: true, wp: true });
    const t = new Toucher();
    try {
      const done = t.write(mem.page(1), 1, 7);
      await untilPending(uffd, 1);
      const ev = uffd.readEvent({ timeout: 1000 }) as PagefaultEvent;
      assert.equal(ev.type, "pagefault");
      assert.equal(ev.kind, "missing");
      assert.equal(ev.write, true);
      uffd.zeropage({ start: mem.page(1), len: PS });
      await within(done, 5000, "the writer");
      assert.equal(peekByte(mem.start + PS), 7);
    } finally {
      t.close();
    }
  });
});
