// Ports of the kernel's userfaultfd unit tests (tools/testing/selftests/mm/uffd-unit-tests.c):
// wp-unpopulated, wp-fork, wp-fork-with-event, wp-fork-pin, wp-fork-pin-with-event, minor,
// minor-wp, minor-collapse. Same names and memory types, "<mem>/<name>", at the kernel's sizes.
//
// The wp-fork tests need fork(), which a JavaScript runtime cannot do: the memory and the fork
// belong to tests/fixtures/selftest_process, and this test does the rest through the library on
// the fixture's userfaultfd (pidfd_getfd): register, writeprotect, the fork event, and the pagemap
// of the parent and of each child, read from /proc/<pid>/pagemap.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { gunzipSync } from "node:zlib";
import { type FeatureName, Mapping, UffdError, Userfaultfd } from "../mod.ts";
import { libc } from "../ffi/mod.ts";
import { Toucher, within } from "./helpers/toucher.ts";
import {
  areaPages,
  buildFixture,
  caseSkipReason,
  MEM_TYPES,
  type MemType,
  pagemapEntryOf,
  pagemapWp,
  pageSizeOf,
  pmdPageSize,
  readProcBytes,
  readProcFile,
  skipOpt,
  smapsField,
  tryAllocArea,
} from "./helpers/selftest_common.ts";
import { C, FORK_HOLD, ProcFixture, Q } from "./helpers/selftest_fork.ts";
import { SelftestWorker, serveWhile } from "./helpers/selftest_worker_client.ts";

describe("selftests: wp-unpopulated", () => {
  const name = "anon/wp-unpopulated";
  it(name, { timeout: 20000, ...skipOpt(name, caseSkipReason("wp-unpopulated", "anon")) }, async () => {
    const area = tryAllocArea("anon", areaPages("anon") as number);
    if (typeof area === "string") throw new Error(area);
    using _a = { [Symbol.dispose]: () => area.close() };
    using uffd = Userfaultfd.open({ features: ["PAGEFAULT_FLAG_WP", "WP_UNPOPULATED"], nonBlocking: true });
    uffd.register(area.dst, { wp: true });
    const ps = area.ps;
    const page = { start: area.dst.start, len: ps };
    // A pte marker on an unpopulated anonymous page.
    uffd.writeprotect({ ...page, wp: true });
    assert.equal(pagemapWp(page.start), true, "marker installed on an unpopulated page");
    // Unprotect on the marker.
    uffd.writeprotect({ ...page, wp: false });
    assert.equal(pagemapWp(page.start), false, "marker removed by unprotect");
    // Zap on the marker.
    uffd.writeprotect({ ...page, wp: true });
    area.dst.dontneed(0, ps);
    assert.equal(pagemapWp(page.start), false, "MADV_DONTNEED drops the marker");
    const toucher = new Toucher();
    let pending: Promise<unknown> | undefined;
    try {
      // Fault in after the marker was removed: no userfault, no wp bit.
      await within(toucher.write(page.start, 1, 1), 5000, "write after zap");
      assert.equal(uffd.readEvent({ timeout: 0 }), undefined, "no event for an unprotected page");
      assert.equal(pagemapWp(page.start), false);
      assert.equal((await within(toucher.read(page.start, 1), 5000, "read back")).first, 1);
      area.dst.dontneed(0, ps);
      // Read the zero page upon a marker: reads never raise a wp fault ...
      uffd.writeprotect({ ...page, wp: true });
      const r = await within(toucher.read(page.start, 1), 5000, "read on marker");
      assert.equal(r.first, 0);
      assert.equal(uffd.readEvent({ timeout: 0 }), undefined, "a read raises no wp fault");
      assert.equal(pagemapWp(page.start), true, "the zero page keeps the uffd-wp bit");
      // ... and (beyond the kernel test) the first write does.
      pending = toucher.write(page.start, 1, 7);
      const ev = uffd.readEvent({ timeout: 2000 });
      assert.ok(ev && ev.type === "pagefault", `want a wp fault, got ${JSON.stringify(ev)}`);
      assert.equal(ev.kind, "wp");
      assert.equal(ev.write, true);
      assert.equal(ev.address, page.start);
      uffd.writeprotect({ ...page, wp: false });
      await within(pending, 5000, "write after unprotect");
      pending = undefined;
      assert.equal((await within(toucher.read(page.start, 1), 5000, "read back")).first, 7);
      area.dst.dontneed(0, ps);
    } finally {
      uffd.close();
      if (pending) await within(pending, 5000, "toucher after close").catch(() => {});
      toucher.close();
    }
  });
});

