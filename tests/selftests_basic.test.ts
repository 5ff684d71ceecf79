// Ports of the kernel's userfaultfd unit tests (tools/testing/selftests/mm/uffd-unit-tests.c):
// register-ioctls, zeropage, move, mmap-changing. Same scenario names, "<mem>/<name>".
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { type FeatureName, ioctl, Mapping, rawIoctl, UffdError, Userfaultfd } from "../mod.ts";
import { Toucher, within } from "./helpers/toucher.ts";
import {
  fillPattern,
  findByteMismatch,
  findPatternMismatch,
  MEM_TYPES,
  memSkipReason,
  skipOpt,
  sleep,
  threadState,
  tryAllocArea,
} from "./helpers/selftest_common.ts";
import { SelftestWorker } from "./helpers/selftest_worker_client.ts";
import { peek } from "./helpers/peek.ts";

/** Expects `fn` to throw a kernel UffdError with errno `code`; returns it. */
function expectKernelError(fn: () => unknown, code: string, what: string): UffdError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof UffdError, `${what}: not a UffdError: ${e}`);
    assert.equal(e.code, code, `${what}: ${e.message}`);
    assert.equal(e.source, "kernel", `${what}: rejected by the library, not the kernel: ${e.message}`);
    return e;
  }
  assert.fail(`${what}: succeeded, expected ${code}`);
}

const REGISTER_FEATURES: FeatureName[] = [
  "MISSING_HUGETLBFS",
  "MISSING_SHMEM",
  "PAGEFAULT_FLAG_WP",
  "WP_HUGETLBFS_SHMEM",
  "MINOR_HUGETLBFS",
  "MINOR_SHMEM",
];

describe("selftests: register-ioctls", () => {
  for (const mt of MEM_TYPES) {
    const name = `${mt}/register-ioctls`;
    it(name, { timeout: 20000, ...skipOpt(name, memSkipReason(mt, 1)) }, (t) => {
      const area = tryAllocArea(mt, 1, false);
      if (typeof area === "string") return t.skip(area);
      using _a = { [Symbol.dispose]: () => area.close() };
      using uffd = Userfaultfd.open({ features: REGISTER_FEATURES });
      const range = { start: area.dst.start, len: area.ps };
      let combos = 0;
      for (const miss of [false, true]) {
        for (const wp of [false, true]) {
          for (const minor of [false, true]) {
            const what = `register(miss=${miss}, wp=${wp}, minor=${minor})`;
            if (!miss && !wp && !minor) {
              // The library maps "no mode" to MISSING, so ask the kernel directly with mode 0.
              const reg = new Uint8Array(32);
              const dv = new DataView(reg.buffer);
              dv.setBigUint64(0, BigInt(range.start), true);
              dv.setBigUint64(8, BigInt(range.len), true);
              dv.setBigUint64(16, 0n, true);
              const r = rawIoctl(uffd.fd, ioctl.UFFDIO_REGISTER, reg);
              assert.equal(r.result, -1, `${what}: mode 0 must fail`);
              assert.equal(r.errno, 22, `${what}: errno ${r.errno}, want EINVAL`);
              combos++;
              continue;
            }
            if (minor && mt === "anon") {
              expectKernelError(() => uffd.register(range, { missing: miss, wp, minor }), "EINVAL", what);
              combos++;
              continue;
            }
            const res = uffd.register(range, { missing: miss, wp, minor });
            const expected = [
              "WAKE",
              ...(miss ? ["COPY"] : []),
              ...(wp ? ["WRITEPROTECT"] : []),
              ...(minor ? ["CONTINUE"] : []),
            ];
            for (const name of expected) {
              assert.ok(
                res.ioctls.includes(name as never),
                `${what}: ioctls ${res.ioctls.join(",")} lack ${name}`,
              );
            }
            uffd.unregister(range);
            combos++;
          }
        }
      }
      assert.equal(combos, 8);
    });
  }
});

describe("selftests: zeropage", () => {
  for (const mt of MEM_TYPES) {
    const name = `${mt}/zeropage`;
    it(name, { timeout: 20000, ...skipOpt(name, memSkipReason(mt, 1)) }, (t) => {
      const area = tryAllocArea(mt, 1);
      if (typeof area === "string") return t.skip(area);
      using _a = { [Symbol.dispose]: () => area.close() };
      using uffd = Userfaultfd.open();
      const ps = area.ps;
      const dst = { start: area.dst.start, len: ps };
      const reg = uffd.register(dst, { missing: true });
      const hasZeropage = reg.ioctls.includes("ZEROPAGE");
      // The kernel offers UFFDIO_ZEROPAGE on anonymous and shmem memory, not on hugetlb.
      assert.equal(hasZeropage, mt !== "hugetlb", `ioctls: ${reg.ioctls.join(",")}`);
      if (area.alias) uffd.register({ start: area.alias.start, len: ps }, { missing: true });
      if (hasZeropage) {
        assert.equal(uffd.zeropage(dst), ps);
        // retry_uffdio_zeropage: the page now exists (through the alias for shmem: same page cache).
        const again = area.alias ? { start: area.alias.start, len: ps } : dst;
        const e = expectKernelError(() => uffd.zeropage(again), "EEXIST", "second zeropage");
        assert.equal(e.result, -17);
        assert.equal(findByteMismatch(peek(area.dst.start, ps), 0, ps, 0), -1, "zeropage left non-zero data");
      } else {
        const e = expectKernelError(() => uffd.zeropage(dst), "EINVAL", "zeropage on hugetlb");
        assert.equal(e.result, -22, "the zeropage field carries -EINVAL");
      }
      uffd.unregister(dst);
      if (area.alias) uffd.unregister({ start: area.alias.start, len: ps });
    });
  }
});

