// Ports of the kernel's userfaultfd unit tests (tools/testing/selftests/mm/uffd-unit-tests.c):
// register-ioctls, zeropage, move, move-pmd, move-pmd-split, mmap-changing. Same names and memory
// types, "<mem>/<name>", on the memory types the kernel runs each on, at the kernel's 32 MiB areas.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { ioctl, Mapping, pageSize, rawIoctl, UffdError, Userfaultfd } from "../mod.ts";
import {
  areaPages,
  caseSkipReason,
  fillPatterns,
  KERNEL_FEATURES,
  MEM_TYPES,
  type MemType,
  pmdPageSize,
  readProcFile,
  skipOpt,
  sleep,
  smapsField,
  threadState,
  tryAllocArea,
} from "./helpers/selftest_common.ts";
import { SelftestWorker, serveWhile } from "./helpers/selftest_worker_client.ts";
import type { Expect } from "./helpers/selftest_worker.ts";

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

/** Has `worker` check pages `[0, n)` at `addr` (the test's thread never reads registered memory). */
async function checkPages(
  worker: SelftestWorker,
  addr: number,
  n: number,
  ps: number,
  expect: Expect,
  what: string,
): Promise<void> {
  worker.send({ op: "check", addr, n, ps, expect });
  const r = await worker.next(10000, what);
  assert.equal(r.type, "checked");
  if (r.type !== "checked") return;
  assert.deepEqual(r.errors, [], what);
  assert.equal(r.pages, n);
}

/** register-ioctls opens its descriptor with the kernel test's required features. */
const REGISTER_FEATURES = [...KERNEL_FEATURES["register-ioctls"]];

