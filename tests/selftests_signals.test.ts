// Ports of the kernel's userfaultfd unit tests (tools/testing/selftests/mm/uffd-unit-tests.c):
// sigbus, sigbus-wp, poison. Same names, "<mem>/<name>". Every fault that raises SIGBUS runs
// in a child process (tests/children/selftest_*.ts) that must die of it.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import type { FeatureName, Userfaultfd } from "../mod.ts";
import { type ChildResult, runChild } from "./helpers/child.ts";
import { attachFixtureUffd, ForkFixture } from "./helpers/selftest_fork.ts";
import {
  buildFixture,
  MEM_TYPES,
  memSkipReason,
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
  return mt === "hugetlb" && r.status !== 0 && /ENOMEM/.test(r.stderr) && !r.stdout.includes("registered=1");
}

function sigbusStep(mt: MemType, wp: boolean, step: string): ChildResult {
  return runChild(SIGBUS_CHILD, [mt, wp ? "1" : "0", step], 15000);
}

/**
 * signal_test 2 as the kernel runs it: a forked child (EVENT_FORK) touches released pages and
 * catches a SIGBUS for each; the monitor (this test, holding the fixture's descriptor) gets the
 * FORK event and no userfault at all. Returns a skip reason when it cannot run.
 */
async function sigbusForkLeg(mt: MemType, wp: boolean): Promise<string | undefined> {
  const fixture = buildFixture("selftest_fork_monitor");
  if ("skip" in fixture) return fixture.skip;
  const n = mt === "hugetlb" ? 2 : 8;
  const features: FeatureName[] = ["SIGBUS", "EVENT_FORK"];
  if (wp) features.push("PAGEFAULT_FLAG_WP", "WP_HUGETLBFS_SHMEM");
  const fx = new ForkFixture(fixture.path, ["sigbus", mt, wp ? "1" : "0", String(pageSizeOf(mt)), String(n)]);
  const opened: Userfaultfd[] = [];
  try {
    const attached = await attachFixtureUffd(fx, mt, features);
    if (typeof attached === "string") return attached;
    const { parent } = attached;
    opened.push(parent);
    await fx.go(5000);
    const ev = parent.readEvent({ timeout: 3000 });
    assert.ok(ev && ev.type === "fork", `want the fork event, got ${JSON.stringify(ev)}`);
    assert.ok(ev.uffd, "the fork event carries the child's Userfaultfd");
    const child = ev.uffd;
    opened.push(child);
    const end = await fx.wait(10000);
    assert.equal(end.code, 0, fx.output);
    const out = fx.kv;
    assert.equal(out.child_sigbus, String(Math.floor((n + 1) / 2)), `every page raised SIGBUS\n${fx.output}`);
    assert.equal(out.child_status, "0", fx.output);
    assert.equal(child.readEvent({ timeout: 0 }), undefined, "no userfault on the child's descriptor");
    assert.equal(parent.readEvent({ timeout: 0 }), undefined, "no userfault on the parent's descriptor");
    return undefined;
  } finally {
    for (const u of opened) u.close();
    fx.kill();
    await fx.wait(5000);
  }
}

for (const wp of [false, true]) {
  const scenario = wp ? "sigbus-wp" : "sigbus";
  describe(`selftests: ${scenario}`, () => {
    for (const mt of MEM_TYPES) {
      const name = `${mt}/${scenario}`;
      it(name, { timeout: 60000, ...skipOpt(name, memSkipReason(mt, 2)) }, async (t) => {
        // signal_test 1, first touch: a missing page raises SIGBUS, not a userfault.
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

        // signal_test 2 in a forked child, with this test as the monitor.
        const skipped = await sigbusForkLeg(mt, wp);
        if (skipped) console.log(`${name}: fork leg skipped: ${skipped}`);
      });
    }
  });
}

describe("selftests: poison", () => {
  for (const mt of MEM_TYPES) {
    const name = `${mt}/poison`;
    const n = mt === "hugetlb" ? 2 : 4;
    it(name, { timeout: 60000, ...skipOpt(name, memSkipReason(mt, n)) }, (t) => {
      const ps = pageSizeOf(mt);
      // Odd pages get a zeroed page, even pages are poisoned; each run ends at a poisoned page.
      const runs = n === 4 ? ["1,3,0", "2"] : ["1,0"];
      let sigbus = 0;
      const zeroPages = new Set<number>();
      for (const list of runs) {
        const r = runChild(POISON_CHILD, [mt, String(n), list], 15000);
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
      assert.equal(sigbus, n / 2, "nr_sigbus == nr_pages / 2");
      assert.equal(zeroPages.size, n / 2);
    });
  }
});