describe("selftests: move", () => {
  for (const mt of MEM_TYPES) {
    const name = `${mt}/move`;
    if (mt !== "anon") {
      it(
        name,
        skipOpt(
          name,
          "uffd-unit-tests.c runs move on anon only (UFFDIO_MOVE needs private anonymous memory)",
        ),
        () => {},
      );
      continue;
    }
    it(name, { timeout: 20000 }, async () => {
      const n = 16;
      const area = tryAllocArea("anon", n);
      if (typeof area === "string") throw new Error(area);
      using _a = { [Symbol.dispose]: () => area.close() };
      const ps = area.ps;
      using src = Mapping.anonymous(n * ps); // MADV_NOHUGEPAGE by default: prevent_hugepages()
      for (let i = 0; i < n; i++) fillPattern(src.bytes(), i, ps);
      using uffd = Userfaultfd.open({ features: ["MOVE"], nonBlocking: true });
      uffd.register(area.dst, { missing: true });
      const toucher = new Toucher();
      let missingFaults = 0;
      let touch: Promise<unknown> | undefined;
      try {
        touch = toucher.read(area.dst.start, n * ps);
        for (let i = 0; i < n; i++) {
          const ev = uffd.readEvent({ timeout: 2000 });
          assert.ok(ev, `no fault for page ${i}`);
          assert.equal(ev.type, "pagefault");
          if (ev.type !== "pagefault") return;
          assert.equal(ev.kind, "missing");
          assert.equal(ev.write, false, "a read fault must not carry the WRITE flag");
          assert.equal(ev.address, area.dst.page(i), `fault ${i} address`);
          const off: number = ev.address - area.dst.start;
          assert.equal(uffd.move({ start: ev.address, src: src.start + off, len: ps }), ps);
          missingFaults++;
        }
        await within(touch, 5000, "toucher");
      } finally {
        uffd.close();
        if (touch) await within(touch, 5000, "toucher after close").catch(() => {});
        toucher.close();
      }
      assert.equal(missingFaults, n);
      for (let i = 0; i < n; i++) {
        assert.equal(findPatternMismatch(area.dst.bytes(), i, ps), -1, `dst page ${i} content`);
        // The source page was moved, not copied: the source reads as empty now.
        assert.equal(findByteMismatch(src.bytes(), i, ps, 0), -1, `src page ${i} not empty after move`);
      }
    });
  }
});

describe("selftests: mmap-changing", () => {
  for (const mt of MEM_TYPES) {
    const name = `${mt}/mmap-changing`;
    if (mt !== "shmem") {
      it(
        name,
        skipOpt(name, "uffd-unit-tests.c runs mmap-changing on shmem only (same code path for all)"),
        () => {},
      );
      continue;
    }
    it(name, { timeout: 20000 }, async () => {
      const n = 2;
      const area = tryAllocArea("shmem", n);
      if (typeof area === "string") throw new Error(area);
      using _a = { [Symbol.dispose]: () => area.close() };
      const ps = area.ps;
      using src = Mapping.anonymous(ps);
      using uffd = Userfaultfd.open({
        features: ["EVENT_REMOVE", "MOVE", "POISON", "MINOR_SHMEM"],
        nonBlocking: true,
      });
      uffd.register(area.dst, { missing: true });
      const worker = new SelftestWorker();
      let removeRead = false;
      let finished = false;
      try {
        // The other thread injects an event: madvise(MADV_REMOVE) hangs until the event is read.
        worker.send({ op: "madvise", addr: area.dst.start, len: ps, advice: 9 /* MADV_REMOVE */ });
        const tidMsg = await worker.next(5000, "worker tid");
        assert.equal(tidMsg.type, "tid");
        if (tidMsg.type !== "tid") return;
        const deadline = Date.now() + 5000;
        while (threadState(tidMsg.tid) !== "D") {
          assert.ok(
            Date.now() < deadline,
            `thread ${tidMsg.tid} never hung on the REMOVE event (state ${threadState(tidMsg.tid)})`,
          );
          await sleep(1);
        }
        // Every resolving ioctl must now answer EAGAIN, with -EAGAIN in its result field.
        const page = { start: area.dst.page(1), len: ps };
        const cases: [string, () => unknown][] = [
          ["UFFDIO_COPY", () => uffd.copy({ ...page, src: src.start })],
          ["UFFDIO_ZEROPAGE", () => uffd.zeropage(page)],
          ["UFFDIO_MOVE", () => uffd.move({ ...page, src: src.start })],
          ["UFFDIO_POISON", () => uffd.poison(page)],
          ["UFFDIO_CONTINUE", () => uffd.continue(page)],
        ];
        for (const [op, fn] of cases) {
          const e = expectKernelError(fn, "EAGAIN", op);
          assert.equal(e.op, op);
          assert.equal(e.result, -11, `${op}: result field should be -EAGAIN`);
          assert.equal(e.done, 0);
        }
        // Reading the event lets the thread roll again.
        const ev = uffd.readEvent({ timeout: 2000 });
        removeRead = true;
        assert.deepEqual(ev, { type: "remove", start: area.dst.start, end: area.dst.start + ps });
        const done = await worker.next(5000, "madvise");
        finished = true;
        assert.deepEqual(done, { type: "done", result: 0, errno: 0 });
        // Nothing changes any more: the same copy now works.
        assert.equal(uffd.copy({ ...page, src: src.start }), ps);
      } finally {
        if (!removeRead) uffd.close(); // releases the blocked madvise
        if (!finished) await worker.next(2000, "worker").catch(() => {});
        worker.close();
      }
    });
  }
});
