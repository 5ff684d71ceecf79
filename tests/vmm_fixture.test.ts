// Tests of the Firecracker stand-ins themselves (tests/fixtures/fc_vmm.c, bench/native/fc_handler.c and
// tests/helpers/vmm.ts): the guest code and page hash against the File backend, the handshake as a
// handler receives it, and the whole restore against the C baseline handler.
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { readTextFile } from "../src/memory.ts";
import {
  cleanupVmms,
  compiler,
  expectedHashes,
  fdTarget,
  hugePagesFree,
  kvmUsable,
  listenFc,
  NO_CC,
  pageHash,
  randomTouch,
  readResults,
  type ResultRecord,
  startFcHandler,
  startVmm,
  tempPath,
  writePatternFile,
  ZERO_HASH,
} from "./helpers/vmm.ts";

const MiB = 1 << 20;
const PS = 4096;
const noCc = compiler ? false : NO_CC;
const noKvm = kvmUsable() ?? false;
const HUGE = 2 * MiB;
const noHuge = noKvm ||
  (hugePagesFree() < 4 ? `only ${hugePagesFree()} free 2 MiB huge pages (4 needed)` : false);
if (noKvm) console.log(`# KVM tests skipped: ${noKvm}`);
if (noCc) console.log(`# fc_vmm tests skipped: ${noCc}`);

after(cleanupVmms);

/** Every record of `phase` matches the file's page at its offset. */
function assertMatches(recs: ResultRecord[], files: string[], pageSize: number, phase = 1): void {
  const r = recs.filter((x) => x.phase === phase);
  const want = expectedHashes(files, r.map((x) => x.offset), pageSize);
  const bad = r.filter((x, i) => x.hash !== want[i]);
  assert.equal(
    bad.length,
    0,
    `${bad.length} of ${r.length} hashes differ, first at offset ${bad[0]?.offset}`,
  );
}

const allOffsets = (bytes: number, pageSize = PS): number[] =>
  Array.from({ length: bytes / pageSize }, (_, i) => i * pageSize);

describe("vmm helpers", () => {
  it("pageHash: zero page, distinct pattern pages, layers fall through holes", { timeout: 10000 }, () => {
    assert.equal(pageHash(new Uint8Array(PS), PS), ZERO_HASH);
    assert.equal(pageHash(new Uint8Array(HUGE), HUGE), ZERO_HASH);
    const base = tempPath("base.mem");
    const layer = tempPath("layer.mem");
    writePatternFile(base, 64 * PS, 1, { holes: [[8 * PS, 2 * PS]], zeros: [[12 * PS, PS]] });
    // the layer has data only in pages 3..5 and 9, and is shorter than the base
    writePatternFile(layer, 10 * PS, 2, { holes: [[0, 3 * PS], [6 * PS, 3 * PS]] });
    const offs = allOffsets(64 * PS);
    const b = expectedHashes([base], offs, PS);
    const l = expectedHashes([base, layer], offs, PS);
    assert.equal(
      new Set(b).size,
      64 - 2,
      "every pattern page differs; the 2 holes and 1 zero page are alike",
    );
    assert.equal(b[8], ZERO_HASH);
    assert.equal(b[9], ZERO_HASH);
    assert.equal(b[12], ZERO_HASH);
    for (const p of [3, 4, 5, 9]) assert.notEqual(l[p], b[p], `page ${p} comes from the layer`);
    for (const p of [0, 1, 2, 6, 7, 8, 10, 11, 12, 40]) {
      assert.equal(l[p], b[p], `page ${p} comes from the base`);
    }
    assert.deepEqual(expectedHashes([layer], [0, 4 * PS], PS)[0], ZERO_HASH);
  });
});

