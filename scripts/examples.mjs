#!/usr/bin/env node
// deno-lint-ignore-file explicit-function-return-type -- plain JavaScript: nowhere to write a return type
// Runs every self-contained example in turn under one runtime and prints a line per example:
// its result (the example's last line of output), or why it failed. Exits 1 if any failed.
//
//   npm run examples      under Node.js: dist/examples/*.js, built first (`npm run build`)
//   bun run examples      under Bun
//   deno task examples    under Deno
//   node scripts/examples.mjs --runtime deno|bun|node
//   node scripts/examples.mjs --tree DIR    under Node.js, DIR/examples/*.js of a tree built before
//                                           (`node scripts/build.mjs --out DIR`; no build here)
//
// The runtime is the one running this script, or Bun when `bun run` started it (Bun runs a
// package.json script's `node` with the real Node when one is installed: its user agent says bun).
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const flag = process.argv.indexOf("--runtime");
const treeFlag = process.argv.indexOf("--tree");
const tree = treeFlag > 0 ? resolve(process.argv[treeFlag + 1]) : join(ROOT, "dist");
const runtime = flag > 0
  ? process.argv[flag + 1]
  : process.versions.bun || /^bun\//.test(process.env.npm_config_user_agent ?? "")
  ? "bun"
  : process.versions.deno
  ? "deno"
  : "node";
if (!["deno", "bun", "node"].includes(runtime)) {
  console.error(`unknown runtime ${runtime}: deno, bun or node`);
  process.exit(2);
}

/** The binary of a runtime: this process's own when it is that runtime, else node_modules/.bin or PATH. */
function binary(name) {
  if ((name === "bun" && process.versions.bun) || (name === "deno" && process.versions.deno)) {
    return process.execPath;
  }
  if (name === "node" && !process.versions.bun && !process.versions.deno) return process.execPath;
  const local = join(ROOT, "node_modules", ".bin", name);
  return existsSync(local) ? local : name;
}

const dir = mkdtempSync(join(tmpdir(), "uffd-examples-"));
const data = join(dir, "data.bin");
{
  // 16 MiB of varied bytes for lazy_file.ts
  const bytes = new Uint8Array(16 << 20);
  for (let i = 0, x = 1; i < bytes.length; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    bytes[i] = x >>> 24;
  }
  writeFileSync(data, bytes);
}

const examples = [
  ["demo.ts", []],
  ["lazy_file.ts", [data, "--readahead", "adaptive"]],
  ["manpage_demo.ts", ["3"]],
  ["wasm_snapshot.ts", []],
].filter(([f]) => existsSync(join(ROOT, "examples", f)));

if (runtime === "node" && treeFlag < 0) {
  const r = spawnSync(binary("node"), [join(ROOT, "scripts", "build.mjs")], { stdio: "inherit" });
  if (r.status !== 0) process.exit(1);
}

/** argv that runs `examples/<file>` under the runtime. */
function command(file, args) {
  switch (runtime) {
    case "deno": {
      const perms = ["--allow-ffi", "--allow-read", "--allow-write", "--allow-env", "--allow-run"];
      return [binary("deno"), "run", ...perms, join(ROOT, "examples", file), ...args];
    }
    case "bun":
      return [binary("bun"), "run", join(ROOT, "examples", file), ...args];
    default:
      return [binary("node"), join(tree, "examples", file.replace(/\.ts$/, ".js")), ...args];
  }
}

let failed = 0;
console.log(`examples under ${runtime}:`);
for (const [file, args] of examples) {
  const [cmd, ...argv] = command(file, args);
  const t0 = performance.now();
  const r = spawnSync(cmd, argv, { encoding: "utf8", timeout: 120_000, killSignal: "SIGKILL" });
  const ms = Math.round(performance.now() - t0);
  const lines = (r.stdout ?? "").trim().split("\n").filter((l) => l.trim() !== "");
  if (r.status === 0) {
    console.log(`  ok    ${file.padEnd(18)} ${String(ms).padStart(6)} ms  ${lines.at(-1)?.trim() ?? ""}`);
  } else {
    failed++;
    const why = r.error ? r.error.message : r.signal ? `killed by ${r.signal}` : `exit status ${r.status}`;
    console.log(`  FAIL  ${file.padEnd(18)} ${String(ms).padStart(6)} ms  ${why}`);
    const err = (r.stderr ?? "").trim().split("\n").slice(-8).join("\n      ");
    if (err) console.log(`      ${err}`);
  }
}
rmSync(dir, { recursive: true, force: true });
console.log(
  failed === 0 ? `all ${examples.length} examples passed` : `${failed} of ${examples.length} failed`,
);
process.exit(failed === 0 ? 0 : 1);
