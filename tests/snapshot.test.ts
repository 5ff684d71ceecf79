// Snapshots of this process's memory: capture (zero pages as holes), diff layers with exactly the
// pages written (against the scan and the files' data extents), a chain of three diffs, lazy and
// eager restore into anonymous and WebAssembly memory, checksums (a damaged layer is caught),
// a too-small target, memory that changes during capture, inspect and rebase.
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { libc } from "../ffi/mod.ts";
import {
  dataExtents,
  DirtyTracker,
  inspectSnapshot,
  Mapping,
  pageSize,
  readManifest,
  rebaseSnapshotDir,
  restore,
  snapshot,
  UffdError,
} from "../mod.ts";
import { cstring } from "../src/memory.ts";
import { runFaulters } from "./helpers/faulters.ts";
import { runChild } from "./helpers/child.ts";
import { Peeker } from "./helpers/peek.ts";

const T = { timeout: 60000 };
const PS = pageSize;
const root = mkdtempSync(join(tmpdir(), "uffd-snap-"));
after(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const newDir = (): string => join(root, `s${n++}`);

/** Fills page p with a pattern of (p, salt). */
function fillPage(mem: Uint8Array, p: number, salt: number): void {
  mem.set(pageContent(p, salt), p * PS);
}

/** The bytes fillPage() writes into page p. */
function pageContent(p: number, salt: number): Uint8Array {
  const w = new Uint32Array(PS / 4);
  for (let i = 0; i < w.length; i++) {
    w[i] = (Math.imul(p + 7, 2246822519) ^ Math.imul(i + 1, 3266489917) ^ salt) >>> 0;
  }
  return new Uint8Array(w.buffer);
}

/** A copy of the memory's bytes, as the expected content of a restore. */
function copyOf(mem: Uint8Array): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(mem.length);
  new Uint8Array(sab).set(mem);
  return sab;
}

/** The data pages of a file (SEEK_DATA/SEEK_HOLE). */
function dataPages(path: string): number[] {
  const fd = libc.open(cstring(path), 0, 0);
  assert.ok(fd >= 0, path);
  try {
    const size = libc.syscall(8, fd, 0, 2);
    return dataExtents(fd, size).flatMap(([s, e]) =>
      Array.from({ length: (e - s) / PS }, (_, i) => s / PS + i)
    );
  } finally {
    libc.close(fd);
  }
}

/** Restores lazily into a new Mapping and checks every page against `exp` from two Workers. */
async function checkRestore(dir: string, exp: SharedArrayBuffer, options = {}): Promise<void> {
  const r = await restore(dir, options);
  try {
    const pages = exp.byteLength / PS;
    const res = await runFaulters(r.address, r.length, PS, exp, [
      { order: "random", first: 0, count: pages },
      { order: "seq", first: 0, count: pages },
    ]);
    assert.deepEqual(
      res.map((x) => x.bad),
      [0, 0],
      "every restored page equals the memory when it was taken",
    );
  } finally {
    r.close();
  }
}

