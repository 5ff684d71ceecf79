// The restore machinery the Firecracker handler and snapshots share: the snapshot source (memory
// file + diff layers, topmost layer with data wins, holes are zeros), several regions on one
// descriptor at their own source offsets, record and prefetch of a working set, REMOVE, rebase,
// and the Firecracker handshake reader against malformed input.
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { libc } from "../ffi/mod.ts";
import {
  FaultServer,
  Mapping,
  pageSize,
  parseRegions,
  readHandshake,
  rebaseSnapshot,
  sendMessage,
  socketPair,
  UffdError,
  Userfaultfd,
  type WorkingSet,
  workingSetPages,
} from "../mod.ts";
import { runFaulters } from "./helpers/faulters.ts";
import { Toucher, within } from "./helpers/toucher.ts";

/** What descriptor `fd` is (its /proc/self/fd link), or "?" when it is not open. */
function fdTarget(fd: number): string {
  const path = new TextEncoder().encode(`/proc/self/fd/${fd}\0`);
  const buf = new Uint8Array(512);
  const n = libc.syscall(89, /* readlink */ libc.addressOf(path), libc.addressOf(buf), buf.length);
  return n > 0 ? new TextDecoder().decode(buf.subarray(0, n)) : "?";
}

const T = { timeout: 60000 };
const dir = mkdtempSync(join(tmpdir(), "uffd-restore-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const PS = pageSize;

/** A page-distinct pattern: every u32 of page p of salt s is a function of (s, p, i). */
function page(p: number, salt: number): Uint8Array {
  const w = new Uint32Array(PS / 4);
  for (let i = 0; i < w.length; i++) {
    w[i] = (Math.imul(p + 1, 2654435761) ^ Math.imul(i + 1, 40503) ^ salt) >>> 0;
  }
  return new Uint8Array(w.buffer);
}

/** Writes a sparse file of `pages` pages with the given pages' data (zeros allowed: written, not holes). */
function sparseFile(name: string, pages: number, data: Map<number, Uint8Array>): string {
  const path = join(dir, name);
  const fd = openSync(path, "w");
  try {
    for (const [p, bytes] of data) writeSync(fd, bytes, 0, bytes.length, p * PS);
  } finally {
    closeSync(fd);
  }
  truncate(path, pages * PS);
  return path;
}

function truncate(path: string, length: number): void {
  const fd = libc.open(new TextEncoder().encode(path + "\0"), 2, 0);
  assert.ok(fd >= 0);
  assert.equal(libc.ftruncate(fd, length), 0);
  libc.close(fd);
}

/** Expected bytes of a layered chain: the topmost file with data wins, else zeros. */
function expected(pages: number, files: Map<number, Uint8Array>[]): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(pages * PS);
  const out = new Uint8Array(sab);
  for (let p = 0; p < pages; p++) {
    for (let k = files.length - 1; k >= 0; k--) {
      const d = files[k].get(p);
      if (d) {
        out.set(d, p * PS);
        break;
      }
    }
  }
  return sab;
}

/** A three-file chain: base with holes at 20-23, layer 1 (3, 4, 10 written as zeros, 40-47), layer 2 (4, 41). */
function chain(pages = 64): { base: string; layers: string[]; files: Map<number, Uint8Array>[] } {
  const base = new Map<number, Uint8Array>();
  for (let p = 0; p < pages; p++) if (p < 20 || p > 23) base.set(p, page(p, 1));
  const l1 = new Map<number, Uint8Array>([[3, page(3, 2)], [4, page(4, 2)], [10, new Uint8Array(PS)]]);
  for (let p = 40; p < 48; p++) l1.set(p, page(p, 2));
  const l2 = new Map<number, Uint8Array>([[4, page(4, 3)], [41, page(41, 3)]]);
  const tag = Math.random().toString(36).slice(2);
  return {
    base: sparseFile(`base-${tag}`, pages, base),
    layers: [sparseFile(`l1-${tag}`, pages, l1), sparseFile(`l2-${tag}`, pages, l2)],
    files: [base, l1, l2],
  };
}

/** /proc/self/smaps, read through libc (Deno's node:fs wants --allow-all for /proc/self). */
function smaps(): string {
  const fd = libc.open(new TextEncoder().encode("/proc/self/smaps\0"), 0, 0);
  assert.ok(fd >= 0, "open /proc/self/smaps");
  const parts: Uint8Array[] = [];
  for (;;) {
    const buf = new Uint8Array(1 << 16);
    const n = libc.read(fd, buf, buf.length);
    if (n <= 0) break;
    parts.push(buf.subarray(0, n));
  }
  libc.close(fd);
  const dec = new TextDecoder();
  return parts.map((b) => dec.decode(b, { stream: true })).join("") + dec.decode();
}

/** Resident bytes of this process's mappings of `path` (/proc/self/smaps Rss). */
function residentOf(path: string): number {
  let rss = 0;
  let inFile = false;
  for (const line of smaps().split("\n")) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) inFile = line.endsWith(` ${path}`);
    else if (inFile && line.startsWith("Rss:")) rss += Number(line.split(/\s+/)[1]) * 1024;
  }
  return rss;
}

