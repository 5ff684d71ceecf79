// Runs page-verifying faulter Workers against a served region.
import assert from "node:assert/strict";
import type { FaultServer } from "../../mod.ts";
import { sealStuck } from "./peek.ts";

/** One faulter's job. */
export interface FaultJob {
  order: "seq" | "random";
  seed?: number;
  first: number;
  count: number;
  copyTo?: SharedArrayBuffer;
}

/** Runs one Worker per job over `[addr, addr+len)`; resolves with the mismatched page counts. */
export async function runFaulters(
  addr: number,
  len: number,
  pageSize: number,
  expected: SharedArrayBuffer,
  jobs: FaultJob[],
  timeoutMs = 30000, // a broken fault path fails each test in 30 s, so a whole suite still ends
): Promise<{ bad: number; pages: number }[]> {
  const workers = jobs.map(() =>
    new Worker(new URL("./faulter_worker.ts", import.meta.url), { type: "module" })
  );
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const results = workers.map((w, i) =>
      new Promise<{ bad: number; pages: number }>((resolve, reject) => {
        w.onmessage = (e) => resolve(e.data);
        w.onerror = (e) => reject(new Error(`faulter ${i}: ${e.message}`));
        w.postMessage({ addr, len, pageSize, seed: i + 1, ...jobs[i], expected });
      })
    );
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        sealStuck(addr, len); // the cleanup that follows must not unmap it under a stuck faulter
        reject(new Error(`faulters did not finish in ${timeoutMs} ms`));
      }, timeoutMs);
    });
    return await Promise.race([Promise.all(results), timeout]);
  } finally {
    clearTimeout(timer);
    for (const w of workers) w.terminate();
  }
}

/**
 * Runs one faulter Worker per job over the whole served region, asserts that every page
 * matched `expected`, and always closes the server (stats are final after close()).
 */
export async function faultAll(
  server: FaultServer,
  expected: SharedArrayBuffer,
  jobs: FaultJob[],
): Promise<void> {
  try {
    const results = await runFaulters(
      server.mapping.start,
      server.mapping.length,
      server.mapping.pageSize,
      expected,
      jobs,
    );
    results.forEach((r, i) => assert.equal(r.bad, 0, `faulter ${i}: every page matches its source page`));
  } finally {
    server.close();
  }
}

/** A SharedArrayBuffer of `pages` pages of a page-distinct pseudo-random pattern. */
export function pattern(pages: number, pageSize: number, salt = 0): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(pages * pageSize);
  const w = new Uint32Array(sab);
  let x = 0x9e3779b9 ^ salt;
  for (let i = 0; i < w.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    w[i] = x >>> 0;
  }
  return sab;
}
