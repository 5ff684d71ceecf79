// Ports of the kernel's userfaultfd unit tests (tools/testing/selftests/mm/uffd-unit-tests.c):
// events and events-wp. Same names and memory types, "<mem>/<name>", at the kernel's 32 MiB areas.
//
// The kernel test forks a child that runs faulting_process(0) while a monitor thread follows
// UFFD_EVENT_FORK to the child's descriptor and serves its faults. Each test here runs it twice:
//  1. in process: a Worker is the faulting process, the test thread the monitor (PAGEFAULT,
//     REMAP and REMOVE, through the library only);
//  2. fork leg: tests/fixtures/selftest_process forks for real and the test, holding the
//     fixture's descriptor (pidfd_getfd), registers its area and is the monitor: FORK event, the
//     child's descriptor from the event, and the child's faults served across processes.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { EventBuffer, type FeatureName, Mapping, UFFD_EVENT, UffdError, Userfaultfd } from "../mod.ts";
import {
  areaPages,
  buildFixture,
  caseSkipReason,
  fillPatterns,
  isHugetlb,
  MEM_TYPES,
  type MemType,
  pageSizeOf,
  releaseAdvice,
  skipOpt,
  tryAllocArea,
} from "./helpers/selftest_common.ts";
import { SelftestWorker } from "./helpers/selftest_worker_client.ts";
import type { WorkerReply } from "./helpers/selftest_worker.ts";
import { C, FORK_EVENTS, ProcFixture, Q } from "./helpers/selftest_fork.ts";

function features(wp: boolean): FeatureName[] {
  const f: FeatureName[] = ["EVENT_FORK", "EVENT_REMAP", "EVENT_REMOVE"];
  if (wp) f.push("PAGEFAULT_FLAG_WP", "WP_HUGETLBFS_SHMEM");
  return f;
}

interface MonitorOptions {
  uffd: Userfaultfd;
  /** area_dst and its size. */
  start: number;
  n: number;
  ps: number;
  /** Where the faulting process moves the area. */
  remapTo: number;
  /** Pattern source (page i holds pattern i). */
  src: Mapping;
  wp: boolean;
  /** Expect UFFD_EVENT_FORK first and continue on the child's descriptor. */
  fork: boolean;
  /** Whether the faulting side is done (then the monitor stops once nothing is pending). */
  done: () => boolean;
}

interface MonitorStats {
  fork: number;
  missing: number;
  wp: number;
  minor: number;
  remap: number;
  remove: number;
}

/**
 * uffd_poll_thread(): COPY missing pages from the pattern (MODE_WP for -wp), unprotect on
 * wp faults, follow FORK and REMAP, UNREGISTER on REMOVE, until the faulting side is done. A
 * fault taken on the released range may still be queued around UFFDIO_UNREGISTER (a fault under
 * the per-VMA lock can slip in after the wake-up that UNREGISTER does); it is answered with
 * UFFDIO_WAKE, since the range is no longer registered, and counted as stray.
 */
