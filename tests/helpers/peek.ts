// Synchronous reads and writes of registered or served memory, done by a Worker with a deadline:
// the test's own thread never touches such memory, so a fault that nobody resolves fails the one
// test that made it, saying what it touched, instead of hanging the whole suite.
//
// On a deadline the touched pages are taken away from the userfaultfd before the error is thrown
// (see sealStuck): the stuck Worker must not wake up later, when the test's cleanup closes the
// descriptor or poisons never-placed pages, on unmapped memory (SIGSEGV) or on a poisoned page
// (SIGBUS), either of which would take the whole test process down with it.
import { pageSize } from "../../mod.ts";

/** The default deadline of one access. */
export const PEEK_TIMEOUT_MS = 5000;
/** How long a Peeker's Worker may take to start and receive its first job. */
const LOAD_TIMEOUT_MS = 60000;

/**
 * For a Worker stuck in a fault on `[addr, addr+len)` that nobody resolved (the test failed): replaces
 * those pages with fresh anonymous memory, no longer registered, and seals them (mseal(2)), from
 * another Worker, waiting for it at most `ms`. When the stuck fault is released (its descriptor
 * closed) the access completes on that memory; nothing can poison or unmap it first. The pages stay
 * mapped until the process exits. Best effort (mseal needs Linux 6.10).
 */
export function sealStuck(addr: number, len: number, ms = 1000): void {
  const ctrl = new SharedArrayBuffer(4);
  const state = new Int32Array(ctrl);
  const w = new Worker(new URL("./rescue_worker.ts", import.meta.url), { type: "module" });
  w.postMessage({ addr, len, ctrl });
  const deadline = Date.now() + ms;
  while (Atomics.load(state, 0) === 0 && Date.now() < deadline) {
    Atomics.wait(state, 0, 0, Math.max(1, deadline - Date.now()));
  }
  w.terminate();
}

/** A Worker that reads and writes memory for the test thread; `close()` it (or `using`). */
export class Peeker {
  #worker: Worker | undefined;
  #ctrl = new SharedArrayBuffer(8);
  #data = new SharedArrayBuffer(pageSize);
  #broken: string | undefined;

