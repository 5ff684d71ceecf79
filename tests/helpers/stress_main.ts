// uffd-stress from the command line, the kernel's way: `<test type> <MiB> <bounces>`
// (npm run stress runs run_vmtests.sh's sizes on all five memory types).
import process from "node:process";
import { hugePageSize } from "../../mod.ts";
import { runServerStress, runUffdStress } from "./stress_run.ts";
import { hugeSkipReason, isHugetlb, STRESS_MEM_TYPES, type StressMemType } from "./stress_mem.ts";

const server = process.argv.includes("--server");
const [mt, mib, bounces] = process.argv.slice(2).filter((a) => a !== "--server");
if (!STRESS_MEM_TYPES.includes(mt as StressMemType) || !(Number(mib) > 0) || !(Number(bounces) > 0)) {
  console.error(`usage: stress_main.ts <${STRESS_MEM_TYPES.join("|")}> <MiB> <bounces>`);
  process.exit(1);
}
const bytes = Number(mib) * 1024 * 1024;
const skip = hugeSkipReason(
  mt as StressMemType,
  isHugetlb(mt as StressMemType) ? (2 * bytes) / hugePageSize() : 0,
);
if (skip) {
  console.log(`skip: ${skip}`);
  process.exit(0);
}
const run = server ? runServerStress : runUffdStress;
const s = await run({ mt: mt as StressMemType, bytes, bounces: Number(bounces), log: console.log });
console.log(JSON.stringify(s));
process.exit(0);
