/**
 * Worker side of {@link FdWatcher}: blocks in poll() so the main thread's event loop
 * does not. Control word: 0 idle, 1 poll requested, 2 stop.
 * @module
 */
import { libc } from "../ffi/mod.ts";
import { POLLIN } from "./eventfd.ts";

interface Init {
  fd: number;
  stopFd: number;
  ctrl: SharedArrayBuffer;
}

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent<Init>) => void) | null;
  postMessage(m: unknown): void;
  close(): void;
};

scope.onmessage = (e: MessageEvent<Init>) => {
  scope.onmessage = null;
  const { fd, stopFd } = e.data;
  const ctrl = new Int32Array(e.data.ctrl);
  const fds = new Int32Array([fd, POLLIN, stopFd, POLLIN]);
  const u16 = new Uint16Array(fds.buffer);
  for (;;) {
    Atomics.wait(ctrl, 0, 0);
    if (Atomics.load(ctrl, 0) === 2) break;
    u16[3] = 0;
    u16[7] = 0;
    const r = libc.poll(fds, 2, -1);
    if (r < 0 && libc.errno() === 4) continue; // EINTR
    if (u16[7] !== 0 || Atomics.load(ctrl, 0) === 2) break;
    Atomics.store(ctrl, 0, 0);
    scope.postMessage(r < 0 ? "error" : "readable");
  }
  scope.postMessage("stopped");
  if (typeof scope.close === "function") scope.close();
};
