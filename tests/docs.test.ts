// Every example runs: each ```ts block of README.md and each `@example` block in the JSDoc of
// mod.ts and of the src/*.ts files mod.ts exports from is written to a temporary file, its
// "@uffd/userfaultfd" imports pointed at this checkout, and run as a child process under the
// runtime running the tests (nothing is type-checked). A block whose first line is
// `// not run: <reason>` is skipped, and the skips are listed. A block that does not import the
// package gets the package's names it uses imported for it (JSDoc examples of a class often
// leave the import out).
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { libc } from "../ffi/mod.ts";
import * as api from "../mod.ts";

const ROOT = new URL("../", import.meta.url);
const PACKAGE = "@uffd/userfaultfd";
const TIMEOUT_MS = 60000;

interface Block {
  /** Where: `README.md:41`. */
  where: string;
  /** The code, unindented. */
  code: string;
  /** Why it is not run, from its first line. */
  skip?: string;
}

const read = (rel: string): string => readFileSync(new URL(rel, ROOT), "utf8");

/** A block's code and its skip reason (a first line `// not run: <reason>`). */
function block(where: string, lines: string[]): Block {
  const code = lines.join("\n") + "\n";
  const first = lines.find((l) => l.trim() !== "")?.trim() ?? "";
  const m = first.match(/^\/\/\s*not run:\s*(.+)$/);
  return { where, code, skip: m ? m[1] : undefined };
}

