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

/**
 * An environment variable: its value, undefined when unset, or null when this process may not
 * read it (Deno without --allow-env; asked without a permission prompt).
 */
export function envVar(name: string): string | undefined | null {
  const deno = (globalThis as {
    Deno?: {
      permissions: { querySync(d: { name: "env"; variable: string }): { state: string } };
      env: { get(n: string): string | undefined };
    };
  }).Deno;
  if (deno) {
    return deno.permissions.querySync({ name: "env", variable: name }).state === "granted"
      ? deno.env.get(name)
      : null;
  }
  const proc = (globalThis as { process?: { env: Record<string, string | undefined> } }).process;
  return proc?.env[name];
}
