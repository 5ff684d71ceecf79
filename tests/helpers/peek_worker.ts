// Reads or writes memory on its own thread for the Peeker in ./peek.ts, then signals the waiting
// test thread through the shared control words: [1] = 1 once a job is received (the Worker has
// loaded: the access's deadline starts there), [0] = 1 when it is done.
import { libc } from "../../ffi/mod.ts";

interface Job {
  op: "peek" | "poke";
  addr: number;
  len: number;
  data: SharedArrayBuffer;
  ctrl: SharedArrayBuffer;
}

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent<Job>) => void) | null;
};

scope.onmessage = (e: MessageEvent<Job>) => {
  const { op, addr, len, data, ctrl } = e.data;
  const state = new Int32Array(ctrl);
  Atomics.store(state, 1, 1);
  Atomics.notify(state, 1);
  const mem = new Uint8Array(libc.view(addr, len));
  const buf = new Uint8Array(data, 0, len);
  if (op === "peek") buf.set(mem);
  else mem.set(buf);
  Atomics.store(state, 0, 1);
  Atomics.notify(state, 0);
};