describe("snapshot source: populate (read the files ahead)", () => {
  it(
    "reads every data extent of the chain into this process's mappings, skips holes, content unchanged",
    T,
    async () => {
      const pages = 64;
      const c = chain(pages);
      const exp = expected(pages, c.files);
      const server = await FaultServer.start({
        source: { kind: "snapshot", path: c.base, layers: c.layers },
        populate: true,
      });
      try {
        // base: 60 data pages (20-23 are holes), layer 1: 11, layer 2: 2
        assert.equal(server.populateBytes, (60 + 11 + 2) * PS);
        const until = Date.now() + 10000;
        while (server.populated < server.populateBytes && Date.now() < until) {
          await new Promise((r) => setTimeout(r, 5));
        }
        assert.equal(server.populated, server.populateBytes);
        // At least the data pages are mapped (the kernel's fault-around may map cached neighbours too).
        assert.ok(residentOf(c.base) >= 60 * PS, `base resident ${residentOf(c.base)}`);
        assert.ok(residentOf(c.layers[0]) >= 11 * PS, `layer 1 resident ${residentOf(c.layers[0])}`);
        assert.ok(residentOf(c.layers[1]) >= 2 * PS, `layer 2 resident ${residentOf(c.layers[1])}`);
        const [r] = await runFaulters(server.mapping.start, server.mapping.length, PS, exp, [
          { order: "random", first: 0, count: pages },
        ]);
        assert.equal(r.bad, 0, "every page as the chain says");
      } finally {
        server.close();
      }
      const plain = await FaultServer.start({ source: { kind: "snapshot", path: c.base } });
      try {
        assert.equal(plain.populateBytes, 0, "populate is off by default");
        assert.equal(residentOf(c.base), 0, "without populate nothing is read ahead");
      } finally {
        plain.close();
      }
    },
  );

  it(
    'populate: "sync" has read every data extent when start() resolves (as MAP_POPULATE); a wrong value is refused',
    T,
    async () => {
      const pages = 64;
      const c = chain(pages);
      const exp = expected(pages, c.files);
      const server = await FaultServer.start({
        source: { kind: "snapshot", path: c.base, layers: c.layers },
        populate: "sync",
      });
      try {
        assert.equal(server.populateBytes, (60 + 11 + 2) * PS);
        assert.equal(server.populated, server.populateBytes, "all of it, before start() resolved");
        assert.ok(residentOf(c.base) >= 60 * PS, `base resident ${residentOf(c.base)}`);
        assert.ok(residentOf(c.layers[1]) >= 2 * PS, `layer 2 resident ${residentOf(c.layers[1])}`);
        const [r] = await runFaulters(server.mapping.start, server.mapping.length, PS, exp, [
          { order: "random", first: 0, count: pages },
        ]);
        assert.equal(r.bad, 0, "every page as the chain says");
      } finally {
        server.close();
      }
      await assert.rejects(
        FaultServer.start({
          source: { kind: "snapshot", path: c.base },
          populate: "now" as unknown as boolean,
        }),
        (e: unknown) => e instanceof UffdError && /populate must be a boolean or "sync"/.test(e.message),
      );
    },
  );
});

