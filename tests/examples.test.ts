// The examples run as child processes under the current runtime and finish with their summary.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { runChild } from "./helpers/child.ts";

const example = (name: string): string => new URL(`../examples/${name}`, import.meta.url).pathname;

describe("examples", () => {
  it(
    "lazy_file.ts serves a file on first touch and prints progress and a summary",
    { timeout: 60000 },
    () => {
      const dir = mkdtempSync("/tmp/uffd-example-");
      try {
        const pages = 3000;
        const bytes = new Uint8Array(pages * 4096);
        for (let p = 0; p < pages; p++) bytes[p * 4096] = p & 255;
        writeFileSync(`${dir}/data.bin`, bytes);
        let expected = 0;
        for (let p = 0; p < pages; p++) expected = (expected + (p & 255)) >>> 0;
        const r = runChild(example("lazy_file.ts"), [`${dir}/data.bin`, "--readahead", "adaptive"], 45000);
        assert.equal(r.status, 0, r.stderr);
        assert.match(r.stdout, /serving .*data\.bin lazily \(readahead adaptive\)/);
        assert.match(r.stdout, /\n {2}50% {2}\d+ faults, [\d.]+ MiB placed/);
        assert.match(r.stdout, new RegExp(`pages faulted: \\d+ \\(${pages} pages placed`));
        assert.match(r.stdout, /bytes placed: {2}11\.7 MiB, 0 errors/);
        assert.match(r.stdout, /first byte: {4}\d+ us/);
        assert.match(r.stdout, /throughput: {4}\d+ MiB\/s/);
        assert.match(
          r.stdout,
          new RegExp(`checksum: {6}${expected}\\n`),
          "one byte per page summed in order",
        );
      } finally {
        rmSync(dir, { recursive: true });
      }
    },
  );

  it("demo.ts (npm run demo) verifies 64 MiB served lazily", { timeout: 60000 }, () => {
    const r = runChild(example("demo.ts"), [], 45000);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /pages faulted: \d+ \(16384 pages placed/);
    assert.match(r.stdout, /verified: {6}every byte matches the source/);
    assert.match(r.stdout, /done: \d+ faults, 0 errors/);
  });
});
