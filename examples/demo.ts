/**
 * The self-contained demo behind `npm run demo`: generates 64 MiB of data, serves it
 * lazily with the fault server, reads it back page by page, and checks every byte.
 *
 *   deno run --allow-ffi --allow-read examples/demo.ts
 *   bun run examples/demo.ts
 *   node .node/examples/demo.js      (Node.js: after `node scripts/build.mjs --tests`)
 */
import { alignedSharedBytes, FaultServer } from "../mod.ts";
import { lazyRead, printSummary } from "./lazy_file.ts";

const MiB = 2 ** 20;
const size = 64 * MiB;
const runtime = "Bun" in globalThis ? "Bun" : "Deno" in globalThis ? "Deno" : "Node.js";
console.log(`uffd demo on ${runtime}: ${size / MiB} MiB of generated data, served on first touch`);
const data = alignedSharedBytes(size); // shared memory the kernel copies from, page-aligned
const src = new Uint32Array(data.buffer, data.byteOffset, size / 4);
for (let i = 0; i < src.length; i++) src[i] = Math.imul(i, 2654435761) ^ (i >>> 7);
let expected = 0;
const bytes = data;
for (let off = 0; off < size; off += 4096) expected = (expected + bytes[off]) >>> 0;

const server = await FaultServer.start({ source: { kind: "bytes", data }, readahead: "adaptive" });
let summary;
let mismatched = 0;
try {
  summary = await lazyRead(server);
  const mem = server.bytes();
  for (let i = 0; i < size; i++) if (mem[i] !== bytes[i]) mismatched++;
} finally {
  server.close();
}
printSummary(summary, server.stats);
console.log(
  `verified:      ${mismatched === 0 ? "every byte matches the source" : `${mismatched} MISMATCHES`}`,
);
if (mismatched !== 0 || summary.checksum !== expected) {
  throw new Error("demo: memory does not match its source");
}
console.log(`done: ${server.stats.faults} faults, ${server.stats.errors} errors`);
