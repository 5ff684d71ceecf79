// The kernel's uffd-stress (tools/testing/selftests/mm/uffd-stress.c) on all five memory types, at
// the sizes run_vmtests.sh gives it: `anon 20 16`, `shmem 20 16`, `shmem-private 20 16`, and for
// hugetlb and hugetlb-private 4 huge pages per area (the kernel takes half the free huge pages;
// this machine has 16 in all) with 32 bounces. Every bounce runs one of the 16 combinations of
// RANDOM, RACINGFAULTS, VERIFY and POLL, and every counter is checked after each bounce (see
// tests/helpers/stress_run.ts). The same bounce is then served by a FaultServer on the memory
// types a FaultServer serves (anonymous and hugetlb mappings).
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { hugePageSize } from "../mod.ts";
import { runServerStress, runUffdStress } from "./helpers/stress_run.ts";
import { hugeSkipReason, isHugetlb, STRESS_MEM_TYPES, type StressMemType } from "./helpers/stress_mem.ts";

const MiB = 1024 * 1024;

/** Bytes per area and bounces: run_vmtests.sh's for anon and shmem, 4 huge pages for hugetlb. */
function size(mt: StressMemType, server = false): { bytes: number; bounces: number } {
  if (isHugetlb(mt)) return { bytes: 4 * hugePageSize(), bounces: server ? 16 : 32 };
  return { bytes: 20 * MiB, bounces: 16 };
}

function skipOpt(name: string, reason: string | undefined): { skip?: string } {
  if (reason === undefined) return {};
  console.log(`skip ${name}: ${reason}`);
  return { skip: reason };
}

/** Huge pages both areas need (src and dst, each its own memfd). */
function hugeNeed(mt: StressMemType, areas: number): number {
  return isHugetlb(mt) ? (areas * size(mt).bytes) / hugePageSize() : 0;
}

describe("uffd-stress", () => {
  for (const mt of STRESS_MEM_TYPES) {
    const { bytes, bounces } = size(mt);
    const name = `${mt}/uffd-stress bounce (${bytes / MiB} MiB, ${bounces} bounces: locking threads, ` +
      "poll and read handlers, background copies with EEXIST and WP)";
    it(name, { timeout: 120000, ...skipOpt(name, hugeSkipReason(mt, hugeNeed(mt, 2))) }, async () => {
      const s = await runUffdStress({ mt, bytes, bounces });
      console.log(`${mt}/uffd-stress: ${JSON.stringify(s)}`);
      assert.equal(s.bounces, bounces);
      assert.ok(s.missing + s.backgroundCopies === s.nPages * bounces, "every page placed once per bounce");
      assert.ok(s.missing > 0, "the handlers served missing faults");
      assert.ok(s.wpFaults > 0, "write-protect faults were raised and served");
      assert.ok(s.retried > 0, "the EEXIST retry ran");
      assert.ok(s.lockerIterations >= bounces * 4, "every locking Worker took locks in every bounce");
    });
  }

  for (const mt of ["anon", "hugetlb", "hugetlb-private"] as const) {
    const { bytes, bounces } = size(mt, true);
    const name = `${mt}/uffd-stress bounce through a FaultServer (${bytes / MiB} MiB, ${bounces} bounces, ` +
      "background copies racing the server)";
    it(name, { timeout: 120000, ...skipOpt(name, hugeSkipReason(mt, hugeNeed(mt, 1))) }, async () => {
      const s = await runServerStress({ mt, bytes, bounces });
      console.log(`${mt}/uffd-stress FaultServer: ${JSON.stringify(s)}`);
      assert.equal(
        s.serverPages + s.backgroundCopies,
        s.nPages * bounces,
        "every page placed once per bounce",
      );
      assert.ok(s.faults > 0, "the server served faults");
    });
  }
});