describe("snapshot source: memory file + diff layers", () => {
  it(
    "serves each page from the topmost layer with data; holes fall through; a hole everywhere is zeros",
    T,
    async () => {
      const pages = 64;
      const c = chain(pages);
      const exp = expected(pages, c.files);
      for (const readahead of [1, "adaptive"] as const) {
        const server = await FaultServer.start({
          source: { kind: "snapshot", path: c.base, layers: c.layers },
          readahead,
        });
        try {
          const [r] = await runFaulters(server.mapping.start, server.mapping.length, PS, exp, [
            { order: "random", first: 0, count: pages },
          ]);
          assert.equal(r.bad, 0, `readahead ${readahead}: every page as the chain says`);
        } finally {
          server.close();
        }
        assert.equal(server.stats.pages, pages);
        // Pages 20-23 are holes in every file: zero pages, not copies.
        assert.ok(server.stats.zeroPages >= 4, `holes placed as zero pages (${server.stats.zeroPages})`);
        if (readahead === 1) {
          assert.equal(
            server.stats.zeroPages,
            4,
            "exactly the 4 holes (page 10 is written zeros)",
          );
        }
      }
    },
  );

  it("rejects a layer longer than its memory file, and names a missing file", T, () => {
    const c = chain(8);
    const long = sparseFile("long", 16, new Map([[0, page(0, 9)]]));
    assert.throws(
      () => new FaultServer({ source: { kind: "snapshot", path: c.base, layers: [long] } }),
      (e: unknown) => e instanceof UffdError && /longer|more than the memory file/.test(e.message),
    );
    assert.throws(
      () => new FaultServer({ source: { kind: "snapshot", path: join(dir, "missing.mem") } }),
      (e: unknown) => e instanceof UffdError && e.message.includes("missing.mem"),
    );
  });

  it("rebaseSnapshot merges the layers into one file that equals the layered chain", T, () => {
    const pages = 64;
    const c = chain(pages);
    const out = join(dir, "merged.mem");
    const r = rebaseSnapshot(c.base, c.layers, out);
    assert.equal(r.length, pages * PS);
    assert.equal(r.extents >= 3, true);
    assert.deepEqual(new Uint8Array(readFileSync(out)), new Uint8Array(expected(pages, c.files)));
    // In place, like snapshot-editor.
    rebaseSnapshot(c.base, c.layers);
    assert.deepEqual(new Uint8Array(readFileSync(c.base)), new Uint8Array(expected(pages, c.files)));
  });
});

/** Two regions of this process on one descriptor, wrapped as a remote descriptor (as a VMM's would be). */
function twoRegions(a: number, b: number): { uffd: Userfaultfd; ra: Mapping; rb: Mapping; close(): void } {
  const own = Userfaultfd.open({ features: ["EVENT_REMOVE"] });
  const ra = Mapping.anonymous(a * PS);
  const rb = Mapping.anonymous(b * PS);
  own.register(ra);
  own.register(rb);
  const fd = libc.syscall(32, /* dup */ own.fd);
  own.close(); // the registrations stay with the open file
  const uffd = Userfaultfd.fromFd(fd, ["EVENT_REMOVE"], { remote: true });
  return {
    uffd,
    ra,
    rb,
    close: () => {
      uffd.close();
      ra.close();
      rb.close();
    },
  };
}

function slice(sab: SharedArrayBuffer, firstPage: number, pages: number): SharedArrayBuffer {
  const out = new SharedArrayBuffer(pages * PS);
  new Uint8Array(out).set(new Uint8Array(sab, firstPage * PS, pages * PS));
  return out;
}