describe("fc_vmm --mode file (Firecracker's File backend, no handler)", () => {
  const sizes = [8 * MiB, 4 * MiB, 2 * MiB];
  const total = sizes.reduce((a, b) => a + b);

  it(
    "KVM vCPUs read every page as the file has it: touch all, then random:10:1 in its order",
    { skip: noKvm, timeout: 20000 },
    async () => {
      const mem = tempPath("file.mem");
      writePatternFile(mem, total, 7, { holes: [[5 * MiB, 64 * PS]], zeros: [[9 * MiB, 3 * PS]] });
      const common = ["--mode", "file", "--mem-file", mem, "--regions", sizes.join(","), "--vcpus", "2"];
      const out = tempPath("all.out");
      const vmm = startVmm([...common, "--out", out]);
      assert.deepEqual(await vmm.exited, { code: 0, signal: null }, vmm.stderr());
      const recs = readResults(out);
      assert.equal(recs.length, total / PS);
      assert.deepEqual(
        recs.map((r) => r.offset),
        allOffsets(total),
        "touch all: every page in address order",
      );
      assertMatches(recs, [mem], PS);
      assert.equal(recs[(5 * MiB) / PS].hash, ZERO_HASH, "a hole reads as zeros");
      const s = vmm.summary()!;
      assert.equal(s.mode, "file");
      assert.equal(s.pages, total / PS);
      assert.equal(s.vcpus, 2);
      assert.equal(s.hugepages, false);

      const outR = tempPath("random.out");
      const r1 = startVmm([...common, "--touch", "random:10:1", "--out", outR]);
      assert.deepEqual(await r1.exited, { code: 0, signal: null }, r1.stderr());
      const rr = readResults(outR);
      assert.deepEqual(rr.map((r) => r.offset), randomTouch(total / PS, 10, 1).map((p) => p * PS));
      assert.equal(rr.length, Math.round(total / PS / 10));
      assertMatches(rr, [mem], PS);
    },
  );

  it("threads-file: host threads see the same hashes; a list file is touched as written", {
    skip: noCc,
    timeout: 20000,
  }, async () => {
    const mem = tempPath("tfile.mem");
    writePatternFile(mem, 4 * MiB, 3);
    const list = tempPath("touch.list");
    writeFileSync(list, "# offsets\n0x3000\n8192\n\n4194300\n0\n");
    const out = tempPath("tfile.out");
    const vmm = startVmm([
      ...["--mode", "threads-file", "--mem-file", mem, "--regions", `${4 * MiB}`],
      ...["--vcpus", "3", "--touch", `list:${list}`, "--out", out],
    ]);
    assert.deepEqual(await vmm.exited, { code: 0, signal: null }, vmm.stderr());
    const recs = readResults(out);
    assert.deepEqual(
      recs.map((r) => r.offset),
      [0x3000, 8192, 4 * MiB - PS, 0],
      "aligned down, in list order",
    );
    assertMatches(recs, [mem], PS);
  });

  it("rejects bad options with exit 2 and a usage message", { skip: noCc, timeout: 10000 }, async () => {
    for (
      const args of [
        ["--bogus"],
        ["--mode", "kvm"], // no --socket
        ["--socket", "/nonexistent", "--regions", "5000"], // not page-multiple
        ["--mode", "file", "--mem-file", "/dev/null", "--page-size", `${HUGE}`],
        ["--socket", "/x", "--balloon", "1:4096"],
      ]
    ) {
      const v = startVmm(args);
      const e = await v.exited;
      assert.equal(e.code, 2, `${args.join(" ")}: ${v.stderr()}`);
      assert.match(v.stderr(), /fc_vmm: .*\nusage:/);
    }
  });
});