function monitor(
  o: MonitorOptions,
  opened: Userfaultfd[],
): { stats: MonitorStats; stray: number } {
  const features = o.uffd.features;
  const len = o.n * o.ps;
  const stats: MonitorStats = { fork: 0, missing: 0, wp: 0, minor: 0, remap: 0, remove: 0 };
  let uffd = o.uffd;
  let base = o.start;
  let stray = 0;
  let again = 0;
  const buf = new EventBuffer(64);
  const deadline = Date.now() + 30000;
  const where = () => `${JSON.stringify(stats)}, stray ${stray}, EEXIST ${again}`;
  for (;;) {
    const count = uffd.readEvents(buf, { timeout: 5 });
    for (let i = 0; i < count; i++) {
      const code = buf.code(i);
      if (o.fork && stats.fork === 0) assert.equal(code, UFFD_EVENT.FORK, "the first event is the fork");
      if (code === UFFD_EVENT.PAGEFAULT) {
        const flags = buf.pagefaultFlags(i);
        const address = buf.pagefaultAddress(i);
        assert.ok(address >= base && address < base + len, `fault outside the area after ${where()}`);
        if (stats.remove > 0) {
          assert.equal(flags & 6, 0, "a stray fault after REMOVE is a missing fault");
          uffd.wake({ start: address, len: o.ps });
          stray++;
          continue;
        }
        const off = address - base;
        if (flags & 2) {
          assert.equal(flags & 1, 1, "a wp fault is a write");
          uffd.writeprotect({ start: address, len: o.ps, wp: false });
          stats.wp++;
        } else {
          assert.equal(flags & 4, 0, "no minor fault here");
          // uffd_handle_page_fault: "unexpected write fault" for a missing fault with WRITE
          assert.equal(flags & 1, 0, "the first touch of a page is a read");
          // __copy_page(): EEXIST (a second message for a page already placed) is answered with
          // a wake and not counted as a missing fault
          try {
            assert.equal(uffd.copy({ start: address, len: o.ps, src: o.src.start + off, wp: o.wp }), o.ps);
            stats.missing++;
          } catch (e) {
            if (!(e instanceof UffdError) || e.code !== "EEXIST") throw e;
            uffd.wake({ start: address, len: o.ps });
            again++;
          }
        }
        continue;
      }
      const ev = buf.event(i);
      switch (ev.type) {
        case "fork": {
          stats.fork++;
          assert.ok(ev.ufd >= 0, `fork event ufd ${ev.ufd}`);
          // The child's descriptor shares the parent's flags (O_NONBLOCK) and features; the
          // event carries it as a remote Userfaultfd that this test owns.
          assert.ok(ev.uffd, "the fork event carries the child's Userfaultfd");
          assert.deepEqual(ev.uffd.features, features);
          uffd = ev.uffd;
          opened.push(uffd);
          break;
        }
        case "remap":
          stats.remap++;
          assert.deepEqual(ev, { type: "remap", from: o.start, to: o.remapTo, len });
          base = ev.to;
          break;
        case "remove":
          stats.remove++;
          assert.deepEqual(ev, { type: "remove", start: base, end: base + len });
          uffd.unregister({ start: ev.start, len: ev.end - ev.start });
          break;
        default:
          assert.fail(`unexpected event ${JSON.stringify(ev)} after ${where()}`);
      }
    }
    if (count === 0 && o.done()) break;
    assert.ok(Date.now() < deadline, `the faulting side did not finish within 30 s: ${where()}`);
  }
  if (again) {
    console.log(`${again} fault message(s) for a page already copied: EEXIST, woken (as __copy_page)`);
  }
  return { stats, stray };
}

function patternSource(n: number, ps: number): Mapping {
  const src = Mapping.anonymous(n * ps);
  fillPatterns(src.bytes(), n, ps);
  return src;
}

/** Leg 1: the Worker is the faulting process. */
async function eventsInProcess(mt: MemType, wp: boolean, n: number): Promise<string | undefined> {
  const area = tryAllocArea(mt, n, false);
  if (typeof area === "string") return area;
  const ps = area.ps;
  const len = n * ps;
  const src = patternSource(n, ps);
  // The mremap target (the kernel reuses area_src); hugetlb needs a huge-page-aligned one.
  const target = isHugetlb(mt) ? Mapping.hugetlb(len) : Mapping.anonymous(len);
  const uffd = Userfaultfd.open({ features: features(wp), nonBlocking: true });
  const worker = new SelftestWorker();
  let reply: WorkerReply | undefined;
  try {
    uffd.register(area.dst, { missing: true, wp });
    worker.send({
      op: "faulting",
      dst: area.dst.start,
      n,
      ps,
      remapTo: target.start,
      releaseAdvice: releaseAdvice(mt),
    });
    const { stats, stray } = monitor(
      {
        uffd,
        start: area.dst.start,
        n,
        ps,
        remapTo: target.start,
        src,
        wp,
        fork: false,
        done: () => worker.finished,
      },
      [],
    );
    if (stray) {
      console.log(`${mt}/events${wp ? "-wp" : ""}: ${stray} fault(s) queued around UNREGISTER, woken`);
    }
    reply = await worker.next(10000, "faulting process");
    assert.equal(reply.type, "faulting-done");
    if (reply.type !== "faulting-done") return undefined;
    assert.deepEqual(reply.errors, []);
    assert.equal(reply.remapped, target.start);
    assert.equal(reply.pagesChecked, n, "all pages read back as zero after release");
    // The kernel checks missing_faults == nr_pages; the port checks every count.
    assert.deepEqual(stats, { fork: 0, missing: n, wp: wp ? n : 0, minor: 0, remap: 1, remove: 1 });
    assert.equal(uffd.readEvent({ timeout: 0 }), undefined, "no event left");
    return undefined;
  } finally {
    uffd.close();
    reply ??= await worker.next(5000, "worker after close").catch(() => undefined);
    worker.close();
    // After the move the old range holds the Worker's placeholder; if the Worker could not
    // place it (or never answered), someone else may own that range now: do not unmap it.
    const safe = reply?.type === "faulting-done" && (reply.remapped !== target.start || reply.placeholder);
    if (safe) area.close();
    else console.log(`${mt}: leaving the old area_dst range mapped (mremap state unknown)`);
    target.close();
    src.close();
  }
}

