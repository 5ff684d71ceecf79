/**
 * Picks the FFI backend for the running JavaScript runtime by feature detection.
 * Nothing outside `ffi/` touches `Deno.*`, `bun:ffi` or koffi (Node's FFI, an npm package).
 * @module
 */
import type { Libc } from "./types.ts";
import { loadDenoLibc } from "./deno.ts";
import { loadBunLibc } from "./bun.ts";
import { loadNodeLibc } from "./node.ts";

export type { Bytes, Libc } from "./types.ts";

async function load(): Promise<Libc> {
  if ("Bun" in globalThis) return await loadBunLibc();
  if ("Deno" in globalThis) return loadDenoLibc();
  const proc = (globalThis as { process?: { versions?: { node?: string } } }).process;
  if (proc?.versions?.node) return await loadNodeLibc();
  throw new Error(
    "uffd needs Deno (with --allow-ffi), Bun or Node.js (with koffi): no FFI backend for this runtime",
  );
}

/** libc, opened once per thread (each Worker opens its own). */
export const libc: Libc = await load();
