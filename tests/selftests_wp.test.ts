// Ports of the kernel's userfaultfd unit tests (tools/testing/selftests/mm/uffd-unit-tests.c):
// wp-unpopulated, wp-fork, wp-fork-with-event, minor, minor-wp. Same names, "<mem>/<name>".
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { type FeatureName, UffdError, Userfaultfd } from "../mod.ts";
import { Toucher, within } from "./helpers/toucher.ts";
import {
  buildFixture,
  findByteMismatch,
  MEM_TYPES,
  memSkipReason,
  pagemapWp,
  pageSizeOf,
  parseKv,
  skipOpt,
  tryAllocArea,
} from "./helpers/selftest_common.ts";
import { peek, peekByte } from "./helpers/peek.ts";

describe("selftests: wp-unpopulated", () => {
  for (const mt of MEM_TYPES) {
    const name = `${mt}/wp-unpopulated`;
    if (mt !== "anon") {
      it(name, skipOpt(name, "uffd-unit-tests.c runs wp-unpopulated on anon only"), () => {});
      continue;
    }
    it(name, { timeout: 20000 }, async () => {
      const area = tryAllocArea("anon", 2);
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
        assert.equal(peekByte(area.dst.start), 1);
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
        assert.equal(peekByte(area.dst.start), 7);
        area.dst.dontneed(0, ps);
      } finally {
        uffd.close();
        if (pending) await within(pending, 5000, "toucher after close").catch(() => {});
        toucher.close();
      }
    });
  }
});

for (const withEvent of [false, true]) {
  const scenario = withEvent ? "wp-fork-with-event" : "wp-fork";
  describe(`selftests: ${scenario}`, () => {
    const fixture = buildFixture("selftest_wp_fork");
    for (const mt of MEM_TYPES) {
      const name = `${mt}/${scenario}`;
      const reason = "skip" in fixture ? fixture.skip : memSkipReason(mt, 2);
      it(name, { timeout: 20000, ...skipOpt(name, reason) }, (t) => {
        if ("skip" in fixture) return;
        // JavaScript runtimes cannot fork(): the C fixture runs the kernel test's steps itself.
        const r = spawnSync(fixture.path, [mt, withEvent ? "1" : "0", String(pageSizeOf(mt))], {
          encoding: "utf8",
          timeout: 15000,
          killSignal: "SIGKILL",
        });
        const kv = parseKv(r.stdout ?? "");
        if (mt === "hugetlb" && /^mmap: Cannot allocate memory/.test(kv.error ?? "")) {
          console.log(`skip ${name}: huge pages taken by someone else`);
          return t.skip("no huge pages");
        }
        assert.equal(r.status, 0, `fixture failed: ${r.stdout}${r.stderr}`);
        const want = withEvent ? "1" : "0";
        // After fork(), the uffd-wp bit persists in the child only with EVENT_FORK.
        assert.equal(kv.present_wp, "1", "parent: present pte is write-protected");
        assert.equal(kv.present_child_status, "0");
        assert.equal(kv.present_child_wp, want, "child: uffd-wp bit of the present pte");
        assert.equal(kv.zapped_wp, "1", "parent: uffd-wp persists after the page table is zapped");
        assert.equal(kv.zapped_child_status, "0");
        assert.equal(kv.zapped_child_wp, want, "child: uffd-wp bit of the zapped pte");
        if (withEvent) {
          for (const tag of ["present", "zapped"]) {
            assert.equal(kv[`${tag}_fork_event`], "0x13", `${tag}: the monitor read UFFD_EVENT_FORK`);
            assert.equal(kv[`${tag}_child_ufd_ok`], "1", `${tag}: the fork event carries a valid fd`);
          }
        } else {
          assert.equal(kv.present_fork_event, undefined);
        }
        assert.equal(kv.unprotected_wp, "0", "unprotect clears the bit");
        assert.equal(kv.refault_wp, "0", "fault-in after unprotect");
        assert.equal(kv.value, "2");
        assert.equal(kv.done, "1");
      });
    }
  });
}

for (const testWp of [false, true]) {
  const scenario = testWp ? "minor-wp" : "minor";
  describe(`selftests: ${scenario}`, () => {
    for (const mt of MEM_TYPES) {
      const name = `${mt}/${scenario}`;
      if (mt === "anon") {
        it(name, skipOpt(name, "uffd-unit-tests.c runs minor tests on shmem and hugetlb only"), () => {});
        continue;
      }
      const n = mt === "hugetlb" ? 2 : 16;
      it(name, { timeout: 20000, ...skipOpt(name, memSkipReason(mt, n)) }, async (t) => {
        const area = tryAllocArea(mt, n);
        if (typeof area === "string") return t.skip(area);
        using _a = { [Symbol.dispose]: () => area.close() };
        const alias = area.alias!;
        const ps = area.ps;
        const features: FeatureName[] = ["MINOR_HUGETLBFS", "MINOR_SHMEM"];
        if (testWp) features.push("PAGEFAULT_FLAG_WP", "WP_UNPOPULATED");
        using uffd = Userfaultfd.open({ features, nonBlocking: true });
        uffd.register(alias, { minor: true, wp: testWp });
        // Populating the non-registered side raises no minor fault.
        const dst = area.dst.bytes();
        for (let p = 0; p < n; p++) dst.fill(p % 255, p * ps, (p + 1) * ps);
        assert.equal(uffd.readEvent({ timeout: 0 }), undefined, "writes through area_dst raise no fault");
        const toucher = new Toucher();
        let pending: Promise<unknown> | undefined;
        const stats = { missing: 0, minor: 0, wp: 0 };
        try {
          pending = toucher.read(alias.start, n * ps);
          for (let i = 0; i < n; i++) {
            const ev = uffd.readEvent({ timeout: 2000 });
            assert.ok(ev && ev.type === "pagefault", `fault ${i}: ${JSON.stringify(ev)}`);
            stats[ev.kind]++;
            assert.equal(ev.kind, "minor");
            assert.equal(ev.write, false);
            assert.equal(ev.address, alias.page(i));
            // Prove the page can be changed before it is mapped: flip its bits through area_dst.
            const off: number = ev.address - alias.start;
            for (let b = off; b < off + ps; b++) dst[b] = ~dst[b] & 0xff;
            const range = { start: ev.address, len: ps };
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
          }
          await within(pending, 5000, "reader");
          pending = undefined;
          assert.deepEqual(stats, { missing: 0, minor: n, wp: 0 });
          const seen = peek(alias.start, n * ps);
          for (let p = 0; p < n; p++) {
            assert.equal(findByteMismatch(seen, p, ps, ~(p % 255) & 0xff), -1, `page ${p} content`);
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
        } finally {
          uffd.close();
          if (pending) await within(pending, 5000, "toucher after close").catch(() => {});
          toucher.close();
        }
      });
    }
  });
}
