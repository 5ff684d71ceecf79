// The url source's raw path (src/server/fetcher_raw.ts): for http:// URLs the fetcher makes its
// range requests over libc sockets and reads each body with recv(2) straight into the chunk
// cache. Against a real nginx on loopback: the path is the one taken (stats.fetchPath), every page
// checked, several chunks in flight over kept-alive connections (nginx's log names each request's
// connection), a server that closes every connection after one answer, a 200 to a range request,
// a 404 and a timeout. Against a tiny raw server in a child process (tests/helpers/http_misbehave.ts,
// for what nginx cannot be made to do): a short body, a too-long body, a 503 retried, and the
// answers the raw path hands to fetch() (a chunked body, a redirect). A failed chunk is resolved by
// the policy (zeros by the test's choice, so that the test process survives the touch), never with
// the server's bytes.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import process from "node:process";
import { libc } from "../ffi/mod.ts";
import { FaultServer, openUrlSource, UffdError } from "../mod.ts";
import type { UrlPageSource } from "../src/server/url.ts";
import { runFaulters } from "./helpers/faulters.ts";
import { mostAtOnce, type Nginx, noNginx, startNginx } from "./helpers/nginx.ts";
import { tempPath, writePatternFile } from "./helpers/vmm.ts";

const MiB = 1 << 20;
const PS = 4096;
const T = { timeout: 60000 };
const skip = noNginx();
if (skip) console.log(`# url raw-path tests skipped: ${skip}`);
const MISBEHAVE = fileURLToPath(new URL("./helpers/http_misbehave.ts", import.meta.url));
let ng: Nginx | undefined;
let expected: SharedArrayBuffer;
const zeros64 = new SharedArrayBuffer(64 * MiB);
const children: ChildProcess[] = [];
const small = tempPath("misbehave.bin");
let smallExpected: SharedArrayBuffer;

before(async () => {
  if (skip) return;
  ng = await startNginx();
  writePatternFile(join(ng.root, "mem64"), 64 * MiB, 21);
  expected = new SharedArrayBuffer(64 * MiB);
  new Uint8Array(expected).set(readFileSync(join(ng.root, "mem64")));
  writePatternFile(small, 8 * MiB, 9);
  smallExpected = new SharedArrayBuffer(8 * MiB);
  new Uint8Array(smallExpected).set(readFileSync(small));
});
after(async () => {
  for (const c of children) c.kill("SIGKILL");
  rmSync(small, { force: true });
  await ng?.stop();
});

/** Serves `src` (failed chunks resolved as zeros), touches pages [first, first+count) from a Worker. */
async function touch(
  src: UrlPageSource,
  first: number,
  count: number,
  want: SharedArrayBuffer,
): Promise<{ bad: number; stats: FaultServer["stats"]; error: string | undefined }> {
  const server = await FaultServer.start({ source: src, onError: { retries: 0, then: "zero" } });
  try {
    const [r] = await runFaulters(server.mapping.start, server.mapping.length, PS, want, [
      { order: "seq", first, count },
    ]);
    return { bad: r.bad, stats: server.stats, error: server.lastError };
  } finally {
    server.close();
  }
}

/** Starts the misbehaving server in a child process; resolves with its base URL. */
async function misbehave(mode: string): Promise<string> {
  const [cmd, ...argv] = libc.scriptCommand(MISBEHAVE, [small, mode]);
  const child = spawn(cmd, argv, { stdio: ["ignore", "pipe", "inherit"] });
  children.push(child);
  const port = await new Promise<number>((resolve, reject) => {
    let out = "";
    const t = setTimeout(() => reject(new Error(`misbehave ${mode}: no port in 20 s`)), 20000);
    child.stdout!.on("data", (d) => {
      out += d;
      const m = out.match(/^(\d+)\n/);
      if (m) {
        clearTimeout(t);
        resolve(Number(m[1]));
      }
    });
    child.on("exit", (code) => reject(new Error(`misbehave ${mode} exited: ${code}`)));
  });
  return `http://127.0.0.1:${port}/f`;
}

