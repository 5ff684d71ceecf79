// The url page source against a real nginx on loopback: every page of a 64 MiB file checked,
// sequential and random; faults on different chunks fetched in parallel (requests overlap in
// nginx's log); a cache directory that makes a second run fetch nothing; the Firecracker handler
// restoring the VMM fixture from a URL; and servers that misbehave (no ranges, dropped
// connections, too slow, a file changed mid-run): a typed error or the poison policy, never wrong
// bytes, nothing hangs.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { libc } from "../ffi/mod.ts";
import { FaultServer, openUrlSource, UffdError } from "../mod.ts";
import { runFaulters } from "./helpers/faulters.ts";
import { mostAtOnce, type Nginx, noNginx, startNginx } from "./helpers/nginx.ts";
import {
  cleanupVmms,
  compiler,
  expectedHashes,
  kvmUsable,
  readResults,
  startVmm,
  tempPath,
  writePatternFile,
} from "./helpers/vmm.ts";

const MiB = 1 << 20;
const PS = 4096;
const T = { timeout: 60000 };
const skip = noNginx();
if (skip) console.log(`# url tests skipped: ${skip}`);
const CLI = fileURLToPath(new URL("../cli.ts", import.meta.url));
let ng: Nginx | undefined;
let expected: SharedArrayBuffer;
const cacheRoot = mkdtempSync(join(tmpdir(), "uffd-urlcache-"));

before(async () => {
  if (skip) return;
  ng = await startNginx();
  writePatternFile(join(ng.root, "mem64"), 64 * MiB, 21);
  expected = new SharedArrayBuffer(64 * MiB);
  new Uint8Array(expected).set(readFileSync(join(ng.root, "mem64")));
});
after(async () => {
  await ng?.stop();
  await cleanupVmms();
  rmSync(cacheRoot, { recursive: true, force: true });
});

