/**
 * Touches one byte of every page of a range, so a FaultServer places every page not yet placed
 * (restore's `complete()`): served memory must be touched off the serving thread's event loop.
 * @module
 */
import { libc } from "../../ffi/mod.ts";

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent<{ address: number; length: number; step: number }>) => void) | null;
  postMessage(m: unknown): void;
};

scope.onmessage = (e) => {
  const v = new Uint8Array(libc.view(e.data.address, e.data.length));
  let s = 0;
  for (let i = 0; i < v.length; i += e.data.step) s += v[i];
  scope.postMessage(s);
};
