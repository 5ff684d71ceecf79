// A Worker that runs one libc call per message on its own thread, so the test thread can
// observe what the call does to a userfaultfd (kernel-mode faults, REMOVE/REMAP/UNMAP events)
// while it serves faults. Replies { ret, errno } after the call returns.
import { libc } from "../../ffi/mod.ts";

/** One request: which call, and its numeric arguments. */
interface Call {
  op: "pread_zero" | "madvise" | "mremap" | "munmap";
  args: number[];
}

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent<Call>) => void) | null;
  postMessage(m: unknown): void;
};

scope.onmessage = (e: MessageEvent<Call>) => {
  const { op, args } = e.data;
  let ret: number;
  switch (op) {
    case "pread_zero": { // the kernel writes zeros into [addr, addr+len): a kernel-mode fault
      const zero = libc.open(new TextEncoder().encode("/dev/zero\0"), 0o2000000, 0);
      ret = libc.preadAddr(zero, args[0], args[1], 0);
      const errno = ret === -1 ? libc.errno() : 0;
      libc.close(zero);
      scope.postMessage({ ret, errno });
      return;
    }
    case "madvise":
      ret = libc.madvise(args[0], args[1], args[2]);
      break;
    case "mremap":
      ret = libc.mremap(args[0], args[1], args[2], args[3], args[4] ?? 0);
      break;
    case "munmap":
      ret = libc.munmap(args[0], args[1]);
      break;
  }
  scope.postMessage({ ret, errno: ret === -1 ? libc.errno() : 0 });
};