const processFixture = buildFixture("selftest_process");

/** Leg 2: a real fork; returns a skip reason when it cannot run. */
async function eventsForkLeg(mt: MemType, wp: boolean, n: number): Promise<string | undefined> {
  if ("skip" in processFixture) return processFixture.skip;
  const ps = pageSizeOf(mt);
  const p = await ProcFixture.start(processFixture.path, mt, ps, n, features(wp));
  if (typeof p === "string") return p;
  const opened: Userfaultfd[] = [];
  const src = patternSource(n, ps);
  try {
    p.uffd.register({ start: p.area, len: n * ps }, { missing: true, wp });
    p.send(C.FORK, FORK_EVENTS);
    let result: number[] | undefined;
    const { stats, stray } = monitor({
      uffd: p.uffd,
      start: p.area,
      n,
      ps,
      remapTo: p.target,
      src,
      wp,
      fork: true,
      done: () => {
        while (!result && p.readable(0)) {
          const m = p.recv(0, "the child");
          if (m[0] === Q.DONE) result = [m[1], m[2], m[3]];
          else assert.equal(m[0], Q.CHILD);
        }
        return result !== undefined;
      },
    }, opened);
    if (stray) {
      console.log(`${mt}/events${wp ? "-wp" : ""} (fork): ${stray} fault(s) queued around UNREGISTER, woken`);
    }
    assert.ok(result);
    const [errors, bad, remapped] = result;
    assert.equal(
      errors,
      0,
      `the child saw wrong data from page ${bad} on (pattern, or not zero after release)`,
    );
    assert.equal(remapped, 1, "the child's mremap moved the area to the target");
    const forked = p.recv(10000, "child exit");
    assert.equal(forked[0], Q.FORKED);
    assert.equal(forked[1], 0, "faulting process failed");
    assert.deepEqual(stats, { fork: 1, missing: n, wp: wp ? n : 0, minor: 0, remap: 1, remove: 1 });
    p.send(C.EXIT);
    return undefined;
  } finally {
    for (const u of opened) u.close(); // releases the child, should it still wait on a fault
    await p.close();
    src.close();
  }
}

for (const wp of [false, true]) {
  const scenario = wp ? "events-wp" : "events";
  describe(`selftests: ${scenario}`, () => {
    for (const mt of MEM_TYPES) {
      const name = `${mt}/${scenario}`;
      it(name, { timeout: 60000, ...skipOpt(name, caseSkipReason(scenario, mt)) }, async (t) => {
        const n = areaPages(mt);
        if (typeof n === "string") return t.skip(n);
        const noMemory = await eventsInProcess(mt, wp, n);
        if (noMemory) return t.skip(noMemory);
        const skipped = await eventsForkLeg(mt, wp, n);
        if (skipped) console.log(`${name}: fork leg skipped: ${skipped}`);
      });
    }
  });
}
