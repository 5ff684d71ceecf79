// Ports of the kernel's userfaultfd unit tests (tools/testing/selftests/mm/uffd-unit-tests.c):
// sigbus, sigbus-wp, poison. Same names and memory types, "<mem>/<name>". Each runs twice:
//  1. as the kernel does, at its sizes: tests/fixtures/selftest_process is the faulting process
//     (it survives each SIGBUS with siglongjmp, and forks), and this test, holding its
//     userfaultfd (pidfd_getfd), does the rest through the library: register, the COPY or
//     unprotect that each SIGBUS asks for, UFFDIO_POISON in mode 0 (which wakes the faulter),
//     the fork event;
//  2. in JavaScript processes (tests/children/selftest_*.ts) that must die of the SIGBUS, since a
//     JavaScript runtime cannot survive one: the library on this runtime, page by page.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { type FeatureName, Mapping, type Range, type Userfaultfd } from "../mod.ts";
import { type ChildResult, runChild } from "./helpers/child.ts";
import { C, FORK_SIGBUS, ProcFixture, Q } from "./helpers/selftest_fork.ts";
import {
  areaPages,
  buildFixture,
  caseSkipReason,
  fillPatterns,
  isHugetlb,
  MEM_TYPES,
  type MemType,
  pageSizeOf,
  parseKv,
  skipOpt,
  testsPath,
} from "./helpers/selftest_common.ts";

const SIGBUS_CHILD = testsPath("children/selftest_sigbus.ts");
const POISON_CHILD = testsPath("children/selftest_poison.ts");

function show(r: ChildResult): string {
  return `status=${r.status} signal=${r.signal}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr.slice(-2000)}`;
}

/** True when the child could not get its huge pages (someone else took them): skip. */
function hugeTaken(mt: MemType, r: ChildResult): boolean {
  return isHugetlb(mt) && r.status !== 0 && /ENOMEM/.test(r.stderr) && !r.stdout.includes("registered=1");
}

function sigbusStep(mt: MemType, wp: boolean, step: string): ChildResult {
  return runChild(SIGBUS_CHILD, [mt, wp ? "1" : "0", step], 15000);
}

const processFixture = buildFixture("selftest_process");

/**
 * uffd_sigbus_test_common() at the kernel's size: signal_test 1 in the fixture (each page of the
 * first half raises SIGBUS; this test copies it, MODE_WP with -wp, and for -wp unprotects it on
 * the second SIGBUS of the write back; "Signal repeated" is checked there), release_pages, then
 * signal_test 2 in a forked child (EVENT_FORK) while this test is the monitor: every page raises
 * SIGBUS again and no userfault reaches either descriptor. Returns a skip reason.
 */
async function sigbusKernelLeg(mt: MemType, wp: boolean, n: number): Promise<string | undefined> {
  if ("skip" in processFixture) return processFixture.skip;
  const ps = pageSizeOf(mt);
  const features: FeatureName[] = ["SIGBUS", "EVENT_FORK"];
  if (wp) features.push("PAGEFAULT_FLAG_WP", "WP_HUGETLBFS_SHMEM");
  const p = await ProcFixture.start(processFixture.path, mt, ps, n, features);
  if (typeof p === "string") return p;
  const opened: Userfaultfd[] = [];
  const split = Math.floor((n + 1) / 2);
  using src = Mapping.anonymous(split * ps);
  fillPatterns(src.bytes(), split, ps);
  try {
    const uffd = p.uffd;
    uffd.register({ start: p.area, len: n * ps }, { missing: true, wp });
    // signal_test 1: the fixture asks for a COPY after each missing-page SIGBUS ...
    p.send(C.SIGBUS, wp ? 1 : 0);
    let copies = 0;
    let unprotects = 0;
    for (;;) {
      const m = p.recv(10000, "signal_test 1");
      if (m[0] === Q.DONE) {
        assert.equal(m[1], split, `signalled ${m[1]} of ${split} pages`);
        assert.equal(m[2], 0, `nr ${m[3]} memory corruption`);
        break;
      }
      const page: Range = { start: p.area + m[1] * ps, len: ps };
      if (m[0] === Q.NEED_COPY) {
        assert.equal(uffd.copy({ ...page, src: src.start + m[1] * ps, wp }), ps);
        copies++;
      } else {
        // ... and with -wp an unprotect after the SIGBUS of the write back (a wp fault)
        assert.equal(m[0], Q.NEED_UNPROTECT);
        assert.ok(wp, "a write raised SIGBUS without wp mode");
        uffd.writeprotect({ ...page, wp: false });
        unprotects++;
      }
      p.send(C.ACK, 1);
    }
    assert.equal(copies, split);
    assert.equal(unprotects, wp ? split : 0);
    assert.equal(uffd.readEvent({ timeout: 0 }), undefined, "SIGBUS mode never queues a userfault");
    assert.equal(p.call(C.RELEASE, 0, 0, 0, "release_pages")[0], Q.OK);
    // signal_test 2 in a forked child, with this test as the monitor
    p.send(C.FORK, FORK_SIGBUS);
    const ev = uffd.readEvent({ timeout: 5000 });
    assert.ok(ev && ev.type === "fork", `want the fork event, got ${JSON.stringify(ev)}`);
    assert.ok(ev.uffd, "the fork event carries the child's Userfaultfd");
    opened.push(ev.uffd);
    assert.equal(p.recv(5000, "fork")[0], Q.CHILD);
    const done = p.recv(20000, "faulting_process(2)");
    assert.equal(done[0], Q.DONE);
    assert.equal(done[1], split, `the child got SIGBUS on ${done[1]} of ${split} released pages`);
    const forked = p.recv(5000, "child exit");
    assert.equal(forked[0], Q.FORKED);
    assert.equal(forked[1], 0, "faulting process failed");
    assert.equal(ev.uffd.readEvent({ timeout: 0 }), undefined, "no userfault on the child's descriptor");
    assert.equal(uffd.readEvent({ timeout: 0 }), undefined, "no userfault on the parent's descriptor");
    p.send(C.EXIT);
    return undefined;
  } finally {
    for (const u of opened) u.close();
    await p.close();
  }
}

