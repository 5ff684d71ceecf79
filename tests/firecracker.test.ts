// `cli.ts firecracker` against the VMM fixture that plays Firecracker (tests/fixtures/fc_vmm.c):
// real KVM vCPUs (or host threads where KVM is missing) fault guest memory that the handler serves
// from a memory file and diff layers; content is checked page by page against the files. Also
// the balloon (REMOVE), record then prefetch, a VMM that exits mid-restore, hugepages, a fatal
// handler error (kill on error), and malformed handshakes (clear error, non-zero exit, no hang).
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync, truncateSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { libc } from "../ffi/mod.ts";
import {
  cleanupVmms,
  compiler,
  expectedHashes,
  hugePagesFree,
  kvmUsable,
  NO_CC,
  randomTouch,
  readResults,
  type ResultRecord,
  startVmm,
  tempPath,
  writePatternFile,
  ZERO_HASH,
} from "./helpers/vmm.ts";

const MiB = 1 << 20;
const PS = 4096;
const CLI = fileURLToPath(new URL("../cli.ts", import.meta.url));
const noCc = compiler ? false : NO_CC;
const noKvm = noCc || (kvmUsable() ?? false);
if (noKvm) console.log(`# KVM variants skipped: ${noKvm}`);
const T = { timeout: 60000 };

interface Handler {
  exited: Promise<{ code: number | null; signal: string | null }>;
  stdout(): string;
  stderr(): string;
  summary(): Record<string, unknown>;
  kill(): void;
}
const handlers: Handler[] = [];
after(async () => {
  for (const h of handlers) h.kill();
  await cleanupVmms();
});

/** Starts `cli.ts firecracker` under this runtime and waits for its "listening" line. */
async function startHandler(args: string[]): Promise<Handler> {
  const [cmd, ...argv] = libc.scriptCommand(CLI, ["firecracker", "--json", ...args]);
  const child = spawn(cmd, argv, { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (err += d));
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) =>
    child.on("close", (code, signal) => resolve({ code, signal }))
  );
  const h: Handler = {
    exited,
    stdout: () => out,
    stderr: () => err,
    summary: () => JSON.parse(out.trim().split("\n").at(-1) ?? "null"),
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    },
  };
  handlers.push(h);
  const until = Date.now() + 20000;
  while (!/listening on/.test(err)) {
    if (child.exitCode !== null || Date.now() > until) {
      h.kill();
      throw new Error(`the handler did not listen: ${err}${out}`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  return h;
}

/** Fails if `p` does not settle within `ms` (a hang fails this test, not the suite). */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((
        _,
        rej,
      ) => (timer = setTimeout(() => rej(new Error(`${what}: no end within ${ms} ms`)), ms))),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

function assertMatches(recs: ResultRecord[], files: string[], pageSize: number, phase = 1): void {
  const r = recs.filter((x) => x.phase === phase);
  const want = expectedHashes(files, r.map((x) => x.offset), pageSize);
  const bad = r.filter((x, i) => x.hash !== want[i]);
  assert.equal(bad.length, 0, `${bad.length} of ${r.length} pages differ, first at offset ${bad[0]?.offset}`);
}

/** A memory file and two diff layers: layer 1 over [1, 3) MiB with a hole at [2, 2.25) MiB, layer 2 over [2.5, 3.5) MiB. */
function layered(length: number): { base: string; layers: string[] } {
  const base = tempPath("base.mem");
  writePatternFile(base, length, 1);
  const l1 = tempPath("l1.mem");
  writePatternFile(l1, length, 2, {
    holes: [[0, 1 * MiB], [2 * MiB, MiB / 4], [3 * MiB, length - 3 * MiB]],
    zeros: [[1 * MiB, 16 * PS]], // written zeros: they win over the base
  });
  const l2 = tempPath("l2.mem");
  writePatternFile(l2, length, 3, { holes: [[0, 2.5 * MiB], [3.5 * MiB, length - 3.5 * MiB]] });
  return { base, layers: [l1, l2] };
}

/** One restore: the handler, then the VMM; returns both summaries and the VMM's results. */
async function restoreOnce(
  handlerArgs: string[],
  vmmArgs: string[],
  opts: { holdUntil?: RegExp } = {},
): Promise<
  { h: Record<string, unknown>; v: Record<string, unknown>; recs: ResultRecord[]; handler: Handler }
> {
  const sock = tempPath("fc.sock");
  const out = tempPath("out.bin");
  const handler = await startHandler(["--socket", sock, ...handlerArgs]);
  const go = tempPath("go");
  const hold = opts.holdUntil ? ["--wait-file", go, "--connect-timeout-ms", "30000"] : [];
  const vmm = startVmm(["--socket", sock, "--out", out, "--timeout-ms", "40000", ...hold, ...vmmArgs]);
  if (opts.holdUntil) {
    // The guest starts only once the handler says so (its vCPUs are created, not yet run).
    const until = Date.now() + 30000;
    while (!opts.holdUntil.test(handler.stderr()) && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 5));
    }
    assert.match(handler.stderr(), opts.holdUntil);
    writeFileSync(go, "");
  }
  const ve = await within(vmm.exited, 45000, "the VMM");
  assert.deepEqual(ve, { code: 0, signal: null }, vmm.stderr());
  const he = await within(handler.exited, 15000, "the handler after the VMM hung up");
  assert.deepEqual(he, { code: 0, signal: null }, handler.stderr());
  return { h: handler.summary(), v: vmm.summary()!, recs: readResults(out), handler };
}

