/**
 * The `uffd` command line: what userfaultfd can do on this machine (and, when it cannot be
 * used, why and what to change), a page-fault handler for Firecracker snapshot restores, and
 * snapshot file tools. One file per command under `cli/`; this one dispatches.
 *
 * ```sh
 * deno run --allow-ffi --allow-read cli.ts features          # readable report
 * deno run --allow-ffi --allow-read cli.ts features --json   # the same as JSON
 * bun run cli.ts features
 * deno run --allow-ffi --allow-read --allow-write cli.ts firecracker --socket PATH --mem-file PATH
 * bun run cli.ts firecracker --socket PATH --mem-file PATH
 * ```
 *
 * The report is also available as data: {@link featuresReport}.
 *
 * @example
 * ```ts
 * import { featuresReport } from "@uffd/userfaultfd/cli";
 * const r = featuresReport();
 * if (!r.support?.features.includes("MOVE")) console.log("no UFFDIO_MOVE here");
 * ```
 *
 * @module
 */
import process from "node:process";
import { FIRECRACKER_USAGE, runFirecracker } from "./cli/firecracker.ts";
import { runFeatures } from "./cli/features.ts";
import { runSnapshot, SNAPSHOT_USAGE } from "./cli/snapshot.ts";

export {
  type DeviceInfo,
  FEATURE_NAMES,
  type FeatureName,
  type FeaturesReport,
  featuresReport,
  type FeatureSupport,
  formatReport,
  type IoctlName,
  openAdvice,
  type OpenAttempt,
  type ProcessInfo,
} from "./cli/features.ts";
export { formatSummary } from "./cli/firecracker.ts";

const USAGE = `Usage: uffd <command> [options]

Commands:
  features [--json]   what userfaultfd can do here: kernel, how a descriptor can be
                      opened (and what to change when it cannot), features, ioctls
                      (exit status 1 when no descriptor can be opened)
  firecracker ...     serve a Firecracker snapshot restore (uffd firecracker --help)
  snapshot rebase ... merge diff layers onto a memory file (uffd snapshot --help)
  help                this text

Run with:  deno run --allow-ffi --allow-read cli.ts <command>
           (firecracker and snapshot also need --allow-write)
           bun run cli.ts <command>`;

async function main(args: string[]): Promise<number> {
  const [cmd, ...rest] = args;
  if (cmd === undefined || cmd === "help" || cmd === "--help" || cmd === "-h") {
    console.log(USAGE);
    return 0;
  }
  if (cmd === "features") return runFeatures(rest, USAGE);
  if (cmd === "firecracker") return await runFirecracker(rest);
  if (cmd === "snapshot") return runSnapshot(rest);
  console.error(`uffd: unknown command ${cmd}\n\n${USAGE}`);
  return 2;
}

void FIRECRACKER_USAGE;
void SNAPSHOT_USAGE;
if (import.meta.main) process.exitCode = await main(process.argv.slice(2));