describe("url source against nginx", () => {
  it(
    "serves every page of a 64 MiB file, sequential and random, from range requests",
    { ...T, skip },
    async () => {
      const src = await openUrlSource(`${ng!.base}/ok/mem64`);
      assert.equal(src.length, 64 * MiB);
      assert.ok(src.etag, "nginx sends an ETag");
      const server = await FaultServer.start({ source: src, readahead: "adaptive" });
      try {
        const r = await runFaulters(server.mapping.start, server.mapping.length, PS, expected, [
          { order: "seq", first: 0, count: 8192 },
          { order: "random", first: 8192, count: 8192 },
        ]);
        assert.deepEqual(r.map((x) => x.bad), [0, 0], "every page as in the file");
      } finally {
        server.close();
      }
      const s = server.stats;
      assert.equal(s.pages, 16384);
      assert.equal(s.fetchedBytes, 64 * MiB, "each 2 MiB chunk fetched once");
      assert.equal(s.requests, 32);
      assert.equal(s.fetchErrors, 0);
      assert.ok(s.fetchMeanMs > 0 && s.fetchMaxMs >= s.fetchMeanMs);
    },
  );

  it("faults from 4 Workers on different chunks are fetched in parallel (the requests overlap)", {
    ...T,
    skip,
  }, async () => {
    const before = ng!.requests().length;
    // /paced/: 20 MB/s per request, so a 4 MiB range lasts ~200 ms and parallel ones overlap.
    const src = await openUrlSource(`${ng!.base}/paced/mem64`, { chunkSize: 4 * MiB, concurrency: 4 });
    const server = await FaultServer.start({ source: src });
    try {
      const quarter = 4096;
      const r = await runFaulters(
        server.mapping.start,
        server.mapping.length,
        PS,
        expected,
        [0, 1, 2, 3].map((
          k,
        ) => ({ order: "random" as const, seed: k + 3, first: k * quarter, count: quarter })),
      );
      assert.deepEqual(r.map((x) => x.bad), [0, 0, 0, 0]);
    } finally {
      server.close();
    }
    const reqs = ng!.requests().slice(before).filter((q) => q.range !== "bytes=0-0");
    assert.equal(reqs.length, 16);
    const most = mostAtOnce(reqs);
    assert.ok(most >= 2, `at most ${most} request(s) in flight at once: not in parallel`);
    console.log(`url: up to ${most} range requests in flight at once`);
  });

  it("a cache directory makes a second run fetch nothing", { ...T, skip }, async () => {
    const cacheDir = join(cacheRoot, "c1");
    for (const run of [1, 2]) {
      const src = await openUrlSource(`${ng!.base}/ok/mem64`, { cacheDir });
      const server = await FaultServer.start({ source: src, readahead: "adaptive" });
      try {
        const [r] = await runFaulters(server.mapping.start, server.mapping.length, PS, expected, [
          { order: "random", first: 0, count: 16384 },
        ]);
        assert.equal(r.bad, 0, `run ${run}: every page as in the file`);
      } finally {
        server.close();
      }
      const s = server.stats;
      if (run === 1) assert.equal(s.requests, 32);
      else {
        assert.equal(s.requests, 0, "the second run fetched nothing");
        assert.equal(s.cacheHits, 32);
      }
    }
  });

  it("record then prefetch: the working set's chunks are fetched in parallel and nothing faults", {
    ...T,
    skip,
  }, async () => {
    const pages = [9000, 10, 4000, 16000, 11, 2500, 7777, 12000];
    const touch = async (server: FaultServer): Promise<void> => {
      for (const p of pages) {
        const [r] = await runFaulters(server.mapping.start, server.mapping.length, PS, expected, [
          { order: "seq", first: p, count: 1 },
        ]);
        assert.equal(r.bad, 0);
      }
    };
    const first = await FaultServer.start({
      source: await openUrlSource(`${ng!.base}/ok/mem64`),
      record: true,
    });
    let ws;
    try {
      await touch(first);
      ws = first.workingSet();
    } finally {
      first.close();
    }
    const before = ng!.requests().length;
    const second = await FaultServer.start({
      source: await openUrlSource(`${ng!.base}/paced/mem64`),
      prefetch: ws,
    });
    try {
      const until = Date.now() + 20000;
      while (second.stats.prefetchMs === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
      assert.ok(second.stats.prefetchMs > 0, "the prefetch finished");
      await touch(second);
      assert.equal(second.stats.faults, 0, "every page was installed before it was touched");
      assert.equal(second.stats.prefetched, pages.length);
    } finally {
      second.close();
    }
    const reqs = ng!.requests().slice(before).filter((q) => q.range !== "bytes=0-0");
    const most = mostAtOnce(reqs);
    assert.ok(most >= 2, `the working set's chunks were fetched one at a time (${most})`);
  });

  it(
    "a chunk that does not match its SHA-256 is never served: the policy resolves its pages, the error names it",
    {
      ...T,
      skip,
    },
    async () => {
      const { createHash } = await import("node:crypto");
      const file = new Uint8Array(expected);
      const cs = 2 * MiB;
      const sha256 = Array.from(
        { length: 32 },
        (_, c) => createHash("sha256").update(file.subarray(c * cs, (c + 1) * cs)).digest("hex"),
      );
      sha256[3] = "0".repeat(64); // the manifest disagrees with the server about chunk 3
      const src = await openUrlSource(`${ng!.base}/ok/mem64`, { sha256 });
      // Zeros by the caller's choice, so that the test process survives the touch (default: poison).
      const server = await FaultServer.start({ source: src, onError: { retries: 0, then: "zero" } });
      try {
        const good = await runFaulters(server.mapping.start, server.mapping.length, PS, expected, [
          { order: "seq", first: 0, count: 1536 }, // chunks 0-2
        ]);
        assert.equal(good[0].bad, 0);
        const zeros = new SharedArrayBuffer(64 * MiB);
        const bad = await runFaulters(server.mapping.start, server.mapping.length, PS, zeros, [
          { order: "seq", first: 1536, count: 4 }, // chunk 3
        ]);
        assert.equal(
          bad[0].bad,
          0,
          "chunk 3's pages were resolved by the policy, not with the server's bytes",
        );
        assert.match(server.lastError ?? "", /do not match their SHA-256/);
        assert.equal(server.stats.fetchErrors, 1);
      } finally {
        server.close();
      }
    },
  );

  it("a server that ignores Range (200) is refused when the source opens, with a message that says so", {
    ...T,
    skip,
  }, async () => {
    await assert.rejects(
      openUrlSource(`${ng!.base}/norange/mem64`),
      (e: unknown) => e instanceof UffdError && /answered 200 .* does not serve ranges/.test(e.message),
    );
    await assert.rejects(
      openUrlSource(`${ng!.base}/ok/missing`),
      (e: unknown) => e instanceof UffdError && e.code === "ENOENT" && /404/.test(e.message),
    );
  });
});

interface Run {
  code: number | null;
  out: string;
  err: string;
}

/** cli.ts firecracker --mem-url ... against fc_vmm; the VMM's exit and results too. */
async function fcFromUrl(
  url: string,
  handlerArgs: string[],
  vmmArgs: string[],
  beforeTouch?: () => void,
): Promise<
  { h: Run; v: { code: number | null; signal: string | null }; out: string; summary: Record<string, unknown> }
> {
  const sock = tempPath("fc.sock");
  const go = tempPath("go");
  const out = tempPath("out.bin");
  const [cmd, ...argv] = libc.scriptCommand(CLI, [
    "firecracker",
    "--json",
    "--socket",
    sock,
    "--mem-url",
    url,
    ...handlerArgs,
  ]);
  const child = spawn(cmd, argv, { stdio: ["ignore", "pipe", "pipe"] });
  const h: Run = { code: null, out: "", err: "" };
  child.stdout!.on("data", (d) => (h.out += d));
  child.stderr!.on("data", (d) => (h.err += d));
  const hExit = new Promise<void>((r) => child.on("close", (code) => ((h.code = code), r())));
  const kill = setTimeout(() => child.kill("SIGKILL"), 50000);
  try {
    const until = Date.now() + 20000;
    while (!/listening on/.test(h.err) && Date.now() < until && h.code === null) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.match(h.err, /listening on/);
    const vmm = startVmm([
      "--socket",
      sock,
      "--out",
      out,
      "--wait-file",
      go,
      "--timeout-ms",
      "30000",
      ...vmmArgs,
    ]);
    await vmm.waitFor(/"event":"sent"/, 10000);
    while (!/serving VMM/.test(h.err) && Date.now() < until && h.code === null) {
      await new Promise((r) => setTimeout(r, 5));
    }
    beforeTouch?.();
    writeFileSync(go, "");
    const v = await vmm.exited;
    await hExit;
    return { h, v, out, summary: JSON.parse(h.out.trim().split("\n").at(-1) || "{}") };
  } finally {
    clearTimeout(kill);
    child.kill("SIGKILL");
  }
}

describe("cli.ts firecracker --mem-url", () => {
  const noCc = compiler ? false : "no C compiler for the VMM fixture";
  const mode = kvmUsable() === undefined ? "kvm" : "threads";

  it(
    `restores the VMM fixture (${mode}) from a URL, every page checked`,
    { ...T, skip: skip || noCc },
    async () => {
      const { h, v, out, summary } = await fcFromUrl(`${ng!.base}/ok/mem64`, [], [
        "--mode",
        mode,
        "--regions",
        `${32 * MiB},${32 * MiB}`,
        "--touch",
        "all",
      ]);
      assert.deepEqual(v, { code: 0, signal: null });
      assert.equal(h.code, 0, h.err);
      const recs = readResults(out);
      const want = expectedHashes([join(ng!.root, "mem64")], recs.map((r) => r.offset), PS);
      assert.equal(recs.filter((r, i) => r.hash !== want[i]).length, 0, "every page as in the file");
      assert.equal(summary.requests, 32);
      assert.equal(summary.fetchedBytes, 64 * MiB);
    },
  );

  const cases: Array<[string, string, string[], RegExp, (() => void) | undefined]> = [
    ["drops connections", "close", ["--fetch-retries", "1"], /after 2 attempts/, undefined],
    [
      "is too slow (timeout, retry)",
      "slow",
      ["--fetch-timeout-ms", "300", "--fetch-retries", "1"],
      /timed out after 300 ms \(after 2 attempts\)/,
      undefined,
    ],
    [
      "changes the file mid-run",
      "ok",
      [],
      /changed: (ETag|its length)/,
      () => writePatternFile(join(ng!.root, "changing"), 8 * MiB + PS, 5),
    ],
  ];
  for (const [name, loc, args, re, change] of cases) {
    it(`a server that ${name}: the restore fails loudly (poison, error, exit 1), never wrong bytes`, {
      ...T,
      skip: skip || noCc,
    }, async () => {
      const file = loc === "ok" ? "changing" : "mem64";
      if (loc === "ok") writePatternFile(join(ng!.root, file), 8 * MiB, 4);
      const { h, v, summary } = await fcFromUrl(`${ng!.base}/${loc}/${file}`, args, [
        "--mode",
        "threads",
        "--regions",
        `${8 * MiB}`,
        "--touch",
        "all",
      ], change);
      assert.ok(v.signal === "SIGBUS" || v.signal === "SIGKILL", `the VMM ended by ${JSON.stringify(v)}`);
      assert.equal(h.code, 1, h.err);
      assert.equal(summary.end, "error");
      assert.match(String(summary.error), re);
    });
  }
});
