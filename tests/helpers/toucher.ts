// A Worker that reads or writes registered memory so the test thread can serve faults.
import { sealStuck } from "./peek.ts";

/** Result of one touch: the first byte and a sum of one byte per 4 KiB page. */
export interface TouchResult {
  first: number;
  sum: number;
}

/** A Worker that touches memory on request. Always `close()` it (also on failure). */
export class Toucher {
  #worker: Worker;
  #pending: ((r: TouchResult) => void)[] = [];
  #ranges: [number, number][] = [];

  constructor() {
    this.#worker = new Worker(new URL("./toucher_worker.ts", import.meta.url), { type: "module" });
    this.#worker.onmessage = (e: MessageEvent<TouchResult>) => this.#pending.shift()?.(e.data);
  }

  #send(op: "read" | "write", addr: number, len: number, value: number): Promise<TouchResult> {
    return new Promise((resolve) => {
      this.#ranges.push([addr, len]);
      this.#pending.push((r) => {
        this.#ranges.shift();
        resolve(r);
      });
      this.#worker.postMessage({ op, addr, len, value });
    });
  }

  /** Reads one byte per page of `[addr, addr+len)`. */
  read(addr: number, len = 1): Promise<TouchResult> {
    return this.#send("read", addr, len, 0);
  }

  /** Writes `value` to the first byte of every page of `[addr, addr+len)`. */
  write(addr: number, len = 1, value = 1): Promise<TouchResult> {
    return this.#send("write", addr, len, value);
  }

  /**
   * Terminates the Worker. A touch still outstanding (its fault was never resolved: the test failed)
   * gets its pages sealed first, so the test's cleanup cannot unmap them under the Worker.
   */
  close(): void {
    for (const [addr, len] of this.#ranges) sealStuck(addr, len);
    this.#worker.terminate();
  }
}

/** Rejects after `ms` so an await cannot hang a test. */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
    }),
  ]);
}