for (const mode of ["kvm", "threads"] as const) {
  const skip = mode === "kvm" ? noKvm : noCc;
  describe(`cli.ts firecracker (${mode === "kvm" ? "KVM vCPUs" : "host threads"})`, () => {
    it(
      "serves 3 regions to 2 vCPUs from a memory file and 2 diff layers: every page as the topmost layer says",
      {
        ...T,
        skip,
      },
      async () => {
        const length = 16 * MiB;
        const { base, layers } = layered(length);
        const { h, v, recs } = await restoreOnce(
          ["--mem-file", base, "--layer", layers[0], "--layer", layers[1]],
          ["--mode", mode, "--regions", `${8 * MiB},${4 * MiB},${4 * MiB}`, "--vcpus", "2", "--touch", "all"],
        );
        assert.equal(recs.length, length / PS);
        assertMatches(recs, [base, ...layers], PS);
        assert.equal(v.pages, length / PS);
        assert.equal(h.end, "hangup");
        assert.equal(h.regions, 3);
        assert.equal(h.pages, length / PS, "each page placed once");
        assert.ok(
          (h.faults as number) < length / PS,
          `readahead: ${h.faults} faults for ${length / PS} pages`,
        );
        assert.equal(h.errors, 0);
      },
    );

    it("balloon inflate (MADV_DONTNEED -> REMOVE): those pages read zeros afterwards, never the snapshot's", {
      ...T,
      skip,
    }, async () => {
      const length = 8 * MiB;
      const base = tempPath("base.mem");
      writePatternFile(base, length, 4);
      const { h, recs } = await restoreOnce(["--mem-file", base], [
        "--mode",
        mode,
        "--regions",
        `${4 * MiB},${4 * MiB}`,
        "--touch",
        "random:50:3",
        "--balloon",
        `${3 * MiB}:${2 * MiB}`, // across the region boundary, half of it never touched
      ]);
      assertMatches(recs, [base], PS, 1);
      const after = recs.filter((r) => r.phase === 2);
      assert.equal(after.length, (2 * MiB) / PS);
      assert.ok(after.every((r) => r.hash === ZERO_HASH), "every ballooned page reads zeros");
      assert.equal(h.removed, (2 * MiB) / PS);
      assert.ok((h.zeroPages as number) >= (2 * MiB) / PS);
    });
  });
}