describe("snapshot: capture and restore", () => {
  it(
    "anonymous memory: zero pages are holes, the restore (lazy and eager) reads back every page",
    T,
    async () => {
      using mem = Mapping.anonymous(256 * PS);
      const b = mem.bytes();
      const written = [0, 1, 2, 50, 51, 100, 255];
      for (const p of written) fillPage(b, p, 1);
      b[77 * PS] = 0; // touched but zero: still a hole
      const dir = newDir();
      const m = snapshot(mem, dir);
      assert.equal(m.layers.length, 1);
      assert.equal(m.layers[0].pages, written.length);
      assert.deepEqual(dataPages(join(dir, "base.mem")), written, "exactly the non-zero pages hold data");
      const exp = copyOf(b);
      await checkRestore(dir, exp);
      await checkRestore(dir, exp, { readahead: 4, verify: "open" });
      // Eager: read into the memory, no server; the main thread may read it.
      const e = await restore(dir, { eager: true });
      try {
        assert.equal(e.server, undefined);
        assert.deepEqual((e.memory as Mapping).bytes(), new Uint8Array(exp));
      } finally {
        (e.memory as Mapping).close();
      }
    },
  );

  it(
    "diff layers hold exactly the pages written (zeros too), as the scan saw them; three diffs restore the latest state",
    T,
    async () => {
      using mem = Mapping.anonymous(128 * PS);
      let b = mem.bytes();
      for (let p = 0; p < 128; p += 3) fillPage(b, p, 2);
      const dir = newDir();
      using tracker = DirtyTracker.start(mem);
      tracker.snapshot(dir);
      // Tracked (write-protected) memory is written by a Worker with a deadline: a write fault that
      // nobody resolves fails this test. `b` now only holds what the memory should hold.
      b = b.slice();
      using pk = new Peeker();
      const rounds = [[5, 6, 7, 90], [6, 0], [127, 3, 64, 65, 66]];
      for (const [i, pages] of rounds.entries()) {
        for (const p of pages) {
          fillPage(b, p, 10 + i);
          pk.poke(mem.start + p * PS, pageContent(p, 10 + i));
        }
        if (i === 1) { // page 0 written to zeros: the diff must carry the zeros
          b.fill(0, 0, PS);
          pk.fill(mem.start, PS, 0);
        }
        const seen = tracker.written().flatMap((r) =>
          Array.from({ length: (r.end - r.start) / PS }, (_, k) => (r.start - mem.start) / PS + k)
        );
        assert.deepEqual(seen, [...pages].sort((x, y) => x - y), `round ${i}: the scan saw the writes`);
        const layer = tracker.diff(dir);
        assert.equal(layer.pages, pages.length, `round ${i}: layer pages`);
        assert.deepEqual(
          dataPages(join(dir, layer.file)),
          [...pages].sort((x, y) => x - y),
          `round ${i}: file extents`,
        );
      }
      assert.deepEqual(tracker.written(), [], "nothing written since the last diff");
      const m = readManifest(dir);
      assert.deepEqual(m.layers.map((l) => l.file), ["base.mem", "diff-1.mem", "diff-2.mem", "diff-3.mem"]);
      await checkRestore(dir, copyOf(b));
      // inspect: page counts per layer and zero pages.
      const rep = inspectSnapshot(dir);
      assert.deepEqual(rep.layers.map((l) => l.dataPages), [43, 4, 2, 5]);
      assert.equal(rep.layers.reduce((s, l) => s + l.topPages, 0) + rep.zeroPages, 128);
      // rebase: one base with the same bytes.
      const merged = rebaseSnapshotDir(dir);
      assert.equal(merged.layers.length, 1);
      await checkRestore(dir, copyOf(b), { verify: "open" });
    },
  );

  it("shmem memory is captured too (restored into anonymous memory)", T, async () => {
    using mem = Mapping.memfd(32 * PS);
    const b = mem.bytes();
    for (const p of [1, 9, 30]) fillPage(b, p, 4);
    const dir = newDir();
    try {
      snapshot(mem, dir);
    } catch (e) {
      if (e instanceof UffdError && (e.code === "EINVAL" || e.code === "EOPNOTSUPP")) {
        assert.fail(`WP_ASYNC on shmem refused: ${e.message}`);
      }
      throw e;
    }
    assert.deepEqual(dataPages(join(dir, "base.mem")), [1, 9, 30]);
    await checkRestore(dir, copyOf(b));
  });

  it(
    "WebAssembly.Memory: capture, grow, diff, restore lazily into a fresh instance's memory",
    T,
    async () => {
      const memory = new WebAssembly.Memory({ initial: 4, maximum: 16 }); // 256 KiB
      let b = new Uint8Array(memory.buffer);
      for (const p of [0, 10, 63]) fillPage(b, p, 5);
      const dir = newDir();
      using tracker = DirtyTracker.start(memory);
      tracker.snapshot(dir);
      memory.grow(2);
      b = new Uint8Array(memory.buffer);
      fillPage(b, 70, 6); // in the grown part
      fillPage(b, 10, 6);
      const layer = tracker.diff(dir);
      assert.ok(
        dataPages(join(dir, layer.file)).includes(70) && dataPages(join(dir, layer.file)).includes(10),
      );
      assert.equal(readManifest(dir).length, 6 * 65536);
      const exp = copyOf(b);
      const fresh = new WebAssembly.Memory({ initial: 6, maximum: 16 });
      const r = await restore(dir, { into: fresh });
      try {
        const [res] = await runFaulters(r.address, r.length, PS, exp, [{
          order: "random",
          first: 0,
          count: 96,
        }]);
        assert.equal(res.bad, 0);
      } finally {
        await r.complete();
      }
      assert.deepEqual(
        new Uint8Array(fresh.buffer),
        new Uint8Array(exp),
        "complete(): ordinary memory after",
      );
      await assert.rejects(
        restore(dir, { into: new WebAssembly.Memory({ initial: 2 }) }),
        (e: unknown) => e instanceof UffdError && /grow it to 6 wasm pages/.test(e.message),
      );
    },
  );
});