for (const wp of [false, true]) {
  const scenario = wp ? "sigbus-wp" : "sigbus";
  describe(`selftests: ${scenario}`, () => {
    for (const mt of MEM_TYPES) {
      const name = `${mt}/${scenario}`;
      it(name, { timeout: 60000, ...skipOpt(name, caseSkipReason(scenario, mt)) }, async (t) => {
        const n = areaPages(mt);
        if (typeof n === "string") return t.skip(n);
        const skipped = await sigbusKernelLeg(mt, wp, n);
        if (skipped) return t.skip(skipped);

        // In a JavaScript process, signal_test 1's first touch: a missing page raises SIGBUS,
        // not a userfault.
        let r = sigbusStep(mt, wp, "missing");
        if (hugeTaken(mt, r)) return t.skip("huge pages taken by someone else");
        assert.equal(r.signal, "SIGBUS", show(r));
        let kv = parseKv(r.stdout);
        assert.equal(kv.touch, "1", show(r));
        assert.equal(kv.value, undefined, "the read must not complete");

        // After UFFDIO_COPY (with MODE_WP for -wp) the read works; writing it back is a wp
        // fault, which in SIGBUS mode is a SIGBUS too.
        r = sigbusStep(mt, wp, "copy");
        kv = parseKv(r.stdout);
        assert.equal(kv.read_ok, "1", show(r));
        assert.equal(Number(kv.copied), pageSizeOf(mt), show(r));
        assert.equal(kv.write, "1");
        if (wp) {
          assert.equal(r.signal, "SIGBUS", show(r));
          assert.equal(kv.write_ok, undefined, "the write to a protected page must not complete");
          // ... and after unprotecting, the write goes through.
          r = sigbusStep(mt, wp, "unprotect");
          kv = parseKv(r.stdout);
          assert.equal(r.status, 0, show(r));
          assert.equal(kv.write_ok, "1", show(r));
        } else {
          assert.equal(r.status, 0, show(r));
          assert.equal(kv.write_ok, "1", show(r));
        }
        assert.equal(kv.events, "0", "SIGBUS mode never queues a userfault");

        // signal_test 2: released pages raise SIGBUS again.
        r = sigbusStep(mt, wp, "released");
        kv = parseKv(r.stdout);
        assert.equal(kv.read_ok, "1", show(r));
        assert.equal(kv.released, "1", show(r));
        assert.equal(r.signal, "SIGBUS", show(r));
        assert.equal(kv.value, undefined, "the read of a released page must not complete");
      });
    }
  });
}

/** UFFD_POISON_TEST_NPAGES: "make sure to cover odd/even, and minimum duplications". */
const POISON_PAGES = 4;

/**
 * uffd_poison_test() as the kernel runs it: the fixture reads pages 0-3 in one process; this
 * test resolves odd pages with a COPY of zeros and poisons even ones with UFFDIO_POISON in mode
 * 0, which wakes the faulter: its retry raises SIGBUS, which it survives, so it takes
 * nr_pages / 2 SIGBUS in one process. Returns a skip reason.
 */