/** The ```ts (or ```typescript) fenced blocks of a Markdown text, at any indentation. */
export function markdownBlocks(name: string, text: string): Block[] {
  const out: Block[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const open = lines[i].match(/^(\s*)(`{3,}|~{3,})\s*(ts|typescript)\b[^`]*$/);
    if (!open) continue;
    const [, indent, fence] = open;
    const body: string[] = [];
    let j = i + 1;
    for (; j < lines.length; j++) {
      const l = lines[j];
      if (l.trim().startsWith(fence) && l.trim().replace(/[`~]/g, "") === "") break;
      body.push(l.startsWith(indent) ? l.slice(indent.length) : l.trimStart());
    }
    out.push(block(`${name}:${i + 1}`, body));
    i = j;
  }
  return out;
}

/** The ```ts blocks that follow an `@example` tag in the JSDoc comments of a source file. */
export function jsdocBlocks(name: string, text: string): Block[] {
  const out: Block[] = [];
  for (const c of text.matchAll(/\/\*\*[\s\S]*?\*\//g)) {
    const startLine = text.slice(0, c.index).split("\n").length;
    // strip the comment syntax, keep the line numbers
    const lines = c[0].split("\n").map((l, k) =>
      (k === 0 ? l.replace(/^\s*\/\*\*\s?/, "") : l.replace(/^\s*\*\/?\s?/, "")).replace(/\s*\*\/\s*$/, "")
    );
    let example = false;
    for (let k = 0; k < lines.length; k++) {
      if (/^@example\b/.test(lines[k].trim())) example = true;
      else if (/^@\w+/.test(lines[k].trim())) example = false;
      if (!example) continue;
      const open = lines[k].match(/^(\s*)(`{3,})\s*(ts|typescript)\b/);
      if (!open) continue;
      const body: string[] = [];
      let j = k + 1;
      for (; j < lines.length && !lines[j].trim().startsWith(open[2]); j++) body.push(lines[j]);
      out.push(block(`${name}:${startLine + k}`, body));
      k = j;
      example = false; // one block per @example tag
    }
  }
  return out;
}

/** mod.ts and the src/*.ts files it re-exports from (not src/server/, nor other folders). */
function exportedSources(): string[] {
  const mod = read("mod.ts");
  const files = new Set<string>(["mod.ts"]);
  for (const m of mod.matchAll(/from\s+"\.\/(src\/[^/"]+\.ts)"/g)) files.add(m[1]);
  return [...files];
}

/** The package's specifiers, as the `exports` of package.json map them, to file URLs here. */
type ExportTarget = string | { [condition: string]: ExportTarget };
const exportsMap: Record<string, ExportTarget> = JSON.parse(read("package.json")).exports;
/** The file of an export for this runtime: its condition ("deno", "bun", "node"), else "default". */
const exportFile = (t: ExportTarget | undefined): string | undefined =>
  t === undefined || typeof t === "string" ? t : exportFile(t[libc.runtime] ?? t.default);
const denoExports: Record<string, string> = libc.runtime === "deno"
  ? (JSON.parse(read("deno.json")) as { exports: Record<string, string> }).exports
  : {};
function rewriteImports(code: string): string {
  return code.replace(
    /(["'])@uffd\/userfaultfd(\/[\w./-]+)?\1/g,
    (whole, _q: string, sub: string | undefined) => {
      // Deno in a checkout uses deno.json's exports (the TypeScript); package.json's "deno"
      // condition names the compiled dist/ that an npm install of the package runs.
      const key = sub ? `.${sub}` : ".";
      const target = libc.runtime === "deno" ? denoExports[key] : exportFile(exportsMap[key]);
      return target ? JSON.stringify(new URL(target, ROOT).href) : whole;
    },
  );
}

/** For a block that does not import the package: an import of the package's names it uses. */
function implicitImport(code: string): string {
  if (code.includes(PACKAGE)) return "";
  const declared = (name: string) =>
    new RegExp(`\\b(const|let|var|function|class|using)\\s+${name}\\b|import\\s*\\{[^}]*\\b${name}\\b`).test(
      code,
    );
  const used = Object.keys(api).filter((name) => new RegExp(`\\b${name}\\b`).test(code) && !declared(name));
  return used.length > 0 ? `import { ${used.join(", ")} } from "${PACKAGE}";\n` : "";
}

/** The child's command line: this runtime's own binary, with Deno's permissions. */
function command(file: string): string[] {
  return libc.runtime === "deno"
    ? [process.execPath, "run", "--allow-ffi", "--allow-read", "--allow-write", "--allow-env", file]
    : [process.execPath, "run", file];
}

const blocks: Block[] = [
  ...markdownBlocks("README.md", read("README.md")),
  ...exportedSources().flatMap((f) => jsdocBlocks(f, read(f))),
];
const skipped = blocks.filter((b) => b.skip);
const dir = mkdtempSync(join(tmpdir(), "uffd-docs-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const NODE_SKIP = "the examples are TypeScript, which Node 20 does not run (it runs the compiled JavaScript)";
describe("documentation examples run", { skip: libc.runtime === "node" ? NODE_SKIP : false }, () => {
  it("the extraction finds README's and the JSDoc's examples", () => {
    const readme = blocks.filter((b) => b.where.startsWith("README.md:"));
    assert.ok(readme.length >= 2, `README.md: ${readme.length} ts blocks`);
    assert.ok(blocks.some((b) => b.where.startsWith("src/errors.ts:")), "the UffdError example");
    assert.ok(blocks.some((b) => b.where.startsWith("mod.ts:")), "the module example");
    // the extraction itself, on a synthetic document: indented fences, ~~~ fences, other languages
    const md =
      "x\n  ```ts\n  const a = 1;\n    a;\n  ```\n```sh\nls\n```\n~~~typescript\n// not run: why\n~~~\n";
    assert.deepEqual(markdownBlocks("m", md).map((b) => [b.where, b.code, b.skip]), [
      ["m:2", "const a = 1;\n  a;\n", undefined],
      ["m:9", "// not run: why\n", "why"],
    ]);
    const js = "/**\n * Text.\n *\n * @example\n * ```ts\n * f(1);\n * ```\n * @returns x\n */\n";
    assert.deepEqual(jsdocBlocks("s", js).map((b) => [b.where, b.code]), [["s:5", "f(1);\n"]]);
    console.log(
      `docs: ${blocks.length} examples, ${blocks.length - skipped.length} run, ${skipped.length} skipped` +
        skipped.map((b) => `\n  skipped ${b.where}: ${b.skip}`).join(""),
    );
  });

  for (const [i, b] of blocks.entries()) {
    const first = b.code.split("\n").find((l) => l.trim() !== "" && !l.startsWith("//"))?.trim() ?? "";
    it(`${b.where}: ${first.slice(0, 60)}`, {
      skip: b.skip ? `not run: ${b.skip}` : false,
      timeout: TIMEOUT_MS + 10000,
    }, () => {
      const file = join(dir, `example-${i}.ts`);
      writeFileSync(file, rewriteImports(implicitImport(b.code) + b.code));
      const [cmd, ...args] = command(file);
      const r = spawnSync(cmd, args, {
        encoding: "utf8",
        cwd: dir,
        timeout: TIMEOUT_MS,
        killSignal: "SIGKILL",
      });
      assert.equal(
        r.status,
        0,
        `${b.where} ended with status ${r.status}, signal ${r.signal}` +
          (r.signal === "SIGKILL" ? ` (no exit within ${TIMEOUT_MS} ms)` : "") +
          `\n--- code (${file})\n${b.code}--- stdout\n${r.stdout}--- stderr\n${r.stderr}`,
      );
    });
  }
});
