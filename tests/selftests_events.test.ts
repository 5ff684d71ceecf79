// Ports of the kernel's userfaultfd unit tests (tools/testing/selftests/mm/uffd-unit-tests.c):
// events and events-wp. Same names, "<mem>/<name>".
//
// The kernel test forks a child that runs faulting_process(0) while a monitor thread follows
// UFFD_EVENT_FORK to the child's descriptor and serves its faults. Each test here runs it twice:
//  1. in process: a Worker is the faulting process, the test thread the monitor (PAGEFAULT,
//     REMAP and REMOVE, through the library only);
//  2. fork leg: tests/fixtures/selftest_fork_monitor.c forks for real and the test, holding the
//     fixture's descriptor (pidfd_getfd), is the monitor: FORK event, Userfaultfd.fromFd() on
//     the child's new descriptor, and the child's faults served across processes.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { type FeatureName, Mapping, type UffdEvent, Userfaultfd } from "../mod.ts";
import {
  allocArea,
  buildFixture,
  fillPattern,
  MEM_TYPES,
  memSkipReason,
  type MemType,
  pageSizeOf,
  skipOpt,
  UFFD_TEST_HUGE_PAGES,
} from "./helpers/selftest_common.ts";
import { SelftestWorker } from "./helpers/selftest_worker_client.ts";
import type { WorkerReply } from "./helpers/selftest_worker.ts";
import { attachFixtureUffd, ForkFixture } from "./helpers/selftest_fork.ts";

const MADV_DONTNEED = 4;
const MADV_REMOVE = 9;

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
 * wp faults, follow FORK and REMAP, UNREGISTER on REMOVE, which is the last event.
 */
function monitor(
  o: MonitorOptions,
  opened: Userfaultfd[],
): { stats: MonitorStats; uffd: Userfaultfd; base: number } {
  const features = o.uffd.features;
  const len = o.n * o.ps;
  const stats: MonitorStats = { fork: 0, missing: 0, wp: 0, minor: 0, remap: 0, remove: 0 };
  let uffd = o.uffd;
  let base = o.start;
  const seen: string[] = [];
  for (let guard = 0; stats.remove === 0; guard++) {
    assert.ok(guard < 4 * o.n + 8, `too many events: ${seen.join(" ")}`);
    const ev: UffdEvent | undefined = uffd.readEvent({ timeout: 3000 });
    assert.ok(ev, `no event after: ${seen.join(" ")}`);
    seen.push(ev.type === "pagefault" ? `${ev.kind}@${(ev.address - base) / o.ps}` : ev.type);
    if (o.fork && stats.fork === 0) assert.equal(ev.type, "fork", "the first event is the fork");
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
      case "pagefault": {
        stats[ev.kind]++;
        assert.ok(ev.address >= base && ev.address < base + len, "fault outside the area");
        const off = ev.address - base;
        if (ev.kind === "wp") {
          assert.equal(ev.write, true, "a wp fault is a write");
          uffd.writeprotect({ start: ev.address, len: o.ps, wp: false });
        } else {
          assert.equal(ev.kind, "missing");
          assert.equal(ev.write, false, "the first touch of a page is a read");
          assert.equal(uffd.copy({ start: ev.address, len: o.ps, src: o.src.start + off, wp: o.wp }), o.ps);
        }
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
        assert.fail(`unexpected event ${JSON.stringify(ev)}`);
    }
  }
  return { stats, uffd, base };
}

/**
 * Keeps reading until `done` settles. A fault taken on the released range may still be
 * queued around UFFDIO_UNREGISTER (a fault under the per-VMA lock can slip in after the
 * wake-up that UNREGISTER does, see the report); it is answered with UFFDIO_WAKE, since the
 * range is no longer registered, and counted. Returns how many there were.
 */
async function drainAfterRemove(
  uffd: Userfaultfd,
  base: number,
  len: number,
  ps: number,
  done: Promise<unknown>,
): Promise<number> {
  let finished = false;
  done.then(() => finished = true, () => finished = true);
  let stray = 0;
  while (!finished) {
    const ev = uffd.readEvent({ timeout: 0 });
    if (!ev) {
      await new Promise((r) => setTimeout(r, 2));
      continue;
    }
    assert.ok(ev.type === "pagefault" && ev.kind === "missing", `unexpected event ${JSON.stringify(ev)}`);
    assert.ok(ev.address >= base && ev.address < base + len, "stray fault outside the area");
    uffd.wake({ start: ev.address, len: ps });
    stray++;
  }
  return stray;
}

