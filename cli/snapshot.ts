/**
 * `uffd snapshot`: tools for snapshot memory files and their diff layers.
 * @module
 */
import { parseArgs } from "node:util";
import { rebaseSnapshot } from "../src/rebase.ts";

/** Help text of the command. */
export const SNAPSHOT_USAGE =
  `Usage: uffd snapshot rebase --mem-file BASE --layer PATH [--layer PATH...] [--out PATH] [--json]

  rebase   merge diff layers (bottom first) onto the memory file, like Firecracker's
           snapshot-editor edit-memory rebase: each layer's written pages replace the base's;
           in place, or into --out (a sparse copy of the base, then the layers)`;

/** Runs `uffd snapshot ...`; returns the exit status. */
export function runSnapshot(args: string[]): number {
  const [sub, ...rest] = args;
  if (sub === undefined || sub === "help" || sub === "--help" || sub === "-h") {
    console.log(SNAPSHOT_USAGE);
    return sub === undefined ? 2 : 0;
  }
  if (sub !== "rebase") {
    console.error(`uffd snapshot: unknown subcommand ${sub}\n\n${SNAPSHOT_USAGE}`);
    return 2;
  }
  let values;
  try {
    ({ values } = parseArgs({
      args: rest,
      options: {
        "mem-file": { type: "string" },
        layer: { type: "string", multiple: true },
        out: { type: "string" },
        json: { type: "boolean" },
      },
      strict: true,
    }));
  } catch (e) {
    console.error(`uffd snapshot rebase: ${e instanceof Error ? e.message : e}\n\n${SNAPSHOT_USAGE}`);
    return 2;
  }
  if (!values["mem-file"] || !values.layer?.length) {
    console.error(
      `uffd snapshot rebase: --mem-file and at least one --layer are required\n\n${SNAPSHOT_USAGE}`,
    );
    return 2;
  }
  try {
    const r = rebaseSnapshot(values["mem-file"], values.layer, values.out);
    console.log(
      values.json
        ? JSON.stringify(r)
        : `merged ${values.layer.length} layer(s) into ${r.out}: ${r.extents} extent(s), ${r.layerBytes} bytes ` +
          `from the layers, ${r.length} bytes in all`,
    );
    return 0;
  } catch (e) {
    console.error(`uffd snapshot rebase: ${e instanceof Error ? e.message : e}`);
    return 1;
  }
}
