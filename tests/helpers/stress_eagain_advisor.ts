// The advisor of the POISON-after-EAGAIN regression: waits for the source's signal, then drops one
// served page with madvise(DONTNEED), which waits until the server has read its REMOVE event.
import { libc } from "../../ffi/mod.ts";

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent) => void) | null;
  postMessage(m: unknown): void;
};
scope.onmessage = (e: MessageEvent) => {
  const f = new Int32Array(e.data.flag);
  Atomics.wait(f, 0, 0, 10000);
  libc.madvise(e.data.addr, 4096, 4 /* MADV_DONTNEED */);
  scope.postMessage("done");
};