async function poisonKernelLeg(mt: MemType, n: number): Promise<string | undefined> {
  if ("skip" in processFixture) return processFixture.skip;
  const ps = pageSizeOf(mt);
  const p = await ProcFixture.start(processFixture.path, mt, ps, n, ["POISON"]);
  if (typeof p === "string") return p;
  using zero = Mapping.anonymous(POISON_PAGES * ps); // memset(area_src, 0)
  try {
    const uffd = p.uffd;
    // uffd_register_poison(): missing mode on the 4 pages; COPY and POISON offered
    const reg = uffd.register({ start: p.area, len: POISON_PAGES * ps }, { missing: true });
    assert.ok(reg.ioctls.includes("COPY") && reg.ioctls.includes("POISON"), reg.ioctls.join(","));
    p.send(C.POISON, POISON_PAGES);
    const seen: number[] = [];
    let done: Int32Array | undefined;
    const deadline = Date.now() + 10000;
    while (!done) {
      assert.ok(Date.now() < deadline, `no answer from the poison loop within 10 s (faults ${seen})`);
      const ready = p.waitEither(100);
      if (ready & 2) {
        const ev = uffd.readEvent({ timeout: 0 });
        if (ev) {
          assert.ok(ev.type === "pagefault", `unexpected msg event ${JSON.stringify(ev)}`);
          assert.equal(ev.kind, "missing", `unexpected fault type ${ev.flags}`);
          const nr: number = (ev.address - p.area) / ps;
          seen.push(nr);
          const page: Range = { start: p.area + nr * ps, len: ps };
          // Odd pages -> copy zeroed page; even pages -> poison (mode 0: the faulter wakes).
          if (nr % 2 === 1) assert.equal(uffd.copy({ ...page, src: zero.start + nr * ps }), ps);
          else assert.equal(uffd.poison(page), ps, "UFFDIO_POISON unexpected size");
        }
      }
      if (ready & 1) done = Int32Array.from(p.recv(0, "poison loop"));
    }
    assert.equal(done[0], Q.DONE);
    assert.equal(done[2], 0, "nonzero byte in area_dst");
    assert.equal(
      done[1],
      POISON_PAGES / 2,
      `expected to receive ${POISON_PAGES / 2} SIGBUS, actually received ${done[1]}`,
    );
    assert.deepEqual(seen, [0, 1, 2, 3], "one missing fault per page, in order");
    assert.equal(uffd.readEvent({ timeout: 0 }), undefined, "touching a poisoned page raises no userfault");
    p.send(C.EXIT);
    return undefined;
  } finally {
    await p.close();
  }
}

describe("selftests: poison", () => {
  for (const mt of MEM_TYPES) {
    const name = `${mt}/poison`;
    it(name, { timeout: 60000, ...skipOpt(name, caseSkipReason("poison", mt, POISON_PAGES)) }, async (t) => {
      const n = areaPages(mt, POISON_PAGES);
      if (typeof n === "string") return t.skip(n);
      const skipped = await poisonKernelLeg(mt, n);
      if (skipped) return t.skip(skipped);

      // The same in JavaScript processes, with UFFDIO_POISON DONTWAKE then UFFDIO_WAKE: odd pages
      // get a zeroed page, even pages are poisoned; each run ends at a poisoned page.
      const ps = pageSizeOf(mt);
      let sigbus = 0;
      const zeroPages = new Set<number>();
      for (const list of ["1,3,0", "2"]) {
        const r = runChild(POISON_CHILD, [mt, String(POISON_PAGES), list], 15000);
        if (hugeTaken(mt, r)) return t.skip("huge pages taken by someone else");
        const lines = r.stdout.split("\n");
        const ioctls = lines.find((l) => l.startsWith("ioctls="));
        assert.ok(ioctls?.includes("COPY") && ioctls.includes("POISON"), `register ioctls: ${show(r)}`);
        const pages = list.split(",").map(Number);
        for (const k of pages) {
          assert.ok(
            lines.includes(`fault=${k} kind=missing write=0 address_ok=1`),
            `page ${k}: a missing read fault at its address\n${show(r)}`,
          );
          if (k % 2 === 1) {
            const copied = lines.find((l) => l.startsWith(`copied=${k} `));
            assert.ok(copied && Number(copied.split("bytes=")[1]) === ps, show(r));
            assert.ok(lines.includes(`zero=${k} ok=1`), `page ${k} reads as zeros\n${show(r)}`);
            zeroPages.add(k);
          }
        }
        const poisoned = pages[pages.length - 1];
        const p = lines.find((l) => l.startsWith(`poisoned=${poisoned} `));
        assert.ok(p, `page ${poisoned} was poisoned\n${show(r)}`);
        const updated = Number(p.split("updated=")[1]);
        assert.equal(updated, ps, "UFFDIO_POISON updated one page");
        assert.equal(r.signal, "SIGBUS", `touching the poisoned page raises SIGBUS\n${show(r)}`);
        assert.ok(!r.stdout.includes("survived="), show(r));
        sigbus++;
      }
      assert.equal(sigbus, POISON_PAGES / 2, "nr_sigbus == nr_pages / 2");
      assert.equal(zeroPages.size, POISON_PAGES / 2);
    });
  }
});
