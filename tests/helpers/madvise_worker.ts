// madvise(2) on its own thread: with the range registered for REMOVE events, MADV_DONTNEED blocks its
// caller until the server has read the event, so the test thread asks this Worker to call it.
import { libc } from "../../ffi/mod.ts";

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent<{ addr: number; len: number; advice: number }>) => void) | null;
  postMessage(m: unknown): void;
};
scope.onmessage = (e) => {
  const { addr, len, advice } = e.data;
  const r = libc.madvise(addr, len, advice);
  scope.postMessage(r === 0 ? 0 : -libc.errno());
};