let gupReason: string | undefined | null = null;

/**
 * Why /sys/kernel/debug/gup_test cannot be used, or undefined. As root, mounts debugfs first when
 * it is not mounted (`mount -t debugfs none /sys/kernel/debug`).
 */
function gupTestSkipReason(): string | undefined {
  if (gupReason !== null) return gupReason;
  const exists = (p: string) => {
    const fd = libc.open(new TextEncoder().encode(p + "\0"), 0o2000000, 0); // (statSync needs --allow-all in Deno)
    if (fd >= 0) libc.close(fd);
    return fd >= 0 || libc.errno() !== 2 /* ENOENT */;
  };
  const mounted = () =>
    / \/sys\/kernel\/debug debugfs /.test(readProcFile("/proc/self/mounts", 1 << 20) ?? "");
  if (!exists("/sys/kernel/debug/gup_test") && !mounted() && libc.syscall(102 /* getuid */) === 0) {
    spawnSync("mount", ["-t", "debugfs", "none", "/sys/kernel/debug"], { timeout: 5000 });
  }
  if (exists("/sys/kernel/debug/gup_test")) return gupReason = undefined;
  let config = "";
  try {
    const gz = readProcBytes("/proc/config.gz", 4 << 20);
    if (gz) config = new TextDecoder().decode(gunzipSync(gz));
  } catch {
    // not gzip
  }
  const why = !mounted()
    ? "debugfs is not mounted on /sys/kernel/debug (and mounting it needs root)"
    : /^# CONFIG_GUP_TEST is not set/m.test(config)
    ? "this kernel is built without it (/proc/config.gz: CONFIG_GUP_TEST is not set)"
    : "absent from debugfs";
  return gupReason = `needs /sys/kernel/debug/gup_test (CONFIG_GUP_TEST) for RO longterm pins: ${why}`;
}

const processFixture = buildFixture("selftest_process");

/**
 * uffd_wp_fork_test_common() and uffd_wp_fork_pin_test_common(), through the library on the
 * fixture's descriptor. Returns a skip reason when the test cannot run.
 */