  #run(op: "peek" | "poke", addr: number, bytes: Uint8Array, ms: number): void {
    const what = `${op} of ${bytes.length} bytes at 0x${addr.toString(16)}`;
    if (this.#broken) throw new Error(`${what}: this Peeker is stuck on an earlier ${this.#broken}`);
    if (this.#data.byteLength < bytes.length) this.#data = new SharedArrayBuffer(bytes.length);
    if (op === "poke") new Uint8Array(this.#data).set(bytes);
    const state = new Int32Array(this.#ctrl);
    Atomics.store(state, 0, 0);
    Atomics.store(state, 1, 0);
    this.#worker ??= new Worker(new URL("./peek_worker.ts", import.meta.url), { type: "module" });
    this.#worker.postMessage({ op, addr, len: bytes.length, data: this.#data, ctrl: this.#ctrl });
    // The deadline is the access's, from when the Worker has the job: starting a Worker can take
    // seconds on a loaded machine (or under `deno test` with type checking), which is no lost fault.
    const loadBy = Date.now() + LOAD_TIMEOUT_MS;
    while (Atomics.load(state, 1) === 0 && Date.now() < loadBy) {
      Atomics.wait(state, 1, 0, Math.max(1, loadBy - Date.now()));
    }
    if (Atomics.load(state, 1) === 0) {
      this.#worker.terminate();
      this.#worker = undefined;
      throw new Error(`${what}: the Peeker's Worker did not start within ${LOAD_TIMEOUT_MS} ms`);
    }
    const deadline = Date.now() + ms;
    while (Atomics.load(state, 0) === 0) {
      const left = deadline - Date.now();
      if (left <= 0) break;
      Atomics.wait(state, 0, 0, left);
    }
    if (Atomics.load(state, 0) === 0) {
      this.#broken = what;
      sealStuck(addr, bytes.length);
      this.#worker.terminate();
      throw new Error(`${what}: no answer within ${ms} ms (a fault that nobody resolved)`);
    }
    if (op === "peek") bytes.set(new Uint8Array(this.#data, 0, bytes.length));
  }

  /** A copy of `[addr, addr+len)`, read in address order. */
  peek(addr: number, len: number, ms: number = PEEK_TIMEOUT_MS): Uint8Array {
    const out = new Uint8Array(len);
    this.#run("peek", addr, out, ms);
    return out;
  }

  /** The byte at `addr`. */
  byte(addr: number, ms: number = PEEK_TIMEOUT_MS): number {
    return this.peek(addr, 1, ms)[0];
  }

  /** Writes `bytes` at `addr`. */
  poke(addr: number, bytes: Uint8Array, ms: number = PEEK_TIMEOUT_MS): void {
    this.#run("poke", addr, bytes, ms);
  }

  /** Fills `[addr, addr+len)` with `value`. */
  fill(addr: number, len: number, value: number, ms: number = PEEK_TIMEOUT_MS): void {
    this.poke(addr, new Uint8Array(len).fill(value), ms);
  }

  /**
   * `[addr, addr+len)` as an array-like whose every index read (`v[i]`), write (`v[i] = x`),
   * `slice()`, `fill()` and `set()` is one access of this Peeker: `bytes()` of served memory,
   * with deadlines.
   */
  view(addr: number, len: number): MemView {
    const at = (i: number, n = 1): number => {
      if (!(i >= 0 && i + n <= len)) throw new RangeError(`[${i}, ${i + n}) is outside the ${len}-byte view`);
      return addr + i;
    };
    const api: Omit<MemView, number> = {
      length: len,
      slice: (a = 0, b = len) => this.peek(at(a, b - a), b - a),
      fill: (v: number, a = 0, b = len) => {
        this.fill(at(a, b - a), b - a, v);
        return view;
      },
      set: (src: ArrayLike<number>, off = 0) => this.poke(at(off, src.length), Uint8Array.from(src)),
    };
    const view = new Proxy(api, {
      get: (t, k) => typeof k === "string" && /^\d+$/.test(k) ? this.byte(at(Number(k))) : Reflect.get(t, k),
      set: (t, k, v) => {
        if (typeof k !== "string" || !/^\d+$/.test(k)) return Reflect.set(t, k, v);
        this.poke(at(Number(k)), Uint8Array.of(v));
        return true;
      },
    }) as MemView;
    return view;
  }

  /** Ends the Worker. */
  close(): void {
    this.#worker?.terminate();
    this.#worker = undefined;
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** Memory seen through a {@link Peeker}: each access is done by its Worker, with a deadline. */
export interface MemView {
  [i: number]: number;
  readonly length: number;
  /** A copy of bytes `[a, b)`. */
  slice(a?: number, b?: number): Uint8Array;
  /** Writes `v` over bytes `[a, b)`. */
  fill(v: number, a?: number, b?: number): MemView;
  /** Writes `src` at byte `off`. */
  set(src: ArrayLike<number>, off?: number): void;
}

/** One read with a fresh Peeker: a copy of `[addr, addr+len)`. */
export function peek(addr: number, len: number, ms: number = PEEK_TIMEOUT_MS): Uint8Array {
  using p = new Peeker();
  return p.peek(addr, len, ms);
}

/** One write with a fresh Peeker. */
export function poke(addr: number, bytes: Uint8Array, ms: number = PEEK_TIMEOUT_MS): void {
  using p = new Peeker();
  p.poke(addr, bytes, ms);
}

/** One byte read with a fresh Peeker. */
export function peekByte(addr: number, ms: number = PEEK_TIMEOUT_MS): number {
  using p = new Peeker();
  return p.byte(addr, ms);
}