describe("url source, raw path, against nginx", () => {
  it("http:// takes the raw path: every page checked, chunks in flight at once over kept-alive connections", {
    ...T,
    skip,
  }, async () => {
    const before = ng!.requests().length;
    // /paced/: 20 MB/s per request, so a 4 MiB range lasts ~200 ms and parallel ones overlap.
    const src = await openUrlSource(`${ng!.base}/paced/mem64`, { chunkSize: 4 * MiB, concurrency: 4 });
    const server = await FaultServer.start({ source: src, readahead: "adaptive" });
    try {
      const quarter = 4096;
      const r = await runFaulters(
        server.mapping.start,
        server.mapping.length,
        PS,
        expected,
        [0, 1, 2, 3].map((k) => ({
          order: k % 2 ? "random" as const : "seq" as const,
          first: k * quarter,
          count: quarter,
        })),
      );
      assert.deepEqual(r.map((x) => x.bad), [0, 0, 0, 0], "every page as in the file");
    } finally {
      server.close();
    }
    const s = server.stats;
    assert.equal(s.fetchPath, "raw");
    assert.equal(s.requests, 16);
    assert.equal(s.fetchedBytes, 64 * MiB);
    assert.equal(s.fetchErrors + s.fetchRetries, 0);
    const reqs = ng!.requests().slice(before).filter((q) => q.range !== "bytes=0-0");
    assert.equal(reqs.length, 16);
    const conns = new Set(reqs.map((q) => q.connection));
    const most = mostAtOnce(reqs);
    const reused = reqs.filter((q) => q.connectionRequests > 1).length;
    console.log(
      `url raw: ${most} requests at once over ${conns.size} connection(s), ${reused} on a reused one`,
    );
    assert.ok(most >= 2, `at most ${most} request(s) in flight at once: not in parallel`);
    assert.ok(conns.size <= 4, `${conns.size} connections for concurrency 4`);
    assert.ok(reused >= 12, `only ${reused} of 16 requests on a kept-alive connection`);
  });

  it("an IPv6 literal host ([::1]) takes the raw path too", { ...T, skip }, async (t) => {
    if (!ng!.base6) {
      console.log("skip url raw [::1]: no IPv6 loopback here (::1 cannot be listened on)");
      t.skip("no IPv6 loopback here (::1 cannot be listened on)");
      return;
    }
    const src = await openUrlSource(`${ng!.base6}/ok/mem64`);
    const r = await touch(src, 0, 1024, expected);
    assert.equal(r.bad, 0, "every page as in the file");
    assert.equal(r.stats.fetchPath, "raw");
    assert.equal(r.stats.fetchErrors + r.stats.fetchRetries, 0, r.error);
  });

  it("a host name (localhost) is resolved with node:dns and takes the raw path", { ...T, skip }, async () => {
    const src = await openUrlSource(`${ng!.base.replace("127.0.0.1", "localhost")}/ok/mem64`);
    const r = await touch(src, 0, 1024, expected);
    assert.equal(r.bad, 0, "every page as in the file");
    assert.equal(r.stats.fetchPath, "raw");
    assert.equal(r.stats.fetchErrors + r.stats.fetchRetries, 0, r.error);
  });

  it("with a proxy variable set the fetcher takes fetch() (which honours proxies), and serves every page", {
    ...T,
    skip,
  }, async () => {
    // nginx as the "proxy": it answers an absolute-form request line like any other.
    const old = process.env.http_proxy;
    process.env.http_proxy = ng!.base;
    let r;
    try {
      const src = await openUrlSource(`${ng!.base}/ok/mem64`);
      r = await touch(src, 0, 1024, expected);
    } finally {
      if (old === undefined) delete process.env.http_proxy;
      else process.env.http_proxy = old;
    }
    assert.equal(r.bad, 0, "every page as in the file");
    assert.equal(r.stats.fetchPath, "fetch");
    assert.equal(r.stats.fetchErrors, 0, r.error);
  });

  it("a header with CR or LF (request splitting) is refused when the server starts, with a typed error", {
    ...T,
    skip,
  }, async () => {
    const src = await openUrlSource(`${ng!.base}/ok/mem64`);
    const bad: Record<string, string>[] = [{ "X-A": "a\r\nRange: bytes=0-9" }, { "Bad Name": "x" }];
    for (const headers of bad) {
      await assert.rejects(
        async () => await FaultServer.start({ source: { ...src, headers } }),
        (e: unknown) =>
          e instanceof UffdError && e.code === "EINVAL" &&
          /url source: headers: .* without CR, LF or NUL/.test(e.message),
      );
    }
  });

  it("a server that closes every connection after one answer (keepalive_requests 1): all pages, no retries", {
    ...T,
    skip,
  }, async () => {
    const before = ng!.requests().length;
    const src = await openUrlSource(`${ng!.base}/once/mem64`, { concurrency: 4 });
    const r = await touch(src, 0, 16384, expected);
    assert.equal(r.bad, 0, "every page as in the file");
    assert.equal(r.stats.fetchPath, "raw");
    assert.equal(r.stats.requests, 32);
    assert.equal(r.stats.fetchRetries + r.stats.fetchErrors, 0, r.error);
    const reqs = ng!.requests().slice(before).filter((q) => q.range !== "bytes=0-0");
    assert.ok(
      reqs.length >= 16 && reqs.every((q) => q.connectionRequests === 1),
      "one request per connection",
    );
  });

  it("a 200 to a range request (a server that ignores Range) fails the chunk at once, never its bytes", {
    ...T,
    skip,
  }, async () => {
    const src = await openUrlSource(`${ng!.base}/ok/mem64`);
    const r = await touch({ ...src, url: `${ng!.base}/norange/mem64` }, 0, 4, zeros64);
    assert.equal(r.bad, 0, "the policy's zeros, not the object's first bytes");
    assert.equal(r.stats.fetchPath, "raw");
    assert.match(
      r.error ?? "",
      /answered 200 \(the whole object\) to a Range request: the server does not serve ranges$/,
    );
    assert.equal(r.stats.requests, 1, "not retried");
    assert.equal(r.stats.fetchErrors, 1);
  });

  it(
    "a 404 fails the chunk without a retry, the message names the status and the range",
    { ...T, skip },
    async () => {
      const src = await openUrlSource(`${ng!.base}/ok/mem64`);
      const r = await touch({ ...src, url: `${ng!.base}/ok/missing` }, 512, 4, zeros64);
      assert.equal(r.bad, 0);
      assert.match(
        r.error ?? "",
        /^chunk 1 \(bytes 2097152-4194303\) of .*: .* answered 404 Not Found to bytes 2097152-4194303$/,
      );
      assert.equal(r.stats.requests, 1);
    },
  );

  it("a request slower than timeoutMs is retried, then fails with 'timed out'", { ...T, skip }, async () => {
    const src = await openUrlSource(`${ng!.base}/slow/mem64`, { timeoutMs: 300, retries: 1 });
    const t0 = performance.now();
    const r = await touch(src, 0, 2, zeros64);
    assert.equal(r.bad, 0);
    assert.equal(r.stats.fetchPath, "raw");
    assert.match(r.error ?? "", /timed out after 300 ms \(after 2 attempts\)$/);
    assert.equal(r.stats.requests, 2);
    assert.equal(r.stats.fetchRetries, 1);
    assert.ok(performance.now() - t0 >= 600, "each attempt waited its timeout");
  });

  it("a chunk that does not match its SHA-256 is not served, and not retried", { ...T, skip }, async () => {
    const { createHash } = await import("node:crypto");
    const file = new Uint8Array(expected);
    const sha256 = Array.from(
      { length: 32 },
      (_, c) => createHash("sha256").update(file.subarray(c * 2 * MiB, (c + 1) * 2 * MiB)).digest("hex"),
    );
    sha256[1] = "0".repeat(64);
    const src = await openUrlSource(`${ng!.base}/ok/mem64`, { sha256 });
    const good = await touch(src, 0, 512, expected);
    assert.equal(good.bad, 0, "chunk 0 matches");
    assert.equal(good.stats.fetchPath, "raw");
    const bad = await touch(src, 512, 4, zeros64);
    assert.equal(bad.bad, 0, "chunk 1 resolved by the policy");
    assert.match(bad.error ?? "", /bytes 2097152-4194303 do not match their SHA-256 in the manifest$/);
    assert.equal(bad.stats.requests, 1);
  });
});