describe("several regions on one descriptor", () => {
  it("serves each region from its own source offset (regions out of file order)", T, async () => {
    const pages = 64;
    const c = chain(pages);
    const exp = expected(pages, c.files);
    const m = twoRegions(16, 24);
    try {
      const server = await FaultServer.start({
        source: { kind: "snapshot", path: c.base, layers: c.layers },
        // Region A holds file pages 40-55, region B pages 0-23.
        remote: {
          uffd: m.uffd,
          regions: [{ start: m.ra.start, length: m.ra.length, offset: 40 * PS }, {
            start: m.rb.start,
            length: m.rb.length,
            offset: 0,
          }],
        },
        readahead: "adaptive",
        onClose: "zero",
      });
      try {
        const [ra, rb] = await Promise.all([
          runFaulters(m.ra.start, m.ra.length, PS, slice(exp, 40, 16), [{
            order: "random",
            first: 0,
            count: 16,
          }]),
          runFaulters(m.rb.start, m.rb.length, PS, slice(exp, 0, 24), [{
            order: "seq",
            first: 0,
            count: 24,
          }]),
        ]);
        assert.equal(ra[0].bad, 0, "region A: file pages 40-55");
        assert.equal(rb[0].bad, 0, "region B: file pages 0-23");
        assert.deepEqual(server.regions.map((r) => r.offset), [40 * PS, 0]);
      } finally {
        server.close();
      }
      assert.equal(server.stats.pages, 40);
      assert.equal(server.stats.outside, 0);
    } finally {
      m.close();
    }
  });

  it("rejects overlapping, misaligned and out-of-file regions with a message naming them", T, () => {
    const c = chain(8);
    const m = twoRegions(4, 4);
    try {
      const mk = (regions: { start: number; length: number; offset?: number }[]) => () =>
        new FaultServer({ source: { kind: "snapshot", path: c.base }, remote: { uffd: m.uffd, regions } });
      assert.throws(mk([]), /non-empty array/);
      assert.throws(
        mk([{ start: m.ra.start, length: 4 * PS, offset: 0 }, {
          start: m.rb.start,
          length: 4 * PS,
          offset: 2 * PS,
        }]),
        /overlap in the source/,
      );
      assert.throws(mk([{ start: m.ra.start + 1, length: 4 * PS }]), /not aligned/);
      assert.throws(mk([{ start: m.ra.start, length: 4 * PS, offset: 6 * PS }]), /reaches past the source/);
    } finally {
      m.close();
    }
  });
});