describe("record and prefetch (REAP)", () => {
  it(
    "a recorded working set, prefetched before the guest runs (as REAP resumes it), leaves at most 10% of the faults; raced against the guest (as Firecracker resumes it at once), every page is still prefetched or faulted once",
    {
      ...T,
      skip: noKvm,
    },
    async () => {
      const length = 32 * MiB;
      const { base, layers } = layered(length);
      const ws = tempPath("ws.json");
      const vmm = ["--mode", "kvm", "--regions", `${16 * MiB},${16 * MiB}`, "--touch", "random:10:11"];
      const src = ["--mem-file", base, "--layer", layers[0], "--layer", layers[1]];
      const first = await restoreOnce([...src, "--record", ws, "--readahead", "1"], vmm);
      assertMatches(first.recs, [base, ...layers], PS);
      const set = JSON.parse(readFileSync(ws, "utf8"));
      const touched = randomTouch(length / PS, 10, 11);
      assert.equal(set.pages, touched.length, "the working set is the pages touched");
      assert.deepEqual(
        set.runs.flatMap(([a, n]: [number, number]) => Array.from({ length: n }, (_, i) => a + i)),
        touched,
        "in first-touch order",
      );
      const f1 = first.h.faults as number;
      // REAP: the guest runs once the working set is in.
      const held = await restoreOnce([...src, "--prefetch", ws], vmm, {
        holdUntil: /prefetch installed: \d+ page/,
      });
      assertMatches(held.recs, [base, ...layers], PS);
      assert.equal(held.h.prefetched, touched.length, "the whole working set was prefetched");
      assert.ok((held.h.faults as number) <= 0.1 * f1, `faults ${f1} -> ${held.h.faults}`);
      // Firecracker: the guest runs at once. Demand faults go first: a page the guest reaches
      // before the prefetcher is faulted instead, and no page is placed twice.
      const raced = await restoreOnce([...src, "--prefetch", ws], vmm);
      assertMatches(raced.recs, [base, ...layers], PS);
      const f2 = raced.h.faults as number;
      const pf = raced.h.prefetched as number;
      assert.ok(
        pf <= touched.length && pf + f2 >= touched.length,
        `prefetched ${pf} of ${touched.length}, ${f2} faults`,
      );
      console.log(
        `record/prefetch: faults ${f1} -> held ${held.h.faults}, raced ${f2}; touch ${first.v.touchMs} -> ${held.v.touchMs}, ${raced.v.touchMs} ms`,
      );
    },
  );
});

