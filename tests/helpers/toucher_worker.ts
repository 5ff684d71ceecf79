// Touches memory on its own thread, so the test's main thread can resolve the faults.
import { libc } from "../../ffi/mod.ts";

interface Touch {
  op: "read" | "write" | "exit";
  addr: number;
  len: number;
  value: number;
}

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent<Touch>) => void) | null;
  postMessage(m: unknown): void;
  close(): void;
};

scope.onmessage = (e: MessageEvent<Touch>) => {
  const { op, addr, len, value } = e.data;
  if (op === "exit") {
    scope.onmessage = null;
    scope.postMessage({ done: true });
    scope.close();
    return;
  }
  const view = new Uint8Array(libc.view(addr, len));
  let sum = 0;
  if (op === "write") {
    for (let i = 0; i < len; i += 4096) view[i] = value;
    sum = value;
  } else {
    for (let i = 0; i < len; i += 4096) sum = (sum + view[i]) >>> 0;
  }
  scope.postMessage({ sum, first: view[0] });
};