describe("record and prefetch", () => {
  it(
    "records the pages faulted in first-touch order; a second restore prefetches them and faults on none",
    T,
    async () => {
      const pages = 64;
      const c = chain(pages);
      const exp = expected(pages, c.files);
      const touched = [50, 3, 41, 7, 22, 60, 61, 62, 12];
      const touch = async (server: FaultServer, list: number[]) => {
        for (const p of list) {
          const [r] = await runFaulters(server.mapping.start, server.mapping.length, PS, exp, [
            { order: "seq", first: p, count: 1 },
          ]);
          assert.equal(r.bad, 0, `page ${p}`);
        }
      };
      let ws: WorkingSet;
      {
        const server = await FaultServer.start({
          source: { kind: "snapshot", path: c.base, layers: c.layers },
          record: true,
        });
        try {
          await touch(server, touched);
          ws = server.workingSet();
        } finally {
          server.close();
        }
        assert.deepEqual(ws.runs.flatMap(([a, n]) => Array.from({ length: n }, (_, i) => a + i)), touched);
        assert.equal(workingSetPages(ws), touched.length);
        assert.equal(server.stats.faults, touched.length);
      }
      const server = await FaultServer.start({
        source: { kind: "snapshot", path: c.base, layers: c.layers },
        prefetch: ws,
      });
      try {
        const until = Date.now() + 10000;
        while (server.stats.prefetchMs === 0 && Date.now() < until) {
          await new Promise((r) => setTimeout(r, 5));
        }
        assert.ok(server.stats.prefetchMs > 0, "the prefetch finished");
        assert.equal(server.stats.prefetched, touched.length);
        await touch(server, touched);
        assert.equal(
          server.stats.faults,
          0,
          "every page of the working set was installed before it was touched",
        );
        await touch(server, [30]);
        assert.equal(server.stats.faults, 1, "a page outside the working set is served on demand");
      } finally {
        server.close();
      }
    },
  );

  it(
    "a fault on a page the prefetcher is installing with DONTWAKE is woken (demand faults first)",
    T,
    async () => {
      const pages = 4096;
      const big = new Map<number, Uint8Array>();
      for (let p = 0; p < pages; p++) big.set(p, page(p, 5));
      const path = sparseFile("big.mem", pages, big);
      const exp = expected(pages, [big]);
      const ws: WorkingSet = { pageSize: PS, runs: [[0, pages]] };
      for (let round = 0; round < 3; round++) {
        const server = await FaultServer.start({
          source: { kind: "file", path },
          prefetch: ws,
          prefetchRun: 16,
        });
        try {
          // Faulters race the prefetcher over the same pages: every one must wake and read right bytes.
          const r = await runFaulters(server.mapping.start, server.mapping.length, PS, exp, [
            { order: "random", first: 0, count: pages },
            { order: "seq", first: 0, count: pages },
          ], 30000);
          assert.deepEqual(r.map((x) => x.bad), [0, 0]);
        } finally {
          server.close();
        }
        assert.equal(server.stats.pages, pages, "each page placed once, by a fault or by the prefetcher");
      }
    },
  );

  it(
    "a fault whose page another resolver placed with DONTWAKE meanwhile is woken (EEXIST -> WAKE)",
    T,
    async () => {
      // The server reads the fault and starts a slow fill; meanwhile the page is placed with
      // COPY_MODE_DONTWAKE (as a prefetcher does), which wakes nobody. The server's own COPY then
      // gets EEXIST: only its WAKE lets the toucher go on.
      const server = await FaultServer.start({
        source: {
          kind: "module",
          url: new URL("./helpers/sources/slow_source.ts", import.meta.url).href,
          length: 16 * PS,
          options: { delayMs: 400 },
        },
      });
      const t = new Toucher();
      try {
        const touched = t.read(server.mapping.page(5));
        await new Promise((r) => setTimeout(r, 150)); // the fault is read, the fill is under way
        const page = new Uint8Array(PS).fill(5); // what the slow source gives page 5
        server.uffd.copy({ start: server.mapping.page(5), len: PS, src: page, dontwake: true });
        const r = await within(touched, 5000, "the toucher of a page placed with DONTWAKE");
        assert.equal(r.first, 5);
        assert.ok(server.stats.eexist >= 1, "the server's copy found the page present");
      } finally {
        server.close();
        t.close();
      }
    },
  );

  it("refuses prefetch with a fill source and a malformed working set", T, () => {
    assert.throws(
      () =>
        new FaultServer({
          source: { kind: "module", url: "data:text/javascript,export function fill(){}", length: PS },
          prefetch: { pageSize: PS, runs: [[0, 1]] },
        }),
      /address source/,
    );
    const data = new SharedArrayBuffer(PS);
    assert.throws(
      () =>
        new FaultServer({
          source: { kind: "bytes", data },
          prefetch: { pageSize: PS, runs: [[0, -1]] } as WorkingSet,
        }),
      /runs must be/,
    );
  });
});

