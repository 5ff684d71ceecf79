/**
 * Entry of the fault server's Worker: opens libc itself (through ffi/), loads a
 * custom source module if any, and runs the loop until stopped.
 * @module
 */
import { type FillFunction, serve } from "./loop.ts";
import type { ServerInit } from "./layout.ts";
import { libc } from "../../ffi/mod.ts";
import { CTRL } from "./layout.ts";

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent<ServerInit>) => void) | null;
  postMessage(m: unknown): void;
  close(): void;
};

interface SourceModule {
  fill?: FillFunction;
  init?: (options: unknown) => void | Promise<void>;
  default?: { fill?: FillFunction; init?: (options: unknown) => void | Promise<void> };
}

// A custom source must not be able to kill the server: self.close() from a source
// throws instead, and uncaught errors are recorded rather than ending the Worker.
const realClose = typeof scope.close === "function" ? scope.close.bind(scope) : () => {};
scope.close = () => {
  throw new Error("a page source called close() on the fault server's Worker");
};
(globalThis as unknown as { addEventListener(t: string, f: (e: Event) => void): void }).addEventListener(
  "error",
  (e: Event) => e.preventDefault(),
);
(globalThis as unknown as { addEventListener(t: string, f: (e: Event) => void): void }).addEventListener(
  "unhandledrejection",
  (e: Event) => e.preventDefault(),
);

scope.onmessage = async (e: MessageEvent<ServerInit>) => {
  scope.onmessage = null;
  const init = e.data;
  new Int32Array(init.ctrl)[CTRL.tid] = libc.syscall(186 /* gettid */);
  let fill: FillFunction | undefined;
  try {
    if (init.source.kind === "module") {
      const mod = (await import(init.source.url)) as SourceModule;
      const f = mod.fill ?? mod.default?.fill;
      if (typeof f !== "function") {
        throw new TypeError(`${init.source.url} exports no fill(offset, dest) function`);
      }
      await (mod.init ?? mod.default?.init)?.(init.source.options);
      fill = f;
    }
    scope.postMessage({ type: "ready" });
    await serve(init, fill);
    scope.postMessage({ type: "stopped" });
  } catch (err) {
    scope.postMessage({ type: "error", message: err instanceof Error ? err.message : String(err) });
  }
  realClose();
};