describe("fc_vmm's handshake, as a handler receives it", () => {
  it("one message: JSON regions (cumulative offsets, page sizes in bytes) and the uffd", {
    skip: noCc,
    timeout: 20000,
  }, async () => {
    const l = listenFc();
    const sizes = [8 * MiB, 4 * MiB, 2 * MiB];
    const vmm = startVmm([
      "--socket",
      l.path,
      "--regions",
      sizes.join(","),
      "--no-touch",
      "--hold-ms",
      "10000",
    ]);
    const h = await l.accept();
    const regions = JSON.parse(h.body) as Record<string, number>[];
    assert.equal(regions.length, 3);
    let offset = 0;
    regions.forEach((r, i) => {
      assert.deepEqual(Object.keys(r), [
        "base_host_virt_addr",
        "size",
        "offset",
        "page_size",
        "page_size_kib",
      ]);
      assert.equal(r.base_host_virt_addr % PS, 0);
      assert.equal(r.size, sizes[i]);
      assert.equal(r.offset, offset);
      assert.equal(r.page_size, PS);
      assert.equal(r.page_size_kib, r.page_size, "the deprecated field carries the same byte value");
      offset += r.size;
    });
    assert.equal(h.fds.length, 1, "exactly one descriptor");
    assert.equal(h.flags & 0x8, 0, "no MSG_CTRUNC");
    assert.equal(fdTarget(h.fds[0]), "anon_inode:[userfaultfd]");
    const info = readTextFile(`/proc/self/fdinfo/${h.fds[0]}`) ?? "";
    const flags = parseInt(info.match(/^flags:\s+([0-7]+)/m)?.[1] ?? "0", 8);
    assert.equal(flags & 0o4000, 0o4000, "O_NONBLOCK, as Firecracker sets it");
    const api = info.match(/^API:\s+([0-9a-f]+):([0-9a-f]+):/m);
    assert.ok(api, info);
    assert.equal(parseInt(api[2], 16) & 0xffff, 0x8, "features: UFFD_FEATURE_EVENT_REMOVE only");
    await vmm.waitFor(/"event":"sent"/);
    const sent = vmm.events().find((e) => e.event === "sent") as { regions: { base: number }[]; fds: number };
    assert.deepEqual(sent.regions.map((r) => r.base), regions.map((r) => r.base_host_virt_addr));
    assert.equal(vmm.child.exitCode, null, "the VMM keeps the socket open");
    l.hangUp();
    assert.deepEqual(await vmm.exited, { code: 0, signal: null });
    const s = vmm.summary()!;
    assert.equal(s.hungUp, true);
    assert.ok((s.waitMs as number) < 5000, `left on the hang-up, not the hold (${s.waitMs} ms)`);
    assert.equal(s.pages, 0);
    l.close();
  });

  it(
    "injection: --no-fd, --extra-fds, --misalign, --message-file",
    { skip: noCc, timeout: 20000 },
    async () => {
      const msg = tempPath("msg.json");
      writeFileSync(msg, "not json at all");
      const cases: [string[], (h: { body: string; fds: number[] }) => void][] = [
        [["--no-fd"], (h) => assert.equal(h.fds.length, 0)],
        [["--extra-fds", "2"], (h) => {
          assert.equal(h.fds.length, 3);
          assert.equal(fdTarget(h.fds[0]), "anon_inode:[userfaultfd]");
          assert.match(fdTarget(h.fds[1]), /^\/memfd:fc_vmm_extra/);
        }],
        [["--misalign", "100"], (h) => {
          for (const r of JSON.parse(h.body)) assert.equal(r.base_host_virt_addr % PS, 100);
        }],
        [["--message-file", msg], (h) => {
          assert.equal(h.body, "not json at all");
          assert.equal(h.fds.length, 1);
        }],
      ];
      for (const [extra, check] of cases) {
        const l = listenFc();
        const vmm = startVmm(["--socket", l.path, "--regions", `${MiB}`, ...extra]);
        check(await l.accept());
        l.close(); // the hang-up ends the VMM's wait (default 10 s)
        assert.deepEqual(await vmm.exited, { code: 0, signal: null }, vmm.stderr());
        assert.equal(vmm.summary()?.hungUp, true, extra.join(" "));
      }
    },
  );

  it("connect retries until the handler listens; gives up with exit 4; --hold-ms expires", {
    skip: noCc,
    timeout: 20000,
  }, async () => {
    const path = tempPath("late.sock");
    const vmm = startVmm(["--socket", path, "--regions", `${MiB}`, "--no-touch", "--hold-ms", "300"]);
    await new Promise((r) => setTimeout(r, 300));
    const l = listenFc(path);
    const h = await l.accept();
    assert.equal(h.fds.length, 1);
    assert.deepEqual(await vmm.exited, { code: 0, signal: null });
    assert.equal(vmm.summary()?.hungUp, false, "nobody hung up: the hold expired");
    l.close();

    const none = startVmm(["--socket", tempPath("none.sock"), "--connect-timeout-ms", "200"]);
    assert.equal((await none.exited).code, 4);
    assert.match(none.stderr(), /connect .*: No such file or directory/);
  });

  it("a handler that never serves: --timeout-ms ends the VMM with exit 5, --exit-after-ms with 0", {
    skip: noCc,
    timeout: 20000,
  }, async () => {
    for (const mode of noKvm ? ["threads"] : ["threads", "kvm"]) {
      const l = listenFc();
      const vmm = startVmm([
        "--socket",
        l.path,
        "--mode",
        mode,
        "--regions",
        `${MiB}`,
        "--timeout-ms",
        "500",
      ]);
      await l.accept(); // and never serve the faults
      const t = Date.now();
      assert.equal((await vmm.exited).code, 5, `${mode}: ${vmm.stderr()}`);
      assert.ok(Date.now() - t < 5000);
      assert.match(vmm.stderr(), /timeout/);
      l.close();

      const l2 = listenFc();
      const v2 = startVmm([
        "--socket",
        l2.path,
        "--mode",
        mode,
        "--regions",
        `${MiB}`,
        "--exit-after-ms",
        "200",
      ]);
      await l2.accept();
      assert.deepEqual(await v2.exited, { code: 0, signal: null });
      assert.ok(v2.events().some((e) => e.event === "exit-after"), v2.stdout());
      l2.close();
    }
  });
});

