// The soak's madvise racer: drops random runs of pages of the served ranges with MADV_DONTNEED while
// the faulters read them, from a Worker (a madvise waits until the server has read its REMOVE
// event, and the main thread must stay free to start a standby server thread meanwhile).
import { libc } from "../../ffi/mod.ts";

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent) => void) | null;
  postMessage(m: unknown): void;
};
scope.onmessage = (e: MessageEvent) => {
  const { ranges, seed } = e.data as {
    ranges: { start: number; pages: number; closed?: SharedArrayBuffer }[];
    seed: number;
  };
  const stop = new Int32Array(e.data.stop);
  let x = seed | 1;
  const rnd = (): number => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
  let madvises = 0;
  while (Atomics.load(stop, 0) === 0) {
    Atomics.wait(stop, 0, 0, 1 + rnd() * 4);
    if (Atomics.load(stop, 0) !== 0) break;
    const r = ranges[Math.floor(rnd() * ranges.length)];
    if (r.closed && Atomics.load(new Int32Array(r.closed), 0) !== 0) continue;
    const n = 1 + Math.floor(rnd() * 16);
    const at = Math.floor(rnd() * (r.pages - n));
    if (libc.madvise(r.start + at * 4096, n * 4096, 4 /* MADV_DONTNEED */) === 0) madvises++;
  }
  scope.postMessage({ madvises });
};
