import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { availableParallelism, tmpdir } from "node:os";
import {
  alignedSharedBytes,
  FaultServer,
  freeHugePages,
  hugePageSize,
  Mapping,
  pageSize,
  UffdError,
  Userfaultfd,
} from "../mod.ts";
import { featuresReport } from "../cli/features.ts";
import { libc } from "../ffi/mod.ts";
import { cleanupSenders, compiler, NO_CC, startSender } from "./helpers/sender.ts";
import { until } from "./helpers/uffd_wait.ts";
import { within } from "./helpers/toucher.ts";
import { faultAll, pattern, runFaulters } from "./helpers/faulters.ts";
import { runChild } from "./helpers/child.ts";
import { nobodySkipReason, worldReadableTree } from "./helpers/world_readable.ts";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Peeker } from "./helpers/peek.ts";
import { readTextFile } from "../src/memory.ts";

const T = { timeout: 90000 };
const source = (name: string): string => new URL(`./helpers/sources/${name}`, import.meta.url).href;

after(cleanupSenders);

describe("FaultServer", () => {
  it(
    "serves 12,000 pages to 4 Workers (2 sequential, 2 random, overlapping), every page checksummed",
    T,
    async () => {
      const n = 12000;
      const data = pattern(n, pageSize);
      const server = await FaultServer.start({ source: { kind: "bytes", data }, readahead: "adaptive" });
      try {
        const half = n / 2;
        const results = await runFaulters(server.mapping.start, server.mapping.length, pageSize, data, [
          { order: "seq", first: 0, count: half },
          { order: "seq", first: half, count: half },
          { order: "random", first: 0, count: n },
          { order: "random", first: 0, count: n },
        ]);
        for (const r of results) assert.equal(r.bad, 0, "every page matches its source page");
        assert.equal(results.reduce((s, r) => s + r.pages, 0), 3 * n);
      } finally {
        server.close();
      }
      const s = server.stats;
      assert.equal(s.pages, n, "each page placed exactly once");
      assert.equal(s.bytes, n * pageSize);
      assert.equal(s.errors, 0);
      assert.ok(s.faults >= n / 16 && s.faults <= 2 * n, `faults ${s.faults}`);
      assert.equal(server.state, "stopped");
    },
  );

  it("serves 10,000 random pages with 4 KiB COPY per fault and no readahead", T, async () => {
    const n = 10000;
    const data = pattern(n, pageSize, 7);
    const server = await FaultServer.start({ source: { kind: "bytes", data }, latencyEvery: 1 });
    await faultAll(server, data, [{ order: "random", first: 0, count: n }]);
    assert.equal(server.stats.faults, n, "one fault per page without readahead");
    const s = server.stats;
    assert.ok(
      s.maxLatencyUs > 0 && s.meanLatencyUs > 0 && s.meanLatencyUs <= s.maxLatencyUs,
      "latency timed",
    );
    assert.equal(server.stats.pages, n);
  });

  it("busy-polls before blocking when asked (busyPollUs) and still serves every page", T, async () => {
    const n = 2000;
    const data = pattern(n, pageSize, 9);
    const server = await FaultServer.start({ source: { kind: "bytes", data }, busyPollUs: 200 });
    await faultAll(server, data, [{ order: "seq", first: 0, count: n }]);
    assert.equal(server.stats.pages, n);
    if (availableParallelism() >= 2) {
      assert.ok(server.stats.spinHits > 0, "faults that came within the window were found by spinning");
    } else {
      console.log("skip spinHits check: one CPU, so the faulter cannot run while the server spins");
    }
  });

  it("keeps fixed readahead windows inside the range at both ends", T, async () => {
    const n = 1000; // 62.5 windows of 16: the last window is cut at the end
    const data = pattern(n, pageSize, 3);
    const server = await FaultServer.start({ source: { kind: "bytes", data }, readahead: 16 });
    try {
      using pk = new Peeker();
      const mem = pk.view(server.address, server.length);
      const src = new Uint8Array(data);
      assert.equal(mem[(n - 1) * pageSize + 5], src[(n - 1) * pageSize + 5]);
      await waitFor(() => server.stats.pages === 8);
      assert.equal(server.stats.pages, 8, "window [992, 1000) is clamped to the range end");
      assert.equal(mem[10], src[10]);
      await waitFor(() => server.stats.pages === 24);
      assert.equal(server.stats.pages, 24, "window [0, 16) at the range start");
      assert.equal(mem[15 * pageSize + 1], src[15 * pageSize + 1], "page 15 came with the first window");
      assert.equal(server.stats.faults, 2);
    } finally {
      server.close();
    }
  });

  it(
    "keeps pages that were present before serving (EEXIST inside a window) and serves the rest",
    T,
    async () => {
      const n = 16;
      const data = pattern(n, pageSize, 23);
      const src = new Uint8Array(data);
      using mapping = Mapping.anonymous(n * pageSize);
      mapping.bytes().fill(0x77, 5 * pageSize, 6 * pageSize); // present before the range is registered
      const server = await FaultServer.start({ source: { kind: "bytes", data }, mapping, readahead: 16 });
      try {
        using pk = new Peeker();
        const mem = pk.view(mapping.start, mapping.length);
        // Page 8 first: its window [0, 16) stops at page 5 (a partial copy before the faulting page).
        for (const p of [8, ...Array.from({ length: n }, (_, i) => i)]) {
          const want = p === 5 ? 0x77 : src[p * pageSize + 1];
          assert.equal(mem[p * pageSize + 1], want, `page ${p}`);
        }
      } finally {
        server.close();
      }
      const s = server.stats;
      assert.ok(s.eagain >= 1, "the first window stopped part way, at the present page");
      assert.ok(s.eexist >= 1, "a later window started at the present page");
      assert.equal(s.pages, n - 1, "every other page placed once");
      assert.equal(s.errors, 0);
      assert.equal(s.poisoned, 0, "nothing left to poison at close");
    },
  );

  it(
    "close() poisons only the pages that are really missing, keeping one present behind its back",
    T,
    async () => {
      const n = 16;
      const data = pattern(n, pageSize, 29);
      using mapping = Mapping.anonymous(n * pageSize);
      mapping.bytes().fill(0x66, 5 * pageSize, 6 * pageSize); // present, but the server never learns of it
      const server = await FaultServer.start({ source: { kind: "bytes", data }, mapping, readahead: 16 });
      using pk = new Peeker();
      try {
        assert.equal(pk.byte(mapping.start + 1), new Uint8Array(data)[1]); // window [0, 16) stops at page 5
      } finally {
        server.close();
      }
      assert.equal(server.stats.pages, 5);
      assert.equal(server.stats.poisoned, 10, "pages 6-15 poisoned, page 5 kept");
      assert.equal(
        pk.byte(mapping.start + 5 * pageSize + 7),
        0x66,
        "the present page still reads its own bytes",
      );
    },
  );

  it("grows an adaptive window on sequential faults and clamps it at the range end", T, async () => {
    const n = 40;
    const data = pattern(n, pageSize, 5);
    const server = await FaultServer.start({ source: { kind: "bytes", data }, readahead: "adaptive" });
    try {
      using pk = new Peeker();
      const mem = pk.view(server.address, server.length);
      const src = new Uint8Array(data);
      for (let p = 0; p < n; p++) assert.equal(mem[p * pageSize + 9], src[p * pageSize + 9]);
    } finally {
      server.close();
    }
    // windows 1, 2, 4, 8, 16 cover 31 pages, then the last 9 pages in one clamped window
    assert.equal(server.stats.faults, 6);
    assert.equal(server.stats.pages, n);
  });

  it("places pages with UFFDIO_MOVE from a staging area", T, async () => {
    const n = 256;
    const data = pattern(n, pageSize, 11);
    const server = await FaultServer.start({
      source: { kind: "bytes", data },
      placement: "move",
      readahead: 4,
    });
    await faultAll(server, data, [{ order: "random", first: 0, count: n }]);
    assert.equal(server.stats.pages, n);
    assert.equal(server.stats.errors, 0);
  });

  it("resolves minor faults of a memfd populated out of band with UFFDIO_CONTINUE", T, async () => {
    const n = 64;
    using memfd = Mapping.memfd(n * pageSize);
    const data = pattern(n, pageSize, 13);
    memfd.bytes().set(new Uint8Array(data));
    const server = await FaultServer.start({ source: { kind: "memfd", mapping: memfd } });
    await faultAll(server, data, [{ order: "random", first: 0, count: n }]);
    assert.equal(server.stats.pages, n);
    assert.equal(server.stats.errors, 0);
  });

  it("serves zero pages with UFFDIO_ZEROPAGE", T, async () => {
    const server = await FaultServer.start({ source: { kind: "zero", length: 32 * pageSize }, readahead: 8 });
    try {
      using pk = new Peeker();
      const mem = pk.view(server.address, server.length);
      let sum = 0;
      for (let i = 0; i < mem.length; i += 512) sum += mem[i];
      assert.equal(sum, 0);
    } finally {
      server.close();
    }
    assert.equal(server.stats.faults, 4);
    assert.equal(server.stats.pages, 32);
  });

  it("serves a file mapped read-only, straight from the page cache", T, async () => {
    const { mkdtempSync, writeFileSync, rmSync } = await import("node:fs");
    const dir = mkdtempSync("/tmp/uffd-test-");
    try {
      const bytes = new Uint8Array(10 * pageSize + 100).map((_, i) => (i * 7) & 255);
      writeFileSync(`${dir}/data.bin`, bytes);
      const server = await FaultServer.start({
        source: { kind: "file", path: `${dir}/data.bin` },
        readahead: 4,
      });
      try {
        using pk = new Peeker();
        const mem = pk.view(server.address, server.length);
        assert.equal(mem.length, 11 * pageSize);
        assert.deepEqual(mem.slice(0, bytes.length), bytes);
        assert.equal(mem[bytes.length], 0, "the tail past the file's end reads zero, as mmap defines");
      } finally {
        server.close();
      }
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  it(
    "serves pages dropped by madvise as zeros next time (REMOVE event), or from the source again",
    T,
    async () => {
      for (const onRemove of ["zero", "source"] as const) {
        const data = new SharedArrayBuffer(8 * pageSize);
        new Uint8Array(data).fill(0x5a);
        const server = await FaultServer.start({ source: { kind: "bytes", data }, onRemove, readahead: 8 });
        try {
          using pk = new Peeker();
          const mem = pk.view(server.address, server.length);
          assert.equal(mem[3 * pageSize], 0x5a);
          server.mapping.dontneed(2 * pageSize, 2 * pageSize);
          await waitFor(() => server.stats.removed === 2);
          assert.equal(server.stats.removed, 2, "REMOVE event seen for 2 pages");
          assert.equal(mem[3 * pageSize], onRemove === "zero" ? 0 : 0x5a);
          assert.equal(mem[4 * pageSize], 0x5a, "pages outside the removed range are kept");
        } finally {
          server.close();
        }
        assert.equal(server.stats.events, 1);
      }
    },
  );

  it(
    "follows the region when mremap moves it (REMAP event) and keeps serving at the new address",
    T,
    async () => {
      const n = 8;
      const data = pattern(n, pageSize, 17);
      const src = new Uint8Array(data);
      const mapping = Mapping.anonymous(n * pageSize);
      const server = await FaultServer.start({ source: { kind: "bytes", data }, mapping });
      let moved: Mapping | undefined;
      using pk = new Peeker();
      try {
        assert.equal(pk.byte(mapping.start + 1 * pageSize + 3), src[1 * pageSize + 3]);
        // Reserve the destination and move the region over the reservation (MREMAP_FIXED replaces
        // it). Unmapping a hole first and moving there raced with the runtime's own threads: one
        // could map memory into the freed range in between, have it replaced by the move, and later
        // unmap "its" memory, taking part of the served region with it (UFFDIO_POISON ENOENT at close).
        const to = libc.mmap(0, n * pageSize, 0, /* PROT_NONE */ 0x22, /* MAP_PRIVATE|MAP_ANONYMOUS */ -1, 0);
        assert.ok(to > 0 && to % pageSize === 0, "a reservation for the destination");
        moved = mapping.remap(n * pageSize, { to });
        assert.equal(moved.start, to);
        await waitFor(() => server.address === to);
        assert.equal(server.address, to, "the server saw the REMAP event");
        const view = pk.view(moved.start, moved.length);
        assert.equal(view[1 * pageSize + 3], src[1 * pageSize + 3], "a placed page moved with the region");
        assert.equal(
          view[5 * pageSize + 9],
          src[5 * pageSize + 9],
          "a missing page is served at the new address",
        );
      } finally {
        server.close();
        moved?.close();
      }
      assert.ok(server.stats.events >= 1, "REMAP (and the kernel's UNMAP of the old range) counted");
      assert.equal(server.stats.errors, 0);
      assert.equal(server.stats.poisoned, n - 2, "close poisons the never-placed pages at the new address");
    },
  );

  it("serves a custom async source from a module and counts every fault", T, async () => {
    const server = await FaultServer.start({
      source: { kind: "module", url: source("slow_source.ts"), length: 64 * pageSize },
      readahead: 4,
    });
    try {
      using pk = new Peeker();
      const mem = pk.view(server.address, server.length);
      for (let p = 0; p < 64; p++) assert.equal(mem[p * pageSize + 17], p & 255);
    } finally {
      server.close();
    }
    assert.equal(server.stats.pages, 64);
    assert.equal(server.stats.faults, 16);
  });

  it(
    "zero-fills a page whose source throws only when the caller chose onError zero, and records the error",
    T,
    async () => {
      const server = await FaultServer.start({
        source: { kind: "module", url: source("failing_source.ts"), length: 8 * pageSize },
        onError: { retries: 2, then: "zero" },
      });
      try {
        using pk = new Peeker();
        const mem = pk.view(server.address, server.length);
        assert.equal(mem[0], 1);
        assert.equal(mem[3 * pageSize], 0, "the failed page was zero-filled as asked");
        assert.equal(mem[4 * pageSize], 5);
      } finally {
        server.close();
      }
      const s = server.stats;
      assert.equal(s.zeroed, 1);
      assert.equal(s.retries, 2, "two retries before giving up");
      assert.equal(s.errors, 1);
      assert.match(server.lastError ?? "", /source cannot read page 3/);
    },
  );

  it("poisons a page whose source keeps failing (default): the toucher gets SIGBUS, never zeros", T, () => {
    const r = runChild(new URL("./children/server_poison.ts", import.meta.url).pathname);
    assert.match(r.stdout, /page0=1\n/);
    assert.match(r.stdout, /touching page 3/);
    assert.doesNotMatch(r.stdout, /page3=|survived/);
    assert.equal(r.signal, "SIGBUS");
  });

  it("survives a source that calls close() on the Worker or throws asynchronously", T, async () => {
    for (const mode of ["close", "async-throw"]) {
      const server = await FaultServer.start({
        source: { kind: "module", url: source("failing_source.ts"), length: 8 * pageSize, options: { mode } },
        onError: { retries: 0, then: "zero" },
      });
      try {
        const [r] = await runFaulters(
          server.mapping.start,
          server.mapping.length,
          pageSize,
          expectedFailing(mode),
          [{ order: "seq", first: 0, count: 8 }],
          20000,
        );
        assert.equal(r.bad, 0, `${mode}: every page as expected`);
        assert.equal(server.state, "running", `${mode}: the server still runs`);
      } finally {
        server.close();
      }
      const s = server.stats;
      assert.equal(s.pages + s.zeroed, 8, `${mode}: 8 pages resolved`);
      assert.equal(s.zeroed, mode === "close" ? 1 : 0, `${mode}: only a failed fill is zero-filled`);
    }
  });

  it(
    "a standby thread takes over when the serving thread dies mid-fault (process.exit in the source)",
    T,
    async () => {
      const crashed = new Int32Array(new SharedArrayBuffer(4));
      const server = await FaultServer.start({
        source: {
          kind: "module",
          url: source("crashing_source.ts"),
          length: 8 * pageSize,
          options: { crashed },
        },
      });
      try {
        const expected = new SharedArrayBuffer(8 * pageSize);
        for (let p = 0; p < 8; p++) new Uint8Array(expected).fill(p + 1, p * pageSize, (p + 1) * pageSize);
        const [r] = await runFaulters(server.mapping.start, server.mapping.length, pageSize, expected, [
          { order: "seq", first: 0, count: 8 },
        ], 20000);
        assert.equal(Atomics.load(crashed, 0), 1, "the primary thread really exited");
        assert.equal(r.bad, 0, "every page served, the one being filled when the thread died included");
        assert.equal(server.stats.takeovers, 1);
        assert.equal(server.state, "running");
      } finally {
        server.close();
      }
      assert.equal(server.state, "stopped");
      assert.equal(server.stats.pages, 8);
    },
  );

  it(
    "a source that ends its thread on every attempt for some pages: each takeover gets a new standby, the pages resolve by policy",
    T,
    async () => {
      // Pages 3 and 5 kill the serving thread each time; one retry each (2 threads per page),
      // then the caller's policy (zeros here, so the faulter can check them in process).
      const server = await FaultServer.start({
        source: {
          kind: "module",
          url: source("exiting_source.ts"),
          length: 8 * pageSize,
          options: { deadly: [3, 5] },
        },
        readahead: 1,
        onError: { retries: 1, then: "zero" },
      });
      try {
        const expected = new SharedArrayBuffer(8 * pageSize);
        for (let p = 0; p < 8; p++) {
          if (p !== 3 && p !== 5) new Uint8Array(expected).fill(p + 1, p * pageSize, (p + 1) * pageSize);
        }
        const [r] = await runFaulters(server.mapping.start, server.mapping.length, pageSize, expected, [
          { order: "seq", first: 0, count: 8 },
        ], 30000);
        assert.equal(
          r.bad,
          0,
          "pages 3 and 5 read as the zeros the caller chose, every other page its bytes",
        );
        assert.equal(server.state, "running");
      } finally {
        server.close();
      }
      assert.equal(server.state, "stopped"); // the counters are final
      const s = server.stats;
      assert.equal(s.takeovers, 4, "two threads ended on each deadly page");
      assert.equal(s.retries, 2, "one retry per deadly page");
      assert.equal(s.zeroed, 2);
      assert.equal(s.pages, 6);
      assert.equal(s.errors, 2);
      assert.match(server.lastError ?? "", /ended its thread 2 time\(s\) filling page 5/);
      await server.exited;
    },
  );

  it(
    "a source that ends its thread while the main thread itself is blocked on the fault: SIGBUS, not a hang",
    T,
    () => {
      const r = runChild(new URL("./children/server_exiting_main.ts", import.meta.url).pathname, [], 30000);
      assert.match(r.stdout, /page0=1\n/);
      assert.match(r.stdout, /touching page 3/);
      assert.doesNotMatch(r.stdout, /page3=|survived/);
      assert.equal(
        r.signal,
        "SIGBUS",
        `ended by ${r.signal ?? `status ${r.status}`}: ${r.stderr.slice(-300)}`,
      );
    },
  );

  it("a process that never calls close() still exits on its own", T, () => {
    const r = runChild(new URL("./children/server_no_close.ts", import.meta.url).pathname, [], 15000);
    assert.match(r.stdout, /sum=96 faults=32/);
    assert.equal(r.signal, null, "not killed by the timeout");
    assert.equal(r.status, 0);
  });

  it(
    "close() with faults outstanding serves them first, then stops (nothing blocked, no zeros)",
    T,
    async () => {
      const n = 6;
      using mapping = Mapping.anonymous(16 * pageSize);
      const server = await FaultServer.start({
        source: {
          kind: "module",
          url: source("slow_source.ts"),
          length: 16 * pageSize,
          options: { delayMs: 150 },
        },
        mapping,
      });
      const expected = new SharedArrayBuffer(16 * pageSize);
      new Uint8Array(expected).forEach((_, i, a) => (a[i] = (i >> 12) & 255));
      const done = runFaulters(
        mapping.start,
        mapping.length,
        pageSize,
        expected,
        Array.from({ length: n }, (_, i) => ({ order: "seq" as const, first: i, count: 1 })),
        20000,
      );
      // Every faulter placed or blocked on its fault before close(): a Worker that touched its page
      // only after close() would find it poisoned, and its SIGBUS ends the whole process.
      await waitFor(() => server.stats.pages + faultsWaiting(server.uffd.fd) >= n, 20000);
      assert.ok(server.stats.pages < n, "faults are outstanding at close()");
      server.close(); // faults are outstanding: the slow source is still filling
      const results = await done;
      for (const r of results) assert.equal(r.bad, 0, "each blocked faulter got its real page");
      assert.equal(server.state, "stopped");
      assert.equal(server.stats.pages, n);
      assert.equal(server.stats.poisoned, 16 - n, "never-placed pages were poisoned at close");
      assert.equal(server.uffd.closed, true);
    },
  );

  it(
    "poisons never-placed pages of a caller-owned mapping at close: a later touch is SIGBUS, not zeros",
    T,
    () => {
      const r = runChild(new URL("./children/server_closed_poison.ts", import.meta.url).pathname);
      assert.match(r.stdout, /page0=7\n/);
      assert.match(r.stdout, /closed; page0 still 7/);
      assert.doesNotMatch(r.stdout, /page2=|survived/);
      assert.equal(r.signal, "SIGBUS");
    },
  );

  it("stops on AbortSignal and releases its descriptor and mapping", T, async () => {
    const ac = new AbortController();
    const server = await FaultServer.start({
      source: { kind: "zero", length: 4 * pageSize },
      signal: ac.signal,
    });
    using pk = new Peeker();
    assert.equal(pk.byte(server.address), 0);
    ac.abort();
    assert.equal(server.state, "stopped");
    assert.equal(server.uffd.closed, true);
    assert.equal(server.mapping.closed, true);
    server.close(); // idempotent
  });

  it(
    "bounce: 3 rounds of 4 Workers copying a served region out, then serving the copy (uffd-stress)",
    T,
    async () => {
      const n = 2048;
      const original = pattern(n, pageSize, 21);
      let src = original;
      for (let round = 0; round < 3; round++) {
        const dst = new SharedArrayBuffer(n * pageSize);
        const server = await FaultServer.start({
          source: { kind: "bytes", data: src },
          readahead: round === 1 ? 8 : "adaptive",
        });
        try {
          const q = n / 4;
          const results = await runFaulters(
            server.mapping.start,
            server.mapping.length,
            pageSize,
            original,
            [0, 1, 2, 3].map((i) => ({ order: "random" as const, first: i * q, count: q, copyTo: dst })),
          );
          for (const r of results) assert.equal(r.bad, 0, `round ${round}: pages match the original`);
        } finally {
          server.close();
        }
        const s = server.stats;
        assert.equal(s.pages, n, `round ${round}: pages`);
        assert.equal(s.bytes, n * pageSize, `round ${round}: bytes`);
        assert.equal(s.errors + s.poisoned + s.zeroed, 0, `round ${round}: no failures`);
        assert.ok(s.faults >= n / 16 && s.faults <= n, `round ${round}: faults ${s.faults}`);
        src = dst; // swap: the copy becomes the next source
      }
    },
  );

  it("start() rejects at once when the source module cannot be loaded", T, async () => {
    const t0 = Date.now();
    await assert.rejects(
      FaultServer.start({ source: { kind: "module", url: source("no_such_source.ts"), length: pageSize } }),
      (e) => e instanceof UffdError && /primary thread failed/.test(e.message),
    );
    assert.ok(Date.now() - t0 < 4000, `rejected after ${Date.now() - t0} ms, not after close()'s timeout`);
  });

  it(
    "serves another process's registered range through its descriptor (remote), and refuses what cannot work across processes",
    { skip: compiler ? false : NO_CC, timeout: 30000 },
    async () => {
      const fx = startSender("region"); // a C process: 64 pages registered, its uffd sent here
      let server: FaultServer | undefined;
      try {
        const uffd = Userfaultfd.fromFd(fx.fd, 0, { remote: true });
        await until(() => /^region /m.test(fx.out()), "the fixture's region");
        const [, start, length] = fx.out().match(/^region ([0-9a-f]+) ([0-9a-f]+)$/m)!.map((x) =>
          parseInt(x, 16)
        );
        assert.equal(length, 64 * pageSize);
        // page p holds byte p + 1; the fixture sums the first byte of every page as it faults them in
        const data = alignedSharedBytes(length);
        for (let p = 0; p < 64; p++) data.fill(p + 1, p * pageSize, (p + 1) * pageSize);
        for (
          const [bad, why] of [
            [{ placement: "move" }, /moves no pages across processes/],
            [{ mapping: Mapping.anonymous(pageSize) }, /not both/],
            [{ remote: { uffd, start: start + 1, length } }, /not aligned/],
          ] as const
        ) {
          assert.throws(
            () =>
              new FaultServer({ source: { kind: "bytes", data }, remote: { uffd, start, length }, ...bad }),
            (e) => e instanceof UffdError && e.code === "EINVAL" && why.test(e.message),
          );
          if ("mapping" in bad) bad.mapping.close();
        }
        server = await FaultServer.start({
          source: { kind: "bytes", data },
          remote: { uffd, start, length },
          readahead: 4,
        });
        assert.equal(server.address, start);
        assert.equal(server.length, length);
        assert.throws(
          () => server!.bytes(),
          (e) => e instanceof UffdError && /another process/.test(e.message),
        );
        assert.equal(await within(fx.exited, 15000, "the fixture"), 0, fx.out());
        assert.match(fx.out(), new RegExp(`^sum ${(64 * 65) / 2}$`, "m"), "every page read as served");
        assert.match(fx.out(), /^last 40$/m, "the last byte of the last page (64 = 0x40)");
      } finally {
        server?.close();
        fx.close();
      }
      const s = server!.stats;
      assert.equal(s.pages, 64);
      assert.ok(s.faults <= 16, `readahead of 4 pages: ${s.faults} faults`);
      assert.equal(s.errors, 0, server!.lastError);
      assert.equal(server!.uffd.closed, true, "the server owned and closed the descriptor");
    },
  );

  const hugeNeeded = 8;
  it(
    "serves hugetlb memory: COPY of whole huge pages, zeros by COPY (hugetlb has no ZEROPAGE), CONTINUE from a hugetlb memfd",
    {
      ...T,
      skip: hugePageSize() > 0 && freeHugePages() >= hugeNeeded
        ? false
        : `needs ${hugeNeeded} free huge pages, /proc/meminfo HugePages_Free is ${freeHugePages()} ` +
          "(reserve some: echo 16 > /proc/sys/vm/nr_hugepages)",
    },
    async () => {
      const hps = hugePageSize();
      // bytes -> a caller's Mapping.hugetlb(): one fault per huge page, the source's last page
      // shorter than a huge page (the rest reads as zeros), readahead in huge pages.
      const data = alignedSharedBytes(2 * hps + 5000);
      for (let i = 0; i < data.length; i += 4096) data[i] = ((i >> 12) % 251) + 1;
      {
        using mapping = Mapping.hugetlb(3 * hps);
        const server = await FaultServer.start({ source: { kind: "bytes", data }, mapping, readahead: 2 });
        try {
          using pk = new Peeker();
          const mem = pk.view(server.address, server.length);
          let bad = 0;
          for (let i = 0; i < 3 * hps; i += 4096) if (mem[i] !== (i < data.length ? data[i] : 0)) bad++;
          assert.equal(bad, 0, "every 4 KiB of the three huge pages as in the source, zeros past its end");
          assert.equal(mapping.pageSize, hps);
          // MADV_DONTNEED on private hugetlb: a REMOVE event; the page is served as zeros next time
          mapping.dontneed(0, hps);
          assert.equal(mem[hps - 4096], 0, "a removed huge page comes back as zeros");
        } finally {
          server.close();
        }
        const s = server.stats; // final once closed
        assert.equal(s.errors, 0, server.lastError);
        assert.equal(s.pages, 3, "three huge pages placed from the source (a removed one is zero-filled)");
        assert.equal(s.removed, 1);
        assert.ok(s.faults <= 3, `readahead of 2 huge pages: ${s.faults} faults`);
      }
      // zero source on hugetlb: zero pages placed by COPY from an area never written
      {
        using mapping = Mapping.hugetlb(2 * hps);
        const server = await FaultServer.start({ source: { kind: "zero", length: 2 * hps }, mapping });
        try {
          using pk = new Peeker();
          const mem = pk.view(server.address, server.length);
          assert.equal(mem[0] + mem[hps + 123], 0);
          mem[7] = 9; // writable, private
          assert.equal(mem[7], 9);
        } finally {
          server.close();
        }
        assert.equal(server.stats.errors, 0, server.lastError);
        assert.equal(server.stats.pages, 2);
      }
      // a hugetlb memfd populated out of band, resolved with UFFDIO_CONTINUE (MINOR_HUGETLBFS)
      {
        using shm = Mapping.memfd(2 * hps, { hugetlb: true });
        shm.bytes().fill(0x3c, 0, hps).fill(0x4d, hps);
        const server = await FaultServer.start({ source: { kind: "memfd", mapping: shm } });
        try {
          using pk = new Peeker();
          const mem = pk.view(server.address, server.length);
          assert.deepEqual([mem[0], mem[hps - 1], mem[hps], mem[2 * hps - 1]], [0x3c, 0x3c, 0x4d, 0x4d]);
        } finally {
          server.close();
        }
        assert.equal(server.stats.errors, 0, server.lastError);
        assert.equal(server.stats.pages, 2);
      }
      {
        using mapping = Mapping.hugetlb(hps);
        assert.throws(
          () => new FaultServer({ source: { kind: "bytes", data }, mapping, placement: "move" }),
          (e) =>
            e instanceof UffdError && e.code === "EINVAL" &&
            /MOVE works on private anonymous/.test(e.message),
        );
      }
    },
  );

  it(
    "alignedSharedBytes gives page-aligned shared memory; a non-shared source is copied to such memory",
    T,
    async () => {
      for (const n of [1, 4096, 3 * pageSize + 5]) {
        const b = alignedSharedBytes(n);
        assert.ok(b.buffer instanceof SharedArrayBuffer);
        assert.equal(b.byteLength, n);
        assert.equal(libc.addressOf(b) % pageSize, 0, `length ${n}: page-aligned`);
      }
      assert.equal(libc.addressOf(alignedSharedBytes(100, 64)) % 64, 0);
      for (const [len, align] of [[0, pageSize], [1.5, pageSize], [-4, pageSize], [16, 3], [16, 0]]) {
        assert.throws(
          () => alignedSharedBytes(len, align),
          (e) => e instanceof UffdError && e.code === "EINVAL" && e.source === "library",
          `alignedSharedBytes(${len}, ${align})`,
        );
      }
      // A plain ArrayBuffer source (copied once into aligned shared memory) serves its bytes.
      const plain = new Uint8Array(new ArrayBuffer(4 * pageSize)).map((_, i) => (i * 7) & 255);
      await using server = await FaultServer.start({ source: { kind: "bytes", data: plain.buffer } });
      using pk = new Peeker();
      assert.deepEqual(pk.peek(server.address, server.length), plain);
    },
  );

  it("rejects bad options before creating anything", () => {
    const data = new SharedArrayBuffer(pageSize);
    assert.throws(
      () => new FaultServer({ source: { kind: "module", length: pageSize } as never }),
      (e) => e instanceof UffdError && e.source === "library" && /a module source needs url/.test(e.message),
    );
    assert.throws(
      () => new FaultServer({ source: { kind: "bytes", data }, placement: "continue" }),
      (e) => e instanceof UffdError && e.source === "library" && /does not fit/.test(e.message),
    );
    assert.throws(
      () => new FaultServer({ source: { kind: "bytes", data }, readahead: 0 }),
      (e) => e instanceof UffdError && e.code === "EINVAL",
    );
    assert.throws(
      () => new FaultServer({ source: { kind: "zero", length: 0 } }),
      (e) => e instanceof UffdError && e.code === "EINVAL",
    );
    assert.throws(
      // deno-lint-ignore no-explicit-any
      () => new FaultServer({ source: { kind: "zero", length: pageSize }, readAhead: 4 } as any),
      (e) => e instanceof UffdError && e.source === "library" && /unknown option "readAhead"/.test(e.message),
    );
    assert.throws(
      // deno-lint-ignore no-explicit-any
      () => new FaultServer({ source: { kind: "zero", length: pageSize }, onRemove: "drop" as any }),
      (e) => e instanceof UffdError && /onRemove/.test(e.message),
    );
    assert.throws(
      () => new FaultServer({ source: { kind: "zero", length: pageSize }, readahead: { min: 8, max: 4 } }),
      (e) => e instanceof UffdError && /min <= max/.test(e.message),
    );
  });
});

function expectedFailing(mode: string): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(8 * pageSize);
  const b = new Uint8Array(sab);
  for (let p = 0; p < 8; p++) {
    b.fill(p === 3 && mode === "close" ? 0 : p + 1, p * pageSize, (p + 1) * pageSize);
  }
  return sab;
}

/**
 * Threads blocked on a fault of this userfaultfd, read or not: the kernel's `total:` in
 * /proc/self/fdinfo (read through libc: Deno's node:fs wants --allow-all for /proc/self).
 */
function faultsWaiting(fd: number): number {
  const m = readTextFile(`/proc/self/fdinfo/${fd}`)?.match(/^total:\s+(\d+)/m);
  assert.ok(m, "fdinfo of a userfaultfd has total:");
  return Number(m[1]);
}

async function waitFor(cond: () => boolean, ms = 5000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond() && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
}

describe("FaultServer: served memory handed to a syscall (kernel-mode faults)", () => {
  const child = fileURLToPath(new URL("./children/server_kernel_write.ts", import.meta.url));
  const parse = (r: { status: number | null; stdout: string; stderr: string }) => {
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout.trim().split("\n").pop()!);
  };
  const mayOpenDevice = (() => {
    const fd = libc.open(new TextEncoder().encode("/dev/userfaultfd\0"), 2, /* O_RDWR */ 0);
    if (fd >= 0) libc.close(fd);
    return fd >= 0;
  })();

  it("write(2) of untouched served pages succeeds with the right bytes where kernel faults may be served", {
    ...T,
    skip: mayOpenDevice ? false : "needs access to /dev/userfaultfd",
  }, () => {
    const dir = mkdtempSync(join(tmpdir(), "uffd-kwrite-"));
    try {
      const out = parse(runChild(child, [join(dir, "out.bin")]));
      assert.deepEqual(
        { kernelFaults: out.kernelFaults, written: out.written, same: out.same },
        { kernelFaults: true, written: true, same: true },
        JSON.stringify(out),
      );
      assert.ok(out.faults > 0, "the pages were served by faults");
      // userModeOnly: true keeps the kernel's access unserved: EFAULT, as documented
      const umo = parse(runChild(child, [join(dir, "out2.bin"), "true"]));
      assert.equal(umo.kernelFaults, false);
      assert.equal(umo.written, false);
      assert.equal(umo.code, "EFAULT", JSON.stringify(umo));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  // As in cli.test.ts: with vm.unprivileged_userfaultfd = 0 and a root-only /dev/userfaultfd,
  // uid 65534 may open only a user-mode-only descriptor.
  const here = featuresReport();
  const asNobody = nobodySkipReason() ||
    (here.unprivilegedUserfaultfd !== 0
      ? "needs vm.unprivileged_userfaultfd = 0"
      : !here.device.exists || here.device.permissions !== "600" || here.device.uid !== 0
      ? "needs a root-only /dev/userfaultfd"
      : false);
  it(
    "an unprivileged process gets a user-mode-only server (kernelFaults false, EFAULT); userModeOnly: false is EPERM",
    {
      ...T,
      skip: asNobody,
    },
    () => {
      using tree = worldReadableTree(["tests/children/server_kernel_write.ts"]);
      const run = (mode: string) =>
        parse(
          tree.runAsNobody("tests/children/server_kernel_write.ts", [
            join(tree.home, `out-${mode}.bin`),
            mode,
          ]),
        );
      const dflt = run("default");
      assert.equal(dflt.started, true, JSON.stringify(dflt));
      assert.equal(dflt.kernelFaults, false);
      assert.equal(dflt.code, "EFAULT", JSON.stringify(dflt));
      const strict = run("false");
      assert.equal(strict.started, false, JSON.stringify(strict));
      assert.equal(strict.code, "EPERM");
    },
  );

  it("userModeOnly must be a boolean", async () => {
    await assert.rejects(
      FaultServer.start({
        source: { kind: "zero", length: pageSize },
        userModeOnly: "no" as unknown as boolean,
      }),
      (e: unknown) => e instanceof UffdError && /userModeOnly must be a boolean/.test(e.message),
    );
  });
});

describe("FaultServer: counters", () => {
  it("heapStart and heapNow are the serving thread's own JS heap, not the process's", T, async () => {
    const dir = mkdtempSync(join(tmpdir(), "uffd-heap-"));
    try {
      // 96 MiB held by the main thread, as a Buffer read from a file (heap-accounted in every runtime)
      writeFileSync(join(dir, "big.bin"), new Uint8Array(96 << 20).fill(1));
      const big = readFileSync(join(dir, "big.bin"));
      const server = await FaultServer.start({ source: { kind: "zero", length: 16 * pageSize } });
      try {
        const { heapStart, heapNow } = server.stats;
        assert.ok(heapStart > 0 && heapStart < 48 << 20, `heapStart ${heapStart} (main holds ${big.length})`);
        assert.ok(heapNow > 0 && heapNow < 48 << 20, `heapNow ${heapNow}`);
      } finally {
        await server.close();
      }
      assert.equal(big[big.length - 1], 1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it(
    "count a fault's pages before its thread is woken (1024 touches, each sees its own page counted)",
    T,
    () => {
      const r = runChild(fileURLToPath(new URL("./children/server_counters.ts", import.meta.url)), [], 60000);
      assert.equal(r.status, 0, r.stderr);
      const out = JSON.parse(r.stdout.trim().split("\n").pop()!);
      assert.equal(out.sum, 5 * 1024);
      assert.equal(
        out.behind,
        0,
        `counters lagged behind the woken faulter ${out.behind} times; ${out.firstBehind}`,
      );
      assert.equal(out.pages, 1024);
      assert.equal(out.closedPages, 1024);
      assert.equal(out.bytes, 1024 * pageSize);
    },
  );
});
