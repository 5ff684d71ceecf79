// examples/wasm_snapshot.ts runs as a child process under the current runtime, with exactly the
// permissions its header documents (Deno: --allow-ffi --allow-read --allow-write), and must end
// with the restored instance computing the same as the original.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import process from "node:process";

const script = new URL("../examples/wasm_snapshot.ts", import.meta.url).pathname;

function run(): { status: number | null; signal: string | null; stdout: string; stderr: string } {
  const args = "Bun" in globalThis
    ? ["run", script]
    : "Deno" in globalThis
    ? ["run", "--allow-ffi", "--allow-read", "--allow-write", script]
    : [script]; // Node: the compiled example
  const r = spawnSync(process.execPath, args, { encoding: "utf8", timeout: 90000, killSignal: "SIGKILL" });
  return { status: r.status, signal: r.signal, stdout: r.stdout ?? "", stderr: r.stderr ?? "" };
}

/** The numbers a pattern captures, or a failure that shows the whole output. */
function grab(out: string, re: RegExp): number[] {
  const m = out.match(re);
  assert.ok(m, `no match for ${re} in:\n${out}`);
  return m.slice(1).map(Number);
}

describe("examples/wasm_snapshot.ts", () => {
  it(
    "snapshots a wasm instance's 64 MiB memory, diffs it, restores it lazily into a new instance that computes the same",
    { timeout: 120000 },
    () => {
      const r = run();
      const out = r.stdout;
      assert.equal(r.status, 0, `exit ${r.status ?? r.signal}\n${out}\n${r.stderr}`);
      assert.match(
        out,
        /^wasm snapshot on (Deno|Bun|Node\.js) [\d.]+: 64 MiB WebAssembly\.Memory \(16384 pages\), in /,
      );
      assert.match(out, /module: \d+ bytes, hand-assembled; exports step\(n\), checksum\(\)/);
      const dir = out.match(/, in (\/\S+)\n/)?.[1];
      assert.ok(dir, "the example names its directory");
      assert.equal(existsSync(dir), false, "the temporary directory is removed");

      // The base holds the written pages, the zero ones stay holes; every page is one or the other.
      const [captured, zero] = grab(out, /snapshot: base\.mem, (\d+) pages captured \((\d+) zero pages/);
      assert.equal(captured + zero, 16384);
      assert.ok(captured > 12000 && zero > 1000, `captured ${captured}, zero ${zero}`);

      // The diff holds exactly the pages the steps changed (found by comparing with a copy).
      const [diffPages, changed] = grab(
        out,
        /diff: diff-1\.mem, (\d+) pages \(pages changed, by comparison with a copy: (\d+)\)/,
      );
      assert.equal(diffPages, changed, "diff pages = pages changed");
      assert.ok(diffPages > 1000, `diff pages ${diffPages}`);

      // inspectSnapshot: the layers, their data pages and which pages each supplies.
      const [baseData, baseHoles, baseTop] = grab(
        out,
        /\n {2}base\.mem +full +data +(\d+) pages +holes +(\d+) +top +(\d+)/,
      );
      const [diffData, , diffTop] = grab(
        out,
        /\n {2}diff-1\.mem +diff +data +(\d+) pages +holes +(\d+) +top +(\d+)/,
      );
      assert.equal(baseData, captured);
      assert.equal(baseHoles, zero);
      assert.equal(diffData, diffPages);
      assert.equal(diffTop, diffPages, "the diff is topmost wherever it has data");
      const [zeroPages] = grab(out, /layers \(inspectSnapshot\): (\d+) zero pages/);
      assert.equal(baseTop + diffTop + zeroPages, 16384);

      // The restored instance: same checksum, same results after more steps, same bytes.
      const [got, want] = grab(out, /restored checksum 0x([0-9a-f]+) \(original 0x([0-9a-f]+)\): equal/)
        .map(String);
      assert.equal(got, want);
      assert.match(out, /after \d+ more steps on both: (0x[0-9a-f]{8}) and \1: equal/);
      assert.match(out, /pages that differ between the two memories: 0\n/);

      // Lazily: every page placed by far fewer faults (adaptive readahead), no errors.
      const [faults, placed, errors] = grab(
        out,
        /restore: +(\d+) faults, (\d+) pages placed .*?, (\d+) errors/,
      );
      assert.equal(placed, 16384);
      assert.equal(errors, 0);
      assert.ok(faults > 0 && faults < 4096, `faults ${faults}`);
      assert.match(out, /from restore\(\) to the restored checksum/);
      assert.match(out, /result: +the restored instance computes the same as the original\n/);
    },
  );
});
