// A Worker for tests/lifecycle.test.ts and its children: runs one libc call or memory read per
// message on its own thread, so the test thread can read the userfaultfd events such a call
// waits for (UNMAP from mremap or mmap MAP_FIXED) and serve the faults it raises. Replies
// { ret, errno } once the call has returned. See lifecycle_calls.ts for the main-thread side.
import { libc } from "../../ffi/mod.ts";

interface Call {
  op: "ping" | "mmap" | "mremap" | "read" | "armedRead";
  args: number[];
  /**
   * armedRead: Int32Array words [go, armed, unused]. The Worker sets `armed`, waits (in
   * Atomics.wait, not on its event loop) until `go` is set, sleeps args[1] ms, then reads.
   */
  gate?: SharedArrayBuffer;
}

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent<Call>) => void) | null;
  postMessage(m: unknown): void;
};

/** Reads the first byte of `addr` (a fault, if the page is missing and registered). */
function readByte(addr: number): number {
  return new Uint8Array(libc.view(addr, 1))[0];
}

scope.onmessage = (e: MessageEvent<Call>) => {
  const { op, args } = e.data;
  let ret = 0;
  switch (op) {
    case "ping":
      break;
    case "mmap": // anonymous: addr, len, prot, flags
      ret = libc.mmap(args[0], args[1], args[2], args[3], -1, 0);
      break;
    case "mremap":
      ret = libc.mremap(args[0], args[1], args[2], args[3], args[4] ?? 0);
      break;
    case "read":
      scope.postMessage({ ret: readByte(args[0]), errno: 0 });
      return;
    case "armedRead": {
      const gate = new Int32Array(e.data.gate!);
      Atomics.store(gate, 1, 1);
      while (Atomics.load(gate, 0) === 0) Atomics.wait(gate, 0, 0, 1000);
      Atomics.wait(gate, 2, 0, args[1]); // nobody notifies word 2: a plain sleep
      scope.postMessage({ ret: readByte(args[0]), errno: 0 });
      return;
    }
  }
  scope.postMessage({ ret, errno: ret === -1 ? libc.errno() : 0 });
};