async function wpForkTest(mt: MemType, withEvent: boolean, pin: boolean): Promise<string | undefined> {
  if ("skip" in processFixture) return processFixture.skip;
  const n = areaPages(mt);
  if (typeof n === "string") return n;
  const ps = pageSizeOf(mt);
  const features: FeatureName[] = ["PAGEFAULT_FLAG_WP", "WP_HUGETLBFS_SHMEM"];
  if (withEvent) features.push("EVENT_FORK"); // when set, the child inherits the uffd-wp bits
  const p = await ProcFixture.start(processFixture.path, mt, ps, n, features);
  if (typeof p === "string") return p;
  const children: Userfaultfd[] = [];
  const wp = () => {
    const e = pagemapEntryOf(p.pid, p.area);
    assert.ok(e, `pagemap of ${p.pid} unreadable`);
    return e.wp;
  };
  // pagemap_test_fork(): fork; the child's pagemap must show the bit only with EVENT_FORK.
  const testFork = (where: string, testPin: boolean) => {
    p.send(C.FORK, FORK_HOLD, testPin ? 1 : 0);
    if (withEvent) {
      // fork() returns in the fixture only once this reads UFFD_EVENT_FORK (fork_event_consumer)
      const ev = p.uffd.readEvent({ timeout: 5000 });
      assert.ok(ev && ev.type === "fork", `${where}: want UFFD_EVENT_FORK, got ${JSON.stringify(ev)}`);
      assert.ok(ev.uffd, "Didn't receive child uffd");
      children.push(ev.uffd);
    }
    const child = p.recv(5000, `fork (${where})`);
    assert.equal(child[0], Q.CHILD);
    const childPid = child[1];
    if (testPin) assert.equal(child[2], 0, `pin page failed in child (errno ${-child[2]})`);
    const e = pagemapEntryOf(childPid, p.area);
    assert.ok(e, `pagemap of child ${childPid} unreadable`);
    assert.equal(
      e.wp,
      withEvent,
      `Detected ${withEvent ? "missing" : "stall"} uffd-wp bit in child in ${where}`,
    );
    p.send(C.EXIT); // to the child
    const forked = p.recv(5000, `child exit (${where})`);
    assert.equal(forked[0], Q.FORKED);
    assert.equal(forked[1], 0, `the child exited with ${forked[1]}`);
    children.pop()?.close();
  };
  try {
    const uffd = p.uffd;
    // wp-fork registers the whole area, wp-fork-pin one page
    const registered = { start: p.area, len: pin ? ps : n * ps };
    uffd.register(registered, { wp: true });
    const page = { start: p.area, len: ps };
    // Touch the page, write-protect it: a present pte with the uffd-wp bit.
    assert.equal(p.call(C.TOUCH, 0, 1, 0, "touch")[0], Q.OK);
    uffd.writeprotect({ ...page, wp: true });
    if (pin) {
      // 1. Pin first, then fork(): fork()'s early CoW of a pinned private page.
      const pinned = p.call(C.PIN, 0, 0, 0, "pin")[1];
      if (pinned !== 0) {
        uffd.unregister(registered);
        return `Possibly CONFIG_GUP_TEST missing or unprivileged (PIN_LONGTERM_TEST_START: errno ${-pinned})`;
      }
      testFork("early CoW of fork()", false);
      assert.equal(p.call(C.UNPIN, 0, 0, 0, "unpin")[0], Q.OK);
      // 2. fork() first, then pin in the child: unsharing (COR) of private memory.
      testFork("RO pin", true);
      uffd.unregister(registered);
      return undefined;
    }
    assert.equal(wp(), true, "present pte write-protected");
    testFork("present pte", false);
    // Zap the page table so the bit lives in a pte marker (DONTNEED, shared memory) or a swap
    // entry (PAGEOUT, private memory; without swap the page stays, and so does the bit).
    const zap = p.call(C.ZAP, 0, 0, 0, "zap");
    assert.equal(zap[0], Q.OK);
    assert.equal(wp(), true, "uffd-wp persists after the page table is zapped");
    testFork("zapped pte", false);
    // Unprotect, then fault the page back in.
    uffd.writeprotect({ ...page, wp: false });
    assert.equal(wp(), false, "unprotect clears the bit");
    assert.equal(p.call(C.TOUCH, 0, 2, 0, "write after unprotect")[0], Q.OK);
    assert.equal(wp(), false, "fault-in after unprotect");
    assert.equal(p.call(C.READ, 0, 0, 0, "read")[1], 2);
    uffd.unregister(registered);
    p.send(C.EXIT);
    return undefined;
  } finally {
    for (const c of children) c.close();
    await p.close();
  }
}

for (const pin of [false, true]) {
  for (const withEvent of [false, true]) {
    const scenario = `wp-fork${pin ? "-pin" : ""}${withEvent ? "-with-event" : ""}`;
    describe(`selftests: ${scenario}`, () => {
      for (const mt of MEM_TYPES) {
        const name = `${mt}/${scenario}`;
        const reason = "skip" in processFixture
          ? processFixture.skip
          : caseSkipReason(scenario, mt) ?? (pin ? gupTestSkipReason() : undefined);
        it(name, { timeout: 20000, ...skipOpt(name, reason) }, async (t) => {
          const skipped = await wpForkTest(mt, withEvent, pin);
          if (skipped) {
            console.log(`skip ${name}: ${skipped}`);
            t.skip(skipped);
          }
        });
      }
    });
  }
}