describe("lifecycle and failures", () => {
  it("a VMM that exits mid-restore: the handler sees the hang-up and exits 0 with its summary", {
    ...T,
    skip: noCc,
  }, async () => {
    const base = tempPath("base.mem");
    writePatternFile(base, 64 * MiB, 5);
    const sock = tempPath("fc.sock");
    const handler = await startHandler(["--socket", sock, "--mem-file", base, "--readahead", "1"]);
    const vmm = startVmm([
      "--socket",
      sock,
      "--mode",
      noKvm ? "threads" : "kvm",
      "--regions",
      `${64 * MiB}`,
      "--exit-after-ms",
      "150",
    ]);
    await within(vmm.exited, 20000, "the VMM");
    assert.deepEqual(
      await within(handler.exited, 15000, "the handler"),
      { code: 0, signal: null },
      handler.stderr(),
    );
    const s = handler.summary();
    assert.equal(s.end, "hangup");
    assert.ok((s.pages as number) < (64 * MiB) / PS, `${s.pages} pages served before the exit, not all`);
  });

  it("hugepages: 2 MiB regions served a whole huge page per fault", {
    ...T,
    skip: noKvm || (hugePagesFree() < 4 ? `only ${hugePagesFree()} free 2 MiB huge pages (4 needed)` : false),
  }, async () => {
    const length = 8 * MiB;
    const { base, layers } = layered(length);
    const { h, recs } = await restoreOnce(["--mem-file", base, "--layer", layers[0], "--layer", layers[1]], [
      "--page-size",
      String(2 * MiB),
      "--regions",
      `${4 * MiB},${4 * MiB}`,
      "--touch",
      "all",
    ]);
    assertMatches(recs, [base, ...layers], 2 * MiB);
    assert.equal(h.pageSize, 2 * MiB);
    assert.equal(h.pages, 4);
  });

  it(
    "--kill-on-error: a page that cannot be served (the memory file shrank) ends the VMM instead of freezing it",
    {
      ...T,
      skip: noCc,
    },
    async () => {
      const base = tempPath("base.mem");
      const sock2 = tempPath("fc.sock");
      const go = tempPath("go");
      writePatternFile(base, 8 * MiB, 6);
      const h2 = await startHandler([
        "--socket",
        sock2,
        "--mem-file",
        base,
        "--readahead",
        "1",
        "--kill-on-error",
      ]);
      const vm = startVmm([
        "--socket",
        sock2,
        "--mode",
        "threads",
        "--regions",
        `${8 * MiB}`,
        "--timeout-ms",
        "30000",
        "--wait-file",
        go,
      ]);
      await vm.waitFor(/"event":"sent"/, 10000);
      const until = Date.now() + 10000;
      while (!/serving VMM/.test(h2.stderr()) && Date.now() < until) {
        await new Promise((r) => setTimeout(r, 5));
      }
      assert.match(h2.stderr(), /serving VMM/, "the handler serves (the regions fit the file)");
      truncateSync(base, 1 * MiB); // the memory file loses most of its pages under the handler
      writeFileSync(go, ""); // then the VMM starts touching
      const ve = await within(vm.exited, 30000, "the VMM");
      // The page is poisoned (the faulting thread gets SIGBUS) and the VMM is killed: whichever
      // comes first, it never sits frozen on a page nobody will serve.
      assert.ok(ve.signal === "SIGKILL" || ve.signal === "SIGBUS", `the VMM ended by ${JSON.stringify(ve)}`);
      const e2 = await within(h2.exited, 15000, "the handler");
      assert.equal(e2.code, 1, h2.stderr());
      const s = h2.summary();
      assert.equal(s.end, "error");
      if (ve.signal === "SIGKILL") assert.equal(s.killed, true);
      assert.match(String(s.error), /failed: errno 14|could not be served/);
    },
  );

  const malformed: Array<[string, string[], RegExp, (path: string) => string[]]> = [
    [
      "bad JSON",
      ["--handshake-timeout-ms", "1000"],
      /not JSON/,
      (p) => ["--message-file", msg(p, "[{ not json")],
    ],
    [
      "no descriptor",
      ["--handshake-timeout-ms", "500"],
      /no complete handshake within 500 ms/,
      () => ["--no-fd"],
    ],
    ["too many descriptors", [], /more than 3 descriptors/, () => ["--extra-fds", "3"]],
    [
      "regions past the memory file",
      [],
      /reaches past the source/,
      () => ["--regions", `${8 * MiB},${8 * MiB}`, "--no-touch"],
    ],
    ["misaligned address", [], /not aligned/, () => ["--misalign", "100"]],
    ["a page size Firecracker does not use", [], /page size 8192/, (p) => [
      "--message-file",
      msg(p, JSON.stringify([{ base_host_virt_addr: 1 << 30, size: 8192, offset: 0, page_size: 8192 }])),
    ]],
  ];
  function msg(path: string, text: string): string {
    writeFileSync(path, text);
    return path;
  }
  for (const [name, hargs, re, vargs] of malformed) {
    it(
      `malformed handshake: ${name} -> a clear error, exit 3, nothing hangs`,
      { ...T, skip: noCc },
      async () => {
        const base = tempPath("base.mem");
        writePatternFile(base, 8 * MiB, 7);
        const sock = tempPath("fc.sock");
        const handler = await startHandler(["--socket", sock, "--mem-file", base, ...hargs]);
        const vmm = startVmm([
          "--socket",
          sock,
          "--mode",
          "threads",
          "--regions",
          `${8 * MiB}`,
          "--hold-ms",
          "10000",
          ...vargs(tempPath("msg")),
        ]);
        const he = await within(handler.exited, 15000, "the handler");
        assert.equal(he.code, 3, handler.stderr() + handler.stdout());
        assert.match(handler.stderr(), re);
        const ve = await within(vmm.exited, 15000, "the VMM after the handler hung up");
        assert.equal(ve.signal, null, vmm.stderr());
      },
    );
  }

  it(
    "1 to 3 descriptors are accepted (the extra ones closed) and the restore proceeds",
    { ...T, skip: noCc },
    async () => {
      const base = tempPath("base.mem");
      writePatternFile(base, 4 * MiB, 8);
      const { h, recs } = await restoreOnce(["--mem-file", base], [
        "--mode",
        "threads",
        "--regions",
        `${4 * MiB}`,
        "--extra-fds",
        "2",
        "--touch",
        "all",
      ]);
      assertMatches(recs, [base], PS);
      assert.equal(h.pages, (4 * MiB) / PS);
    },
  );
});
