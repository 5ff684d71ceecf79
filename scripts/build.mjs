#!/usr/bin/env node
// deno-lint-ignore-file explicit-function-return-type -- plain JavaScript: nowhere to write a return type
// Compiles the TypeScript sources to ESM JavaScript for Node.js with the TypeScript compiler from
// npm (no type check here: `deno check` does that; this only strips types and downlevels `using`).
//
//   node scripts/build.mjs          dist/: the library (mod, cli, cli/, src/, ffi/) with declarations,
//                                   what package.json's "node" and "deno" export conditions point at,
//                                   and the examples (dist/examples/, run with `node dist/examples/demo.js`;
//                                   left out of the npm package by package.json's "files"); emptied first
//   node scripts/build.mjs --tests  .node/: the whole tree (library, tests, examples, bench) for running
//                                   the test suite, the examples and benchmarks under Node (npm run test:node);
//                                   updated in place, only the files that changed, each atomically
//   --out DIR                       build into DIR instead (a library build outside the checkout gets a
//                                   package.json of ES modules and node_modules linked, to run as dist/ does)
//
// Relative `.ts` imports become `.js` (rewriteRelativeImportExtensions). Two things the compiler
// leaves alone are rewritten in the emitted JavaScript:
// - `new URL("./worker.ts", import.meta.url)` and other relative `.ts` paths in string literals
//   (Worker scripts, child scripts, module sources) point at the `.js` files; in --tests builds every
//   path-like string literal that ends in `.ts` does ("children/x.ts", "cli.ts").
// - `import.meta.main` (Deno, Bun; Node only from v24) falls back to comparing this module's file
//   with the script Node was started with.
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const tests = process.argv.includes("--tests");
const out = process.argv.indexOf("--out"); // another folder, e.g. for a build while a test run uses .node/
const outDir = out > 0 ? resolve(process.argv[out + 1]) : join(ROOT, tests ? ".node" : "dist");

/** Every .ts file under `dir` (relative to ROOT), skipping build output folders. */
function tsFiles(dir) {
  const out = [];
  for (const e of readdirSync(join(ROOT, dir), { withFileTypes: true })) {
    const rel = join(dir, e.name);
    if (e.isDirectory()) {
      if (e.name !== "build" && e.name !== "node_modules") out.push(...tsFiles(rel));
    } else if (e.name.endsWith(".ts") && !e.name.endsWith(".d.ts")) out.push(rel);
  }
  return out;
}

const roots = [
  "mod.ts",
  "cli.ts",
  ...tsFiles("cli"),
  ...tsFiles("src"),
  ...tsFiles("ffi"),
  ...tsFiles("examples"),
];
if (tests) roots.push(...tsFiles("tests"), ...tsFiles("bench"));

/** @type {import("typescript").CompilerOptions} */
const options = {
  target: ts.ScriptTarget.ES2022,
  module: ts.ModuleKind.NodeNext,
  moduleResolution: ts.ModuleResolutionKind.NodeNext,
  allowImportingTsExtensions: true,
  rewriteRelativeImportExtensions: true,
  noCheck: true,
  skipLibCheck: true,
  declaration: !tests,
  inlineSourceMap: tests,
  rootDir: ROOT,
  outDir,
  lib: ["lib.es2023.d.ts", "lib.dom.d.ts"],
  types: ["node"],
  newLine: ts.NewLineKind.LineFeed,
};