describe("fc_vmm against the C fc_handler (Firecracker's on-demand example)", () => {
  /** Runs a restore: handler and VMM, both to their end; returns the records and both summaries. */
  interface Restored {
    mem: string;
    recs: ResultRecord[];
    vmm: Record<string, unknown>;
    handler: Record<string, unknown>;
  }
  async function restore(
    mode: string,
    sizes: number[],
    pageSize: number,
    extra: string[],
    mem?: string,
  ): Promise<Restored> {
    const total = sizes.reduce((a, b) => a + b);
    if (!mem) {
      mem = tempPath(`${mode}.mem`);
      writePatternFile(mem, total, 11, { holes: [[2 * HUGE, 16 * PS]] });
    }
    const sock = tempPath("fc.sock");
    const handler = await startFcHandler(["--socket", sock, "--mem-file", mem]);
    const out = tempPath("restore.out");
    const vmm = startVmm([
      ...["--socket", sock, "--mode", mode, "--regions", sizes.join(","), "--page-size", `${pageSize}`],
      ...["--out", out, ...extra],
    ]);
    assert.deepEqual(await vmm.exited, { code: 0, signal: null }, vmm.stderr());
    assert.deepEqual(await handler.exited, { code: 0, signal: null }, handler.stderr());
    return { mem, recs: readResults(out), vmm: vmm.summary()!, handler: handler.summary()! };
  }

  it(
    "kvm, 2 regions, 2 vCPUs, touch all, then a balloon range reads as zero pages",
    { skip: noKvm, timeout: 20000 },
    async () => {
      const sizes = [8 * MiB, 4 * MiB];
      const balloon = [9 * MiB, 8 * PS]; // in region 1
      const r = await restore("kvm", sizes, PS, ["--vcpus", "2", "--balloon", balloon.join(":")]);
      const pages = (12 * MiB) / PS;
      assertMatches(r.recs, [r.mem], PS, 1);
      assert.equal(r.recs.filter((x) => x.phase === 1).length, pages);
      const p2 = r.recs.filter((x) => x.phase === 2);
      assert.deepEqual(p2.map((x) => x.offset), allOffsets(8 * PS).map((o) => o + balloon[0]));
      assert.ok(p2.every((x) => x.hash === ZERO_HASH), "ballooned pages read as zeros after the REMOVE");
      assert.equal(r.vmm.pages, pages);
      assert.equal(r.vmm.phase2Pages, 8);
      assert.equal(r.handler.pages, pages + 8, JSON.stringify(r.handler));
      assert.equal(r.handler.zeroPages, 8);
      assert.ok((r.handler.faults as number) >= pages + 8);
      assert.equal(r.handler.removed, 1);
      assert.equal(r.handler.removedBytes, 8 * PS);
    },
  );

  it(
    "threads mode: the same restore from host threads (no KVM)",
    { skip: noCc, timeout: 20000 },
    async () => {
      const sizes = [4 * MiB, 2 * MiB, 2 * MiB];
      const r = await restore("threads", sizes, PS, [
        "--vcpus",
        "4",
        "--touch",
        "random:50:9",
        "--balloon",
        "0:16384",
      ]);
      const n = Math.round((8 * MiB) / PS / 2);
      assert.equal(r.recs.filter((x) => x.phase === 1).length, n);
      assertMatches(r.recs, [r.mem], PS, 1);
      assert.ok(r.recs.filter((x) => x.phase === 2).every((x) => x.hash === ZERO_HASH));
      assert.equal(r.handler.pages, n + 4);
      assert.equal(r.handler.zeroPages, 4);
    },
  );

  it("2 MiB hugetlb pages: kvm and threads", { skip: noHuge, timeout: 20000 }, async () => {
    const sizes = [4 * MiB, 4 * MiB];
    for (const mode of ["kvm", "threads"]) {
      const r = await restore(mode, sizes, HUGE, ["--vcpus", "2", "--balloon", `${HUGE}:${HUGE}`]);
      assert.equal(r.vmm.hugepages, true);
      assert.deepEqual(r.recs.filter((x) => x.phase === 1).map((x) => x.offset), allOffsets(8 * MiB, HUGE));
      assertMatches(r.recs, [r.mem], HUGE, 1);
      assert.deepEqual(r.recs.filter((x) => x.phase === 2).map((x) => [x.offset, x.hash]), [[
        HUGE,
        ZERO_HASH,
      ]]);
      assert.equal(r.handler.pages, 5);
      assert.equal(r.handler.zeroPages, 1);
    }
  });
});