const PROT_NONE = 0;
const PROT_RW = 3;
const MAP_SHARED = 0x01;
const MAP_PRIVATE = 0x02;
const MAP_FIXED = 0x10;
const MAP_ANONYMOUS = 0x20;
const MAP_NORESERVE = 0x4000;
const MADV_COLLAPSE = 25;

/**
 * area_dst_alias placed at a PMD-aligned address (shmem_allocate_area for minor-collapse), so that
 * MADV_COLLAPSE can map each huge page with one PMD: a shared mapping of `dst`'s memfd inside a
 * reserved range, declared to the library with Mapping.adopt.
 */
function alignedAlias(dst: Mapping, align: number): { alias: Mapping; close(): void } {
  const len = dst.length;
  const reserve = libc.mmap(0, len + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (reserve === -1) throw new UffdError("mmap", libc.errno());
  const at = Math.ceil(reserve / align) * align;
  if (libc.mmap(at, len, PROT_RW, MAP_SHARED | MAP_FIXED, dst.fd, 0) !== at) {
    const e = libc.errno();
    libc.munmap(reserve, len + align);
    throw new UffdError("mmap", e);
  }
  const alias = Mapping.adopt(at, len);
  return {
    alias,
    close(): void {
      alias.close();
      libc.munmap(reserve, len + align); // the alias too
    },
  };
}

type MinorTest = "minor" | "minor-wp" | "minor-collapse";

/** uffd_minor_test_common(); returns a skip reason when the collapse fails (the kernel's rule). */
async function minorTest(mt: MemType, test: MinorTest): Promise<string | undefined> {
  const testWp = test === "minor-wp";
  const collapse = test === "minor-collapse";
  const n = areaPages(mt);
  if (typeof n === "string") return n;
  const area = tryAllocArea(mt, n, !collapse);
  if (typeof area === "string") return area;
  const placed = collapse ? alignedAlias(area.dst, pmdPageSize()) : undefined;
  using _a = {
    [Symbol.dispose]: () => {
      placed?.close();
      area.close();
    },
  };
  const alias = placed ? placed.alias : area.alias!;
  const ps = area.ps;
  const features: FeatureName[] = collapse ? ["MINOR_SHMEM"] : ["MINOR_HUGETLBFS", "MINOR_SHMEM"];
  if (testWp) features.push("PAGEFAULT_FLAG_WP", "WP_UNPOPULATED");
  using uffd = Userfaultfd.open({ features, nonBlocking: true });
  uffd.register(alias, { minor: true, wp: testWp });
  // Populating the non-registered side raises no minor fault.
  const dst = area.dst.bytes();
  for (let p = 0; p < n; p++) dst.fill(p % 255, p * ps, (p + 1) * ps);
  assert.equal(uffd.readEvent({ timeout: 0 }), undefined, "writes through area_dst raise no fault");
  const words = new Int32Array(dst.buffer, dst.byteOffset, dst.byteLength >> 2);
  const worker = new SelftestWorker();
  const toucher = new Toucher();
  const stats = { missing: 0, minor: 0, wp: 0 };
  let pending: Promise<unknown> | undefined;
  let working = false;
  try {
    // check_memory_contents(area_dst_alias) on the faulting side; uffd_handle_page_fault here:
    // each minor fault flips the page's bits through area_dst, then UFFDIO_CONTINUE maps it.
    worker.send({ op: "check", addr: alias.start, n, ps, expect: { kind: "minor" } });
    working = true;
    serveWhile(uffd, worker, 30000, (flags, address) => {
      const kind = flags & 2 ? "wp" : flags & 4 ? "minor" : "missing";
      stats[kind]++;
      assert.equal(kind, "minor", `fault at 0x${address.toString(16)}: flags ${flags}`);
      assert.equal(flags & 1, 0, "a read raises no WRITE fault");
      const w = (address - alias.start) >> 2;
      for (let b = w; b < w + (ps >> 2); b++) words[b] = ~words[b];
      const range = { start: address, len: ps };
      assert.equal(uffd.continue({ ...range, wp: testWp }), ps);
      // continue_range(): a second CONTINUE must fail with EEXIST in its mapped field.
      try {
        uffd.continue({ ...range, wp: testWp });
        assert.fail("second UFFDIO_CONTINUE succeeded");
      } catch (e) {
        assert.ok(e instanceof UffdError, String(e));
        assert.equal(e.code, "EEXIST");
        assert.equal(e.result, -17);
      }
    });
    const r = await worker.next(10000, "check_memory_contents");
    working = false;
    assert.equal(r.type, "checked");
    if (r.type !== "checked") return;
    assert.deepEqual(r.errors, [], "unexpected page contents");
    assert.deepEqual(stats, { missing: 0, minor: n, wp: 0 }, "stats check error");
    if (collapse) {
      if (libc.madvise(alias.start, n * ps, MADV_COLLAPSE) !== 0) {
        return `MADV_COLLAPSE failed (errno ${libc.errno()}); the kernel test skips then too`;
      }
      // check_huge_shmem(area_dst_alias, nr_pages * page_size / pmd size)
      const pmd = pmdPageSize();
      const kb = smapsField(alias.start, "ShmemPmdMapped");
      assert.equal(kb, (n * ps) / 1024, `Did not find expected ${(n * ps) / pmd} number of hugepages`);
      // No uffd fault now: this only proves there was no corruption.
      worker.send({ op: "check", addr: alias.start, n, ps, expect: { kind: "minor" } });
      working = true;
      const faults = serveWhile(uffd, worker, 30000, () => {});
      const again = await worker.next(10000, "check_memory_contents after collapse");
      working = false;
      assert.equal(faults, 0, "the collapsed range raises no fault");
      assert.equal(again.type === "checked" && again.errors.length, 0, JSON.stringify(again));
      return undefined;
    }
    if (testWp) {
      // Beyond the kernel test: CONTINUE_MODE_WP really mapped the pages write-protected.
      pending = toucher.write(alias.page(n - 1), 1, 0x5a);
      const ev = uffd.readEvent({ timeout: 2000 });
      assert.ok(ev && ev.type === "pagefault", `want a wp fault, got ${JSON.stringify(ev)}`);
      assert.equal(ev.kind, "wp");
      assert.equal(ev.write, true);
      assert.equal(ev.address, alias.page(n - 1));
      uffd.writeprotect({ start: ev.address, len: ps, wp: false });
      await within(pending, 5000, "write after unprotect");
      pending = undefined;
      assert.equal(dst[(n - 1) * ps], 0x5a, "the write reached the shared page");
    } else {
      await within(toucher.write(alias.page(0), 1, 0x33), 5000, "write to a continued page");
      assert.equal(uffd.readEvent({ timeout: 0 }), undefined, "no wp fault without wp mode");
      assert.equal(dst[0], 0x33);
    }
    return undefined;
  } finally {
    uffd.close();
    if (working) await worker.next(5000, "worker after close").catch(() => {});
    if (pending) await within(pending, 5000, "toucher after close").catch(() => {});
    worker.close();
    toucher.close();
  }
}

for (const test of ["minor", "minor-wp", "minor-collapse"] as const) {
  describe(`selftests: ${test}`, () => {
    // minor and minor-wp run on shmem and hugetlb; MADV_COLLAPSE only works with shmem
    const types: MemType[] = test === "minor-collapse" ? ["shmem"] : ["shmem", "hugetlb"];
    for (const mt of types) {
      const name = `${mt}/${test}`;
      const reason = test === "minor-collapse" && pmdPageSize() === 0
        ? "no transparent huge pages (hpage_pmd_size unreadable)"
        : caseSkipReason(test, mt);
      it(name, { timeout: 60000, ...skipOpt(name, reason) }, async (t) => {
        const skipped = await minorTest(mt, test);
        if (skipped) {
          console.log(`skip ${name}: ${skipped}`);
          t.skip(skipped);
        }
      });
    }
  });
}
