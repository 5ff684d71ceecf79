/**
 * A large file exposed as memory that fills itself on first touch.
 *
 *   deno run --allow-ffi --allow-read examples/lazy_file.ts <file> [--readahead N|adaptive]
 *   bun run examples/lazy_file.ts <file>
 *
 * Reads every page (sequentially), printing progress, and finishes with a summary:
 * pages faulted, bytes placed, time to first byte and throughput.
 */
import { FaultServer, type FaultServerStats } from "../mod.ts";

/** Summary of one lazy read of a source. */
export interface LazyReadSummary {
  /** Bytes of the region. */
  bytes: number;
  /** Milliseconds until the first byte was readable. */
  firstByteMs: number;
  /** Total milliseconds to touch every page. */
  totalMs: number;
  /** Sum of one byte per 4 KiB page (to check against the source). */
  checksum: number;
}

/** Touches every page of a served region in order, printing progress to `log`. */
export async function lazyRead(
  server: FaultServer,
  log: (line: string) => void = console.log,
): Promise<LazyReadSummary> {
  await server.ready;
  const mem = server.bytes();
  const t0 = performance.now();
  let checksum = mem[0];
  const firstByteMs = performance.now() - t0;
  const step = server.mapping.pageSize;
  const tenth = Math.max(step, Math.floor(mem.length / 10 / step) * step);
  for (let off = step; off < mem.length; off += step) {
    checksum = (checksum + mem[off]) >>> 0;
    if (off % tenth === 0) {
      const s = server.stats;
      log(
        `  ${Math.round((off / mem.length) * 100)}%  ${s.faults} faults, ${
          (s.bytes / 2 ** 20).toFixed(1)
        } MiB placed`,
      );
    }
  }
  const totalMs = performance.now() - t0;
  return { bytes: mem.length, firstByteMs, totalMs, checksum };
}

/**
 * Prints a summary block. Pass the server's stats read after close(): the Worker counts a
 * page just after the ioctl that wakes the reader, so live counters can trail by one.
 */
export function printSummary(
  s: LazyReadSummary,
  stats: FaultServerStats,
  log: (line: string) => void = console.log,
): void {
  const mib = s.bytes / 2 ** 20;
  log(
    `pages faulted: ${stats.faults} (${stats.pages} pages placed, ${
      (stats.pages / Math.max(1, stats.faults)).toFixed(1)
    } per fault)`,
  );
  log(`bytes placed:  ${(stats.bytes / 2 ** 20).toFixed(1)} MiB, ${stats.errors} errors`);
  log(`first byte:    ${(s.firstByteMs * 1000).toFixed(0)} us`);
  log(
    `throughput:    ${(mib / (s.totalMs / 1000)).toFixed(0)} MiB/s (${
      ((s.totalMs * 1000) / (s.bytes / 4096)).toFixed(2)
    } us per 4 KiB page)`,
  );
  log(`checksum:      ${s.checksum}`);
}

if (import.meta.main) {
  const { argv } = await import("node:process");
  const args = argv.slice(2);
  const path = args.find((a) => !a.startsWith("--"));
  if (!path) {
    console.error("usage: lazy_file.ts <file> [--readahead N|adaptive]");
    throw new Error("no file given");
  }
  const i = args.indexOf("--readahead");
  const ra = i >= 0 ? (args[i + 1] === "adaptive" ? "adaptive" : Number(args[i + 1])) : "adaptive";
  console.log(`serving ${path} lazily (readahead ${ra})`);
  const server = await FaultServer.start({ source: { kind: "file", path }, readahead: ra });
  let summary: LazyReadSummary;
  try {
    summary = await lazyRead(server);
  } finally {
    server.close();
  }
  printSummary(summary, server.stats);
}