describe("selftests: register-ioctls", () => {
  for (const mt of MEM_TYPES) {
    const name = `${mt}/register-ioctls`;
    it(name, { timeout: 20000, ...skipOpt(name, caseSkipReason("register-ioctls", mt)) }, (t) => {
      const n = areaPages(mt);
      if (typeof n === "string") return t.skip(n);
      const area = tryAllocArea(mt, n, false);
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
              // The library refuses "no mode", so ask the kernel directly with mode 0.
              const reg = new Uint8Array(32);
              const dv = new DataView(reg.buffer);
              dv.setUint32(0, range.start % 2 ** 32, true);
              dv.setUint32(4, Math.floor(range.start / 2 ** 32), true);
              dv.setUint32(8, range.len, true);
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
    it(name, { timeout: 20000, ...skipOpt(name, caseSkipReason("zeropage", mt)) }, async (t) => {
      const n = areaPages(mt);
      if (typeof n === "string") return t.skip(n);
      const area = tryAllocArea(mt, n);
      if (typeof area === "string") return t.skip(area);
      using _a = { [Symbol.dispose]: () => area.close() };
      using uffd = Userfaultfd.open();
      const ps = area.ps;
      const dst = { start: area.dst.start, len: ps };
      const reg = uffd.register(dst, { missing: true });
      const hasZeropage = reg.ioctls.includes("ZEROPAGE");
      // The kernel offers UFFDIO_ZEROPAGE on anonymous and shmem memory, not on hugetlb.
      assert.equal(hasZeropage, !mt.startsWith("hugetlb"), `ioctls: ${reg.ioctls.join(",")}`);
      if (area.alias) uffd.register({ start: area.alias.start, len: ps }, { missing: true });
      if (hasZeropage) {
        assert.equal(uffd.zeropage(dst), ps);
        // retry_uffdio_zeropage: the page now exists (seen through the alias for shared memory,
        // the same page cache; on private memory the alias_mapping op keeps area_dst).
        const again = area.alias ? { start: area.alias.start, len: ps } : dst;
        const e = expectKernelError(() => uffd.zeropage(again), "EEXIST", "second zeropage");
        assert.equal(e.result, -17);
        const worker = new SelftestWorker();
        try {
          await checkPages(worker, dst.start, 1, ps, { kind: "zero" }, "zeropage left non-zero data");
        } finally {
          worker.close();
        }
      } else {
        const e = expectKernelError(() => uffd.zeropage(dst), "EINVAL", "zeropage on hugetlb");
        assert.equal(e.result, -22, "the zeropage field carries -EINVAL");
      }
      uffd.unregister(dst);
      if (area.alias) uffd.unregister({ start: area.alias.start, len: ps });
    });
  }
});

type MoveTest = "move" | "move-pmd" | "move-pmd-split";

/** THP memory of the mapping holding `addr`, for the report line. */
function thpMiB(addr: number): string {
  const kb = smapsField(addr, "AnonHugePages");
  return kb === undefined ? "?" : `${kb / 1024} MiB`;
}

/** Why the move-pmd tests cannot run here, or undefined. */
function thpSkipReason(): string | undefined {
  if (pmdPageSize() === 0) return "no transparent huge pages (hpage_pmd_size unreadable)";
  const mode = readProcFile("/sys/kernel/mm/transparent_hugepage/enabled")?.match(/\[(\w+)\]/)?.[1];
  if (mode === "never") return "transparent huge pages are disabled (transparent_hugepage/enabled is never)";
  return undefined;
}

/**
 * uffd_move_test_common(): area_src holds the pattern, area_dst is registered missing; each
 * fault moves one chunk (a page, or a whole PMD for move-pmd*) with UFFDIO_MOVE
 * (MODE_ALLOW_SRC_HOLES, as move_page() does), and the faulting side checks the source before,
 * the destination, and the emptied source after. The chunk count equals the missing faults.
 */
async function moveTest(test: MoveTest): Promise<void> {
  const ps = pageSize;
  const n = areaPages("anon") as number;
  const chunk = test === "move" ? ps : pmdPageSize();
  // post_alloc: prevent_hugepages() (move) or request_hugepages() (move-pmd*) on area_src;
  // move-pmd asks for THP on area_dst too, move-pmd-split forbids it there.
  using src = Mapping.anonymous(n * ps, { noHugepage: test === "move" });
  using dst = Mapping.anonymous(n * ps, { noHugepage: test !== "move-pmd" });
  const MADV_HUGEPAGE = 14;
  if (test !== "move") src.madvise(MADV_HUGEPAGE);
  if (test === "move-pmd") dst.madvise(MADV_HUGEPAGE);
  fillPatterns(src.bytes(), n, ps);
  using uffd = Userfaultfd.open({ features: ["MOVE"], nonBlocking: true });
  uffd.register(dst, { missing: true });
  const stepPages = chunk / ps;
  let steps = n / stepPages;
  let srcStart = src.start;
  let dstStart = dst.start;
  let srcOffs = 0;
  if (chunk > ps) {
    const alignUp = (a: number) => Math.ceil(a / chunk) * chunk;
    if (alignUp(src.start) !== src.start || alignUp(dst.start) !== dst.start) {
      srcStart = alignUp(src.start);
      dstStart = alignUp(dst.start);
      srcOffs = (srcStart - src.start) / ps;
      steps--;
    }
  }
  const srcThp = chunk > ps ? thpMiB(src.start) : "";
  const worker = new SelftestWorker();
  let missingFaults = 0;
  let served = false;
  try {
    worker.send({ op: "move", src: srcStart, dst: dstStart, ps, stepPages, steps, srcOffs });
    const faults = serveWhile(uffd, worker, 20000, (flags, address) => {
      // uffd_move_handle_fault_common: no WP, MINOR or WRITE flag on these faults
      assert.equal(flags, 0, `fault at 0x${address.toString(16)}: unexpected flags ${flags}`);
      const offset = Math.floor((address - dstStart) / chunk) * chunk;
      try {
        const moved = uffd.move({
          start: dstStart + offset,
          src: srcStart + offset,
          len: chunk,
          allowSrcHoles: true,
        });
        assert.equal(moved, chunk, "UFFDIO_MOVE moved the whole chunk");
        missingFaults++;
      } catch (e) {
        if (!(e instanceof UffdError) || e.code !== "EEXIST") throw e;
        uffd.wake({ start: dstStart + offset, len: chunk });
      }
    });
    const r = await worker.next(10000, "move loop");
    served = true;
    assert.equal(r.type, "checked");
    if (r.type !== "checked") return;
    assert.deepEqual(r.errors, []);
    assert.equal(r.pages, steps * stepPages);
    assert.equal(missingFaults, steps, "one missing fault per chunk (stats check)");
    assert.equal(faults, steps);
    if (chunk > ps) {
      console.log(
        `anon/${test}: ${steps} PMDs of ${chunk >> 20} MiB moved; THP in area_src before ${srcThp}, ` +
          `in area_dst after ${thpMiB(dst.start)}`,
      );
    }
  } finally {
    if (!served) {
      uffd.close();
      await worker.next(5000, "worker after close").catch(() => {});
    }
    worker.close();
  }
}

describe("selftests: move", () => {
  for (const test of ["move", "move-pmd", "move-pmd-split"] as const) {
    const name = `anon/${test}`;
    const reason = caseSkipReason(test, "anon") ?? (test === "move" ? undefined : thpSkipReason());
    it(name, { timeout: 30000, ...skipOpt(name, reason) }, () => moveTest(test));
  }
});

/** A zeroed uffdio_* struct of `size` bytes whose result field (at `field`) holds 1. */
function zeroedArgs(size: number, field: number): Uint8Array {
  const b = new Uint8Array(size);
  b[field] = 1;
  return b;
}

describe("selftests: mmap-changing", () => {
  const mt: MemType = "shmem";
  const name = `${mt}/mmap-changing`;
  it(name, { timeout: 20000, ...skipOpt(name, caseSkipReason("mmap-changing", mt)) }, async () => {
    const n = areaPages(mt) as number;
    const area = tryAllocArea(mt, n);
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
      // The kernel's DEFINE_MMAP_CHANGING_TEST: a zeroed struct (empty range at address 0) whose
      // result field holds 1. EAGAIN comes before any range validation, so it must answer EAGAIN
      // with -EAGAIN written into the field. The library refuses an empty range before the
      // syscall (a typed EINVAL), so these go to the kernel as raw ioctls.
      const raw: [string, number, number, number][] = [
        ["UFFDIO_COPY", ioctl.UFFDIO_COPY, 40, 32],
        ["UFFDIO_ZEROPAGE", ioctl.UFFDIO_ZEROPAGE, 32, 24],
        ["UFFDIO_MOVE", ioctl.UFFDIO_MOVE, 40, 32],
        ["UFFDIO_POISON", ioctl.UFFDIO_POISON, 32, 24],
        ["UFFDIO_CONTINUE", ioctl.UFFDIO_CONTINUE, 32, 24],
      ];
      for (const [op, req, size, field] of raw) {
        const args = zeroedArgs(size, field);
        const r = rawIoctl(uffd.fd, req, args);
        assert.equal(r.result, -1, `${op} (zeroed range) should have returned -1`);
        assert.equal(r.errno, 11, `${op} (zeroed range) should have errno==EAGAIN, got ${r.errno}`);
        const dv = new DataView(args.buffer);
        assert.equal(
          dv.getInt32(field, true),
          -11,
          `${op} (zeroed range) should have been updated for -EAGAIN`,
        );
        assert.equal(dv.getInt32(field + 4, true), -1, `${op}: the result field is a negative 64-bit number`);
      }
      // The same through the library with valid ranges: EAGAIN, -EAGAIN in the error's result.
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
});
