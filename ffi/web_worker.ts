/**
 * A web `Worker` for Node.js, which has only node:worker_threads: the surface that Deno's and
 * Bun's own module Workers have and that `uffd` and its examples use. A module Worker from a URL,
 * `onmessage` / `onerror` / `addEventListener`, `postMessage` (with a transfer list), `terminate()`,
 * `ref()` / `unref()`; inside the Worker `self`, `onmessage`, `addEventListener("message")`,
 * `postMessage` and `close()` over its parent port. Messages that arrive before the Worker's module
 * sets its handler wait for it. Its console writes straight to the process's stdout and stderr, as in
 * Deno and Bun. The Node backend installs it as `globalThis.Worker` when the
 * runtime has none (see {@link installWebWorker}); Deno and Bun never load it.
 * @module
 */
import { Worker as ThreadWorker } from "node:worker_threads";

/** The key of workerData under which the adapter passes the module URL to its bootstrap. */
const URL_KEY = "__uffdWebWorkerUrl";

/**
 * The key of workerData under which the adapter passes the thread's FFI gate: one Int32 in a
 * SharedArrayBuffer, {@link GATE_IDLE} until the thread opens libc, {@link GATE_LOADING} while it
 * initializes koffi's native module, {@link GATE_LOADED} after, {@link GATE_ENDING} once
 * terminate() was called before the thread began to. A thread terminated while it initializes
 * koffi aborts the whole process ("FATAL ERROR: Error::ThrowAsJavaScriptException napi_throw"), so
 * terminate() waits for that to end; a thread that has not begun never will (see ffi/node.ts).
 */
export const GATE_KEY = "__uffdFfiGate";
/** The thread has not begun to open libc. */
export const GATE_IDLE = 0;
/** The thread initializes koffi: terminate() waits. */
export const GATE_LOADING = 1;
/** The thread's libc is open (or failed to open): terminate() ends it at once. */
export const GATE_LOADED = 2;
/** terminate() came first: the thread does not begin to open libc. */
export const GATE_ENDING = 3;

// Runs first in a Node Worker thread (as a CommonJS script): gives it a web Worker's scope, then
// imports the module. A failed import is rethrown uncaught, so the parent sees an error event.
const BOOTSTRAP = `"use strict";
const { parentPort, workerData } = require("node:worker_threads");
const { writeSync } = require("node:fs");
const { format } = require("node:util");
// Console output straight to the process's descriptors, as Deno's and Bun's Workers write it (a
// Node Worker's own console goes through the main thread's event loop, late or never when busy).
const writeAll = (fd, text) => {
  const bytes = Buffer.from(text);
  for (let off = 0; off < bytes.length;) {
    try {
      off += writeSync(fd, bytes, off);
    } catch (e) {
      if (e.code !== "EAGAIN") throw e;
    }
  }
};
for (const [name, fd] of [["log", 1], ["info", 1], ["debug", 1], ["warn", 2], ["error", 2]]) {
  console[name] = (...args) => writeAll(fd, format(...args) + "\\n");
}
let handler = null;
const listeners = new Set();
const queue = [];
const deliver = (data) => {
  const e = new MessageEvent("message", { data });
  if (handler) handler.call(globalThis, e);
  for (const l of listeners) l.call(globalThis, e);
};
const flush = () => setImmediate(() => { while (queue.length && (handler || listeners.size)) deliver(queue.shift()); });
Object.defineProperty(globalThis, "onmessage", {
  configurable: true,
  enumerable: true,
  get: () => handler,
  set: (f) => { handler = typeof f === "function" ? f : null; if (handler) flush(); },
});
globalThis.self = globalThis;
globalThis.postMessage = (message, transfer) =>
  parentPort.postMessage(message, Array.isArray(transfer) ? transfer : transfer?.transfer);
globalThis.close = () => process.exit(0);
globalThis.addEventListener = (type, l) => { if (type === "message") { listeners.add(l); flush(); } };
globalThis.removeEventListener = (type, l) => { if (type === "message") listeners.delete(l); };
parentPort.on("message", (data) => {
  if (queue.length === 0 && (handler || listeners.size)) deliver(data);
  else queue.push(data);
});
import(workerData.${URL_KEY}).catch((e) => process.nextTick(() => { throw e; }));
`;