// Relative `.ts` paths in string literals (all path-like ones in a --tests build).
const RELATIVE_TS = /(["'`])(\.\.?\/[\w./@-]*?)\.ts\1/g;
const PATH_TS = /(["'`])([\w@][\w./@-]*?|\.\.?\/[\w./@-]*?)\.ts\1/g;
const MAIN = /\bimport\.meta\.main\b/g;
const MAIN_NODE = "(import.meta.main ?? import.meta.filename === process.argv[1])";
const rewrite = (js) => js.replace(tests ? PATH_TS : RELATIVE_TS, "$1$2.js$1").replace(MAIN, MAIN_NODE);
let files = 0;

if (!tests) rmSync(outDir, { recursive: true, force: true });
if (tests) {
  // Nothing to declare: each file on its own (much faster than a program over the whole tree).
  for (const f of roots) {
    const source = readFileSync(join(ROOT, f), "utf8");
    const compilerOptions = {
      ...options,
      module: ts.ModuleKind.ESNext,
      moduleResolution: ts.ModuleResolutionKind.Bundler,
    };
    const r = ts.transpileModule(source, {
      compilerOptions,
      fileName: join(ROOT, f),
      reportDiagnostics: true,
    });
    const errors = (r.diagnostics ?? []).filter((d) => d.category === ts.DiagnosticCategory.Error);
    if (errors.length > 0) {
      console.error(
        ts.formatDiagnostics(errors, {
          getCanonicalFileName: (x) => x,
          getCurrentDirectory: () => ROOT,
          getNewLine: () => "\n",
        }),
      );
      process.exit(1);
    }
    // In place and atomically, and only what changed: a test run may be reading the tree.
    const out = join(outDir, f.replace(/\.ts$/, ".js"));
    const text = rewrite(r.outputText);
    files++;
    if (existsSync(out) && readFileSync(out, "utf8") === text) continue;
    mkdirSync(dirname(out), { recursive: true });
    writeFileSync(`${out}.tmp`, text);
    renameSync(`${out}.tmp`, out);
  }
} else {
  const program = ts.createProgram(roots.map((f) => join(ROOT, f)), options);
  const emitted = program.emit();
  const errors = ts.getPreEmitDiagnostics(program).concat(emitted.diagnostics)
    .filter((d) => d.category === ts.DiagnosticCategory.Error);
  if (errors.length > 0 || emitted.emitSkipped) {
    const host = { getCanonicalFileName: (f) => f, getCurrentDirectory: () => ROOT, getNewLine: () => "\n" };
    console.error(ts.formatDiagnosticsWithColorAndContext(errors, host));
    process.exit(1);
  }
}

if (!tests) {
  const walk = (dir) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith(".js") || e.name.endsWith(".d.ts")) {
        const src = readFileSync(p, "utf8");
        const out = rewrite(src);
        if (out !== src) writeFileSync(p, out);
        if (e.name.endsWith(".js")) files++;
      }
    }
  };
  walk(outDir);
  // the examples are programs: nothing imports their declarations
  for (const f of readdirSync(join(outDir, "examples"))) {
    if (f.endsWith(".d.ts")) rmSync(join(outDir, "examples", f));
  }
}

/** Deletes the .js files under `dir` that no source produced (a source deleted or moved since). */
function prune(dir, keep) {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) prune(p, keep); // not the symbolic links: fixtures, node_modules
    else if (e.isFile() && e.name.endsWith(".js") && !keep.has(p)) rmSync(p);
  }
}

/** A symbolic link at `path` to `target`, unless there is one already. */
function link(target, path) {
  if (existsSync(path)) return;
  mkdirSync(dirname(path), { recursive: true });
  symlinkSync(target, path);
}

if (tests) {
  prune(outDir, new Set(roots.map((f) => join(outDir, f.replace(/\.ts$/, ".js")))));
  // Non-TypeScript files the tests find next to themselves (C fixtures, the native handler).
  for (const dir of ["tests/fixtures", "bench/native"]) {
    link(join(ROOT, dir), join(outDir, dir));
  }
  // koffi for the tests' copies of the tree (tests/helpers/world_readable.ts) and children.
  link(join(ROOT, "node_modules"), join(outDir, "node_modules"));
  link(join(ROOT, "README.md"), join(outDir, "README.md")); // tests/docs.test.ts reads it
  const exports = { ".": "./mod.js", "./cli": "./cli.js" };
  writeFileSync(
    join(outDir, "package.json"),
    JSON.stringify({ type: "module", private: true, exports }) + "\n",
  );
}
if (!tests && relative(ROOT, outDir).startsWith("..")) {
  link(join(ROOT, "node_modules"), join(outDir, "node_modules")); // koffi
  writeFileSync(join(outDir, "package.json"), JSON.stringify({ type: "module", private: true }) + "\n");
}
if (!existsSync(join(outDir, "mod.js"))) throw new Error(`no ${outDir}/mod.js after the build`);
console.log(`built ${files} modules into ${relative(ROOT, outDir)}/`);
