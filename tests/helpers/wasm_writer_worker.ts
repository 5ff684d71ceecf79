// Writes sweeps into a memory range until told to stop: every page's first u32 gets the sweep
// number, page after page, so a consistent copy shows values that fall by at most one, once.
const scope = globalThis as unknown as {
  onmessage:
    | ((e: MessageEvent<{ buffer: SharedArrayBuffer; stop: SharedArrayBuffer; pages: number }>) => void)
    | null;
  postMessage(m: unknown): void;
};
import { libc } from "../../ffi/mod.ts";

scope.onmessage = (e) => {
  const { pages } = e.data;
  const stop = new Int32Array(e.data.stop);
  const addr = new Float64Array(e.data.buffer)[0];
  const mem = new Uint32Array(libc.view(addr, pages * 4096));
  let sweep = 0;
  scope.postMessage("started");
  while (Atomics.load(stop, 0) === 0) {
    sweep++;
    for (let p = 0; p < pages; p++) mem[p * 1024] = sweep;
  }
  scope.postMessage(sweep);
};
