// Touches every page of a served region in a given order, verifying each page's
// checksum against the expected bytes, optionally copying pages out (uffd-stress bounce).
import { libc } from "../../ffi/mod.ts";

interface Job {
  addr: number;
  len: number;
  pageSize: number;
  order: "seq" | "random";
  seed: number;
  first: number;
  count: number;
  expected: SharedArrayBuffer;
  copyTo?: SharedArrayBuffer;
}

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent<Job>) => void) | null;
  postMessage(m: unknown): void;
};

function pageSum(b: Uint8Array, off: number, n: number): number {
  let s = 0;
  for (let i = 0; i < n; i++) s = (s * 31 + b[off + i]) >>> 0;
  return s;
}

scope.onmessage = (e: MessageEvent<Job>) => {
  const j = e.data;
  const mem = new Uint8Array(libc.view(j.addr, j.len));
  const exp = new Uint8Array(j.expected);
  const out = j.copyTo ? new Uint8Array(j.copyTo) : undefined;
  const order = Array.from({ length: j.count }, (_, i) => j.first + i);
  if (j.order === "random") {
    let x = j.seed || 1;
    for (let i = order.length - 1; i > 0; i--) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      const k = x % (i + 1);
      [order[i], order[k]] = [order[k], order[i]];
    }
  }
  let bad = 0;
  for (const p of order) {
    const off = p * j.pageSize;
    if (pageSum(mem, off, j.pageSize) !== pageSum(exp, off, j.pageSize)) bad++;
    out?.set(mem.subarray(off, off + j.pageSize), off);
  }
  scope.postMessage({ bad, pages: order.length });
};
