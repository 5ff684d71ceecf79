/**
 * Picks the FFI backend for the running JavaScript runtime by feature detection.
 * Nothing outside `ffi/` touches `Deno.*` or `bun:ffi`.
 * @module
 */
import type { Libc } from "./types.ts";
import { loadDenoLibc } from "./deno.ts";
import { loadBunLibc } from "./bun.ts";

export type { Bytes, Libc } from "./types.ts";

async function load(): Promise<Libc> {
  if ("Bun" in globalThis) return await loadBunLibc();
  if ("Deno" in globalThis) return loadDenoLibc();
  throw new Error("uffd needs Deno (with --allow-ffi) or Bun: no FFI backend for this runtime");
}

/** libc, opened once per thread (each Worker opens its own). */
export const libc: Libc = await load();