/** An error event as a web Worker raises it (Node 20 has no ErrorEvent). */
function errorEvent(error: unknown): Event {
  const e = new Event("error", { cancelable: true });
  const message = error instanceof Error ? error.message : String(error);
  return Object.assign(e, { message, error, filename: "", lineno: 0, colno: 0 });
}

/** The web Worker surface over node:worker_threads (see the module's description). */
export class NodeWebWorker extends EventTarget {
  onmessage: ((e: MessageEvent) => void) | null = null;
  onmessageerror: ((e: MessageEvent) => void) | null = null;
  onerror: ((e: Event) => void) | null = null;
  #thread: ThreadWorker;
  #gate = new Int32Array(new SharedArrayBuffer(4));
  #exited = false;

  constructor(url: string | URL, options: { name?: string } = {}) {
    super();
    const href = new URL(String(url), import.meta.url).href;
    this.#thread = new ThreadWorker(BOOTSTRAP, {
      eval: true,
      name: options.name,
      workerData: { [URL_KEY]: href, [GATE_KEY]: this.#gate },
    });
    this.#thread.once("exit", () => (this.#exited = true));
    this.#thread.on("message", (data: unknown) => {
      const e = new MessageEvent("message", { data });
      this.onmessage?.(e);
      this.dispatchEvent(e);
    });
    this.#thread.on("messageerror", (data: unknown) => {
      const e = new MessageEvent("messageerror", { data });
      this.onmessageerror?.(e);
      this.dispatchEvent(e);
    });
    this.#thread.on("error", (error: unknown) => {
      const e = errorEvent(error);
      const handled = this.onerror !== null;
      this.onerror?.(e);
      // dispatchEvent returns false when a listener called preventDefault().
      if (!this.dispatchEvent(e) || handled || this.#errorListeners > 0) return;
      throw error; // nobody listens: like an error of this thread (Deno and Bun report it too)
    });
  }

  #errorListeners = 0;

  override addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void {
    if (type === "error" && listener) this.#errorListeners++;
    super.addEventListener(type, listener, options);
  }

  override removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void {
    if (type === "error" && listener) this.#errorListeners--;
    super.removeEventListener(type, listener, options);
  }

  postMessage(message: unknown, transfer?: Transferable[] | { transfer?: Transferable[] }): void {
    const list = Array.isArray(transfer) ? transfer : transfer?.transfer;
    // deno-lint-ignore no-explicit-any
    this.#thread.postMessage(message, list as any);
  }

  terminate(): void {
    const was = Atomics.compareExchange(this.#gate, 0, GATE_IDLE, GATE_ENDING);
    if (was !== GATE_LOADING) {
      void this.#thread.terminate();
      return;
    }
    // The thread is inside koffi's initialization (milliseconds): end it once that is over. It
    // stays referenced until then, so whoever awaits its end does not see an empty event loop.
    this.#thread.ref();
    const poll = setInterval(() => {
      if (Atomics.load(this.#gate, 0) === GATE_LOADING && !this.#exited) return;
      clearInterval(poll);
      void this.#thread.terminate();
    }, 1);
  }

  /** Lets the process exit while this Worker runs (as Bun's and Node's own Workers allow). */
  unref(): void {
    this.#thread.unref();
  }

  /** Undoes {@link unref}. */
  ref(): void {
    this.#thread.ref();
  }
}

/** Defines `globalThis.Worker` as {@link NodeWebWorker} unless the runtime has a Worker already. */
export function installWebWorker(): void {
  if (typeof (globalThis as { Worker?: unknown }).Worker === "function") return;
  Object.defineProperty(globalThis, "Worker", {
    configurable: true,
    writable: true,
    enumerable: false,
    value: NodeWebWorker,
  });
}
