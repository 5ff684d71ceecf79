// The command StrykerJS's command runner runs for every mutant (see stryker.config.json): the Deno
// suite, then the Bun suite, over the test files that exercise the mutated files (UFFD_MUTANT_TESTS,
// set by scripts/mutate.mjs; all of tests/ without it). Exit 0 = the mutant survived. Deno runs
// first and a failure there ends the run, so a killed mutant costs one runtime, a survivor two.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";

const tests = (process.env.UFFD_MUTANT_TESTS ?? "").split(",").filter((t) => t && existsSync(t));
const perRuntime = process.env.UFFD_MUTANT_TIMEOUT ?? "240";
const deno = [
  "test",
  "--no-check",
  "--allow-ffi",
  "--allow-read",
  "--allow-write",
  "--allow-env",
  "--allow-run",
  "--allow-net",
  "--fail-fast",
  ...(tests.length ? tests : ["tests/"]),
];
const bun = ["test", "--bail", ...tests.map((t) => `./${t}`)];
for (const [cmd, args] of [["deno", deno], ["bun", bun]]) {
  // timeout(1) as a last resort: a mutant that hangs a runtime is killed, counted as killed by Stryker
  // (exit 124) unless Stryker's own timeout fires first (counted as Timeout).
  const r = spawnSync("timeout", ["-k", "5", perRuntime, cmd, ...args], { stdio: "inherit" });
  if (r.status !== 0) process.exit(r.status ?? 1);
}