describe("snapshot: integrity and consistency", () => {
  it(
    "a damaged layer is caught: at open a typed error; at fault time the page is poisoned (SIGBUS), never served",
    T,
    async () => {
      using mem = Mapping.anonymous(64 * PS);
      const b = mem.bytes();
      for (let p = 0; p < 64; p++) fillPage(b, p, 7);
      const dir = newDir();
      snapshot(mem, dir, { chunkSize: 16 * PS });
      const path = join(dir, "base.mem");
      const bytes = readFileSync(path);
      bytes[40 * PS + 123] ^= 0x55; // chunk 2 (pages 32-47)
      writeFileSync(path, bytes);
      await assert.rejects(
        restore(dir, { verify: "open" }),
        (e: unknown) =>
          e instanceof UffdError && e.code === "EBADMSG" &&
          /base\.mem bytes \[131072, 196608\)/.test(e.message),
      );
      await assert.rejects(restore(dir, { eager: true }), /checksum mismatch/);
      // Pages of good chunks are served; a page of the damaged chunk kills its toucher.
      const exp = copyOf(b);
      const r = await restore(dir, { readahead: 1 });
      try {
        const [res] = await runFaulters(r.address, r.length, PS, exp, [{
          order: "seq",
          first: 0,
          count: 32,
        }]);
        assert.equal(res.bad, 0, "good chunks served");
      } finally {
        r.close();
      }
      const child = runChild(new URL("./children/snapshot_corrupt.ts", import.meta.url).pathname, [
        dir,
        "40",
      ]);
      assert.match(child.stdout, /page0=/);
      assert.doesNotMatch(child.stdout, /bad=|survived/);
      assert.equal(child.signal, "SIGBUS", child.stderr);
    },
  );

  it(
    "memory written during capture: the snapshot is consistent at one instant, or rejected (EAGAIN)",
    T,
    async () => {
      const pages = 256;
      using mem = Mapping.anonymous(pages * PS);
      mem.bytes().fill(1);
      const stop = new Int32Array(new SharedArrayBuffer(4));
      const w = new Worker(new URL("./helpers/wasm_writer_worker.ts", import.meta.url), { type: "module" });
      const addr = new Float64Array(new SharedArrayBuffer(8));
      addr[0] = mem.start;
      const started = new Promise((r) => (w.onmessage = r));
      w.postMessage({ buffer: addr.buffer, stop: stop.buffer, pages });
      let outcome = "";
      try {
        await started;
        const dir = newDir();
        try {
          snapshot(mem, dir);
          // Consistent: page values fall by at most one, at most once (a sweep in progress).
          const img = new Uint32Array(readFileSync(join(dir, "base.mem")).buffer.slice(0));
          const v = Array.from({ length: pages }, (_, p) => img[p * 1024]);
          let drops = 0;
          for (let p = 1; p < pages; p++) {
            if (v[p] === v[p - 1]) continue;
            assert.equal(v[p], v[p - 1] - 1, `page ${p}: ${v[p - 1]} then ${v[p]}: a torn copy`);
            drops++;
          }
          assert.ok(drops <= 1, "one sweep boundary at most");
          outcome = "consistent";
        } catch (e) {
          assert.ok(
            e instanceof UffdError && e.code === "EAGAIN" && /kept changing/.test(e.message),
            String(e),
          );
          outcome = "rejected";
        }
      } finally {
        Atomics.store(stop, 0, 1);
        await new Promise((r) => (w.onmessage = r));
        w.terminate();
      }
      console.log(`capture under a writer: ${outcome}`);
    },
  );
});
