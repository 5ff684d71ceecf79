// npm run mutate [-- --mutate FILE[:LINES] ...]: StrykerJS over src/ and ffi/ (stryker.config.json),
// each mutant judged by the Deno and the Bun suites over only the test files that exercise the
// mutated files (a mutant run costs a suite run). Other arguments go to `stryker run` unchanged.
import { spawnSync } from "node:child_process";

// Test files per source file (first match wins); a file not listed gets the whole suite.
const CORE = [
  "tests/regressions.test.ts",
  "tests/mutants.test.ts",
  "tests/errors.test.ts",
  "tests/ops.test.ts",
  "tests/open.test.ts",
  "tests/selftests_basic.test.ts",
  "tests/selftests_events.test.ts",
  "tests/lifecycle.test.ts",
];
const TESTS = [
  [/^src\/server\//, [
    "tests/mutants_loop.test.ts",
    "tests/regressions.test.ts",
    "tests/mutants.test.ts",
    "tests/server.test.ts",
  ]],
  [/^src\/snapshot\//, ["tests/snapshot.test.ts", "tests/restore.test.ts"]],
  [/^src\/(structs|errors|memory|events|userfaultfd|checks|abi|eventfd|unix)\.ts$/, CORE],
  [/^src\/pagemap\.ts$/, ["tests/regressions.test.ts", "tests/selftests_wp.test.ts", "tests/ops.test.ts"]],
  [/^src\/fdpass\.ts$/, ["tests/fdpass.test.ts"]],
];

const args = process.argv.slice(2);
const mutate = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--mutate" || args[i] === "-m") mutate.push(...args[i + 1].split(","));
}
let tests;
if (mutate.length > 0 && !process.env.UFFD_MUTANT_TESTS) {
  const set = new Set();
  for (const m of mutate) {
    const file = m.replace(/:[0-9:-]+$/, "");
    const hit = TESTS.find(([re]) => re.test(file));
    if (!hit) {
      set.clear();
      break; // unmapped file: the whole suite
    }
    for (const t of hit[1]) set.add(t);
  }
  tests = [...set].join(",");
}
const env = { ...process.env, ...(tests ? { UFFD_MUTANT_TESTS: tests } : {}) };
console.log(`mutate: tests per mutant: ${env.UFFD_MUTANT_TESTS || "tests/ (all)"}`);
const r = spawnSync("node_modules/.bin/stryker", ["run", ...args], { stdio: "inherit", env });
process.exit(r.status ?? 1);