describe("warm server threads", () => {
  it("a server takes threads started ahead by FaultServer.warm() and serves with them", T, async () => {
    FaultServer.coolDown();
    FaultServer.warm();
    assert.equal(FaultServer.warmThreads, 2);
    const data = new SharedArrayBuffer(8 * PS);
    new Uint8Array(data).fill(9);
    const server = await FaultServer.start({ source: { kind: "bytes", data } });
    try {
      assert.equal(FaultServer.warmThreads, 0, "both warm threads were taken");
      const [r] = await runFaulters(server.mapping.start, server.mapping.length, PS, data, [
        { order: "seq", first: 0, count: 8 },
      ]);
      assert.equal(r.bad, 0);
    } finally {
      server.close();
    }
    assert.equal(server.stats.pages, 8);
  });
});

describe("REMOVE (balloon inflate, MADV_DONTNEED)", () => {
  it(
    "pages dropped before or after their first touch read zeros afterwards, never the snapshot's bytes",
    T,
    async () => {
      const pages = 32;
      const c = chain(pages);
      const exp = expected(pages, c.files);
      const server = await FaultServer.start({
        source: { kind: "snapshot", path: c.base, layers: c.layers },
      });
      try {
        const m = server.mapping;
        const [first] = await runFaulters(m.start, m.length, PS, exp, [{ order: "seq", first: 0, count: 4 }]);
        assert.equal(first.bad, 0);
        m.dontneed(0, 8 * PS); // pages 0-3 placed, 4-7 never placed
        const zeros = new SharedArrayBuffer(pages * PS);
        const [after] = await runFaulters(m.start, m.length, PS, zeros, [{
          order: "seq",
          first: 0,
          count: 8,
        }]);
        assert.equal(after.bad, 0, "all 8 dropped pages read zeros");
        const [rest] = await runFaulters(m.start, m.length, PS, exp, [{ order: "seq", first: 8, count: 24 }]);
        assert.equal(rest.bad, 0, "the others still come from the snapshot");
      } finally {
        server.close();
      }
      assert.equal(server.stats.removed, 8);
    },
  );
});