function patternSource(n: number, ps: number): Mapping {
  const src = Mapping.anonymous(n * ps);
  for (let i = 0; i < n; i++) fillPattern(src.bytes(), i, ps);
  return src;
}

/** Leg 1: the Worker is the faulting process. */
async function eventsInProcess(mt: MemType, wp: boolean): Promise<void> {
  const n = mt === "hugetlb" ? 2 : 16;
  const area = allocArea(mt, n, false);
  const ps = area.ps;
  const len = n * ps;
  const src = patternSource(n, ps);
  // The mremap target (the kernel reuses area_src); hugetlb needs a huge-page-aligned one.
  const target = mt === "hugetlb" ? Mapping.hugetlb(len) : Mapping.anonymous(len);
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
      releaseAdvice: mt === "anon" ? MADV_DONTNEED : MADV_REMOVE,
    });
    const m = monitor(
      { uffd, start: area.dst.start, n, ps, remapTo: target.start, src, wp, fork: false },
      [],
    );
    const stats = m.stats;
    const next = worker.next(10000, "faulting process");
    const stray = await drainAfterRemove(m.uffd, m.base, len, ps, next);
    if (stray) {
      console.log(`${mt}/events${wp ? "-wp" : ""}: ${stray} fault(s) queued around UNREGISTER, woken`);
    }
    reply = await next;
    assert.equal(reply.type, "faulting-done");
    if (reply.type !== "faulting-done") return;
    assert.deepEqual(reply.errors, []);
    assert.equal(reply.remapped, target.start);
    assert.equal(reply.pagesChecked, n, "all pages read back as zero after release");
    assert.deepEqual(stats, { fork: 0, missing: n, wp: wp ? n : 0, minor: 0, remap: 1, remove: 1 });
    assert.equal(uffd.readEvent({ timeout: 0 }), undefined, "no event left");
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

/** Leg 2: a real fork; returns a skip reason when it cannot run. */
async function eventsForkLeg(mt: MemType, wp: boolean): Promise<string | undefined> {
  const fixture = buildFixture("selftest_fork_monitor");
  if ("skip" in fixture) return fixture.skip;
  const n = mt === "hugetlb" ? 2 : 8;
  const ps = pageSizeOf(mt);
  const fx = new ForkFixture(fixture.path, ["events", mt, wp ? "1" : "0", String(ps), String(n)]);
  const opened: Userfaultfd[] = [];
  const src = patternSource(n, ps);
  try {
    const attached = await attachFixtureUffd(fx, mt, features(wp));
    if (typeof attached === "string") return attached;
    const { kv, parent } = attached;
    opened.push(parent);
    const start = Number(kv.area);
    const remapTo = Number(kv.target);
    await fx.go(5000);
    const m = monitor({ uffd: parent, start, n, ps, remapTo, src, wp, fork: true }, opened);
    const stats = m.stats;
    const exit = fx.wait(10000);
    const stray = await drainAfterRemove(m.uffd, m.base, n * ps, ps, exit);
    if (stray) {
      console.log(`${mt}/events${wp ? "-wp" : ""} (fork): ${stray} fault(s) queued around UNREGISTER, woken`);
    }
    const end = await exit;
    const out = fx.kv;
    assert.equal(end.code, 0, fx.output);
    assert.equal(out.child_status, "0", `child failed\n${fx.output}`);
    assert.equal(out.child_remapped, "1");
    assert.equal(out.child_checked, String(n));
    assert.equal(out.child_mismatch, undefined, "the child saw the pattern the monitor copied");
    assert.equal(out.child_nonzero, undefined, "released pages read as zero in the child");
    assert.deepEqual(stats, { fork: 1, missing: n, wp: wp ? n : 0, minor: 0, remap: 1, remove: 1 });
    return undefined;
  } finally {
    for (const u of opened) u.close(); // releases the child, should it still wait on a fault
    fx.kill();
    await fx.wait(5000);
    src.close();
  }
}

for (const wp of [false, true]) {
  const scenario = wp ? "events-wp" : "events";
  describe(`selftests: ${scenario}`, () => {
    for (const mt of MEM_TYPES) {
      const name = `${mt}/${scenario}`;
      it(name, { timeout: 30000, ...skipOpt(name, memSkipReason(mt, UFFD_TEST_HUGE_PAGES)) }, async () => {
        await eventsInProcess(mt, wp);
        const skipped = await eventsForkLeg(mt, wp);
        if (skipped) console.log(`${name}: fork leg skipped: ${skipped}`);
      });
    }
  });
}
