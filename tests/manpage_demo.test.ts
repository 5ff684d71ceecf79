// examples/manpage_demo.ts, the userfaultfd(2) EXAMPLES program, as a child process:
// the same lines as the C program, in the documented order, one fault per page.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { pageSize } from "../mod.ts";
import { runChild } from "./helpers/child.ts";

const DEMO = fileURLToPath(new URL("../examples/manpage_demo.ts", import.meta.url));
const T = { timeout: 30000 };

/** The lines the C program prints for `pages` pages whose mapping starts at `base`. */
function expected(base: number, pages: number): string[] {
  const lines = [`Address returned by mmap() = 0x${base.toString(16)}`];
  for (let p = 0; p < pages; p++) {
    const page = base + p * pageSize;
    lines.push(
      "",
      "fault_handler_thread():",
      "    poll() returns: nready = 1; POLLIN = 1; POLLERR = 0",
      `    UFFD_EVENT_PAGEFAULT event: flags = 0; address = ${page.toString(16)}`,
      `        (uffdio_copy.copy returned ${pageSize})`,
    );
    const letter = String.fromCharCode(0x41 + p % 20);
    for (let off = 0xf; off < pageSize; off += 1024) {
      lines.push(`Read address 0x${(page + off).toString(16)} in main(): ${letter}`);
    }
  }
  return lines;
}

function runDemo(pages: number): { base: number; lines: string[] } {
  const r = runChild(DEMO, [String(pages)], 25000);
  assert.equal(r.signal, null, `killed by ${r.signal} (hung?); stdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr, "");
  assert.ok(r.stdout.endsWith("\n"));
  const lines = r.stdout.slice(0, -1).split("\n");
  const m = /^Address returned by mmap\(\) = 0x([0-9a-f]+)$/.exec(lines[0]);
  assert.ok(m, `first line: ${lines[0]}`);
  const base = parseInt(m[1], 16);
  assert.equal(base % pageSize, 0, "mmap returns a page-aligned address");
  return { base, lines };
}

describe("manpage_demo (userfaultfd(2) EXAMPLES)", () => {
  it("prints the C program's lines in order for 3 pages: 3 faults, A B C", T, () => {
    const { base, lines } = runDemo(3);
    // Shape first, with regexes, so a failure points at the line that differs.
    const shape = [
      /^Address returned by mmap\(\) = 0x[0-9a-f]+$/,
      ...[0, 1, 2].flatMap((p) => [
        /^$/,
        /^fault_handler_thread\(\):$/,
        /^ {4}poll\(\) returns: nready = 1; POLLIN = 1; POLLERR = 0$/,
        /^ {4}UFFD_EVENT_PAGEFAULT event: flags = 0; address = [0-9a-f]+$/,
        /^ {8}\(uffdio_copy\.copy returned 4096\)$/,
        ...[0, 1, 2, 3].map(() => new RegExp(`^Read address 0x[0-9a-f]+ in main\\(\\): ${"ABC"[p]}$`)),
      ]),
    ];
    assert.equal(lines.length, shape.length, lines.join("\n"));
    lines.forEach((l, i) => assert.match(l, shape[i], `line ${i}`));
    // Then the exact addresses.
    assert.deepEqual(lines, expected(base, 3));
    assert.equal(lines.filter((l) => l === "fault_handler_thread():").length, 3, "one fault per page");
  });

  it("serves one fault per page and cycles the letters after 20 pages", T, () => {
    const { base, lines } = runDemo(22);
    assert.equal(lines.filter((l) => l.startsWith("    UFFD_EVENT_PAGEFAULT")).length, 22);
    assert.deepEqual(lines, expected(base, 22));
    assert.ok(lines.includes(`Read address 0x${(base + 20 * pageSize + 0xf).toString(16)} in main(): A`));
  });

  it("prints the usage and exits 1 without the page count", T, () => {
    const r = runChild(DEMO, [], 25000);
    assert.equal(r.status, 1);
    assert.equal(r.stdout, "");
    assert.match(r.stderr, /^Usage: .*manpage_demo\.[jt]s num-pages\n$/);
  });
});