describe("the Firecracker handshake", () => {
  const region = (start: number, size: number, offset: number, ps = 4096) => ({
    base_host_virt_addr: start,
    size,
    offset,
    page_size: ps,
    page_size_kib: ps,
  });

  it("parseRegions: page_size, else page_size_kib, else 4096; unknown fields ignored", () => {
    assert.deepEqual(parseRegions(JSON.stringify([region(0x100000, 8192, 0)])), [
      { start: 0x100000, length: 8192, offset: 0, pageSize: 4096 },
    ]);
    assert.equal(
      parseRegions(
        JSON.stringify([{ base_host_virt_addr: 2 << 20, size: 2 << 20, offset: 0, page_size_kib: 2097152 }]),
      )[0].pageSize,
      2097152,
    );
    assert.equal(
      parseRegions(JSON.stringify([{ base_host_virt_addr: 4096, size: 4096, offset: 0, extra: "x" }]))[0]
        .pageSize,
      4096,
    );
  });

  it("parseRegions: malformed tables get an EBADMSG error naming the problem", () => {
    const cases: Array<[string, RegExp]> = [
      ["not json", /not JSON/],
      ["{}", /non-empty JSON array/],
      ["[]", /non-empty JSON array/],
      [JSON.stringify([region(0x100001, 4096, 0)]), /base_host_virt_addr .* not aligned/],
      [JSON.stringify([region(0x100000, 4000, 0)]), /size .* not aligned/],
      [JSON.stringify([region(0x100000, 4096, 0, 8192)]), /page size 8192/],
      [
        JSON.stringify([region(0x100000, 4096, 0), region(0x200000, 2 << 20, 4096, 2097152)]),
        /not aligned|different page sizes/,
      ],
      [JSON.stringify([region(0x100000, 8192, 0), region(0x101000, 4096, 8192)]), /overlap/],
      [JSON.stringify([{ base_host_virt_addr: "1", size: 4096, offset: 0 }]), /must be an integer/],
    ];
    for (const [text, re] of cases) {
      assert.throws(
        () => parseRegions(text),
        (e: unknown) => e instanceof UffdError && e.code === "EBADMSG" && re.test(e.message),
        text,
      );
    }
  });

  /** Open descriptors of this process by what they are (memfd, userfaultfd, socket...). */
  const openFds = (): Map<string, number> => {
    // readlink(2) through libc: Deno wants --allow-all for /proc/self/fd through node:fs.
    const m = new Map<string, number>();
    for (let fd = 0; fd < 1024; fd++) {
      const what = fdTarget(fd);
      if (what.startsWith("?")) continue;
      const k = what.replace(/^socket:.*/, "socket").replace(/\(deleted\)$/, "").trim();
      m.set(k, (m.get(k) ?? 0) + 1);
    }
    return m;
  };
  const count = (m: Map<string, number>, re: RegExp): number =>
    [...m].filter(([k]) => re.test(k)).reduce((n, [, v]) => n + v, 0);
  const MEMFD = /^\/memfd:/;
  const UFFD = /userfaultfd/;

  it(
    "readHandshake: JSON in two messages with the descriptor in the second; extra descriptors closed",
    T,
    async () => {
      const [a, b] = socketPair();
      const uffd = Userfaultfd.open();
      const extra = Mapping.memfd(PS);
      try {
        const text = JSON.stringify([region(0x100000, 8192, 0)]);
        sendMessage(a, new TextEncoder().encode(text.slice(0, 10)));
        setTimeout(
          () => sendMessage(a, new TextEncoder().encode(text.slice(10)), [uffd.fd, extra.fd, extra.fd]),
          50,
        );
        const before = openFds();
        const hs = await readHandshake(b, { timeoutMs: 5000 });
        assert.equal(hs.extraFds, 2);
        assert.deepEqual(hs.regions, [{ start: 0x100000, length: 8192, offset: 0, pageSize: 4096 }]);
        const now = openFds();
        assert.equal(count(now, UFFD), count(before, UFFD) + 1, "the userfaultfd is kept");
        assert.equal(count(now, MEMFD), count(before, MEMFD), "the extra descriptors were closed");
        assert.match(fdTarget(hs.fd), UFFD);
        libc.close(hs.fd);
      } finally {
        uffd.close();
        extra.close();
        libc.close(a);
        libc.close(b);
      }
    },
  );

  it(
    "readHandshake: no descriptor (bounded wait), too many, not a userfaultfd, hang-up: typed errors, nothing leaked",
    T,
    async () => {
      const text = new TextEncoder().encode(JSON.stringify([region(0x100000, 4096, 0)]));
      const uffd = Userfaultfd.open();
      const memfd = Mapping.memfd(PS);
      const cases: Array<[string, (a: number) => void, RegExp]> = [
        ["no fd", (a) => sendMessage(a, text), /no complete handshake within 300 ms/],
        [
          "4 fds",
          (a) => sendMessage(a, text, [uffd.fd, memfd.fd, memfd.fd, memfd.fd]),
          /more than 3 descriptors/,
        ],
        ["memfd", (a) => sendMessage(a, text, [memfd.fd]), /not a userfaultfd \(it is \/memfd:/],
        ["hang-up", (a) => libc.close(a), /closed the socket/],
        ["bad json + fd", (a) => sendMessage(a, new TextEncoder().encode("[{]"), [uffd.fd]), /not JSON/],
      ];
      try {
        for (const [name, act, re] of cases) {
          const [a, b] = socketPair();
          const before = openFds();
          act(a);
          await assert.rejects(
            readHandshake(b, { timeoutMs: 300 }),
            (e: unknown) => e instanceof UffdError && re.test(e.message),
            name,
          );
          if (name !== "hang-up") {
            libc.close(a);
          }
          libc.close(b);
          const now = openFds();
          assert.equal(count(now, UFFD), count(before, UFFD), `${name}: no userfaultfd left behind`);
          assert.equal(count(now, MEMFD), count(before, MEMFD), `${name}: no memfd left behind`);
        }
      } finally {
        uffd.close();
        memfd.close();
      }
    },
  );
});
