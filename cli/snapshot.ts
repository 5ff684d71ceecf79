/**
 * `uffd snapshot`: tools for snapshot memory files and their diff layers.
 * @module
 */
import { parseArgs } from "node:util";
import { rebaseSnapshot } from "../src/rebase.ts";
import { inspectSnapshot, rebaseSnapshotDir, type SnapshotReport } from "../src/snapshot/restore.ts";

/** Help text of the command. */
export const SNAPSHOT_USAGE = `Usage: uffd snapshot inspect DIR [--json]
       uffd snapshot rebase DIR [--json]
       uffd snapshot rebase --mem-file BASE --layer PATH [--layer PATH...] [--out PATH] [--json]

  inspect DIR   a snapshot directory's layers: data (dirty) pages, holes, the pages each layer
                supplies, zero pages, checksummed chunks, sizes
  rebase DIR    merge its layer chain into one base (checked against the manifest first) and
                rewrite the manifest
  rebase --mem-file ...  merge Firecracker diff layers (bottom first) onto a memory file, like
                snapshot-editor edit-memory rebase: in place, or into --out`;

/** The inspect report as text. */
export function formatSnapshotReport(r: SnapshotReport): string {
  const mib = (n: number): string => `${(n / 1048576).toFixed(1)} MiB`;
  const lines = [
    `${r.dir}: ${r.pages} pages of ${r.pageSize} bytes (${mib(r.length)}), ${r.layers.length} layer(s), ` +
    `${r.zeroPages} zero pages, ${mib(r.dataBytes)} of data, checksum chunks of ${r.chunkSize} bytes`,
  ];
  for (const l of r.layers) {
    lines.push(
      `  ${l.file.padEnd(14)} ${l.kind.padEnd(4)} data ${String(l.dataPages).padStart(8)}  holes ` +
        `${String(l.holePages).padStart(8)}  supplies ${String(l.topPages).padStart(8)}  ` +
        `chunks ${l.checksummedChunks}  ${mib(l.length)}  ${l.createdAt}`,
    );
  }
  return lines.join("\n");
}

/** Runs `uffd snapshot ...`; returns the exit status. */
export function runSnapshot(args: string[]): number {
  const [sub, ...rest] = args;
  if (sub === undefined || sub === "help" || sub === "--help" || sub === "-h") {
    console.log(SNAPSHOT_USAGE);
    return sub === undefined ? 2 : 0;
  }
  if (sub === "inspect" || (sub === "rebase" && rest[0] !== undefined && !rest[0].startsWith("-"))) {
    const [dir, ...flags] = rest;
    const bad = flags.filter((f) => f !== "--json");
    if (!dir || bad.length) {
      console.error(
        `uffd snapshot ${sub}: ${dir ? `unknown option ${bad[0]}` : "DIR is required"}\n\n${SNAPSHOT_USAGE}`,
      );
      return 2;
    }
    try {
      if (sub === "rebase") rebaseSnapshotDir(dir);
      const r = inspectSnapshot(dir);
      console.log(flags.includes("--json") ? JSON.stringify(r) : formatSnapshotReport(r));
      return 0;
    } catch (e) {
      console.error(`uffd snapshot ${sub}: ${e instanceof Error ? e.message : e}`);
      return 1;
    }
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