describe("url source, raw path, against a server that misbehaves", () => {
  const zeros8 = new SharedArrayBuffer(8 * MiB);

  it("a body cut short (the server closes mid-body) is retried, then fails as a short body", {
    ...T,
    skip,
  }, async () => {
    const src = await openUrlSource(await misbehave("short"), { retries: 1 });
    assert.equal(src.etag, '"misbehave-1"');
    const r = await touch(src, 0, 4, zeros8);
    assert.equal(r.bad, 0);
    assert.equal(r.stats.fetchPath, "raw");
    assert.match(r.error ?? "", /sent a short body: 1048576 of 2097152 bytes at 0 \(after 2 attempts\)$/);
    assert.equal(r.stats.requests, 2);
  });

  it("a body longer than the range fails at once (not retried)", { ...T, skip }, async () => {
    const src = await openUrlSource(await misbehave("long"));
    const r = await touch(src, 0, 4, zeros8);
    assert.equal(r.bad, 0);
    assert.match(r.error ?? "", /sent more than the 2097152 bytes asked for at 0$/);
    assert.equal(r.stats.requests, 1);
  });

  it("a 503 is retried with backoff, and the retry's bytes are served", { ...T, skip }, async () => {
    const src = await openUrlSource(await misbehave("flaky"), { retries: 2 });
    const r = await touch(src, 0, 2048, smallExpected);
    assert.equal(r.bad, 0, "every page as in the file");
    assert.equal(r.stats.fetchPath, "raw");
    assert.equal(r.stats.requests, 8, "4 chunks, each answered 503 once");
    assert.equal(r.stats.fetchRetries, 4);
    assert.equal(r.stats.fetchErrors, 0, r.error);
  });

  for (const mode of ["chunked", "redirect"]) {
    it(`an answer the raw path does not handle (${mode}) hands the chunks to fetch(): every page served`, {
      ...T,
      skip,
    }, async () => {
      const src = await openUrlSource(await misbehave(mode));
      const r = await touch(src, 0, 2048, smallExpected);
      assert.equal(r.bad, 0, "every page as in the file");
      assert.equal(r.stats.fetchPath, "fetch", "switched to fetch()");
      assert.equal(r.stats.fetchErrors, 0, r.error);
      assert.equal(r.stats.fetchedBytes, 8 * MiB);
    });
  }
});
