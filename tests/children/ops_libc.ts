// Test helper: runs libc calls on a Worker thread (see ops_libc_worker.ts).

/** What a call returned on the Worker: its result and errno (0 on success). */
export interface CallResult {
  ret: number;
  errno: number;
}

/** A Worker that runs libc calls on request. Always `close()` it, also on failure. */
export class LibcWorker {
  #worker: Worker;
  #pending: ((r: CallResult) => void)[] = [];

  constructor() {
    this.#worker = new Worker(new URL("./ops_libc_worker.ts", import.meta.url), { type: "module" });
    this.#worker.onmessage = (e: MessageEvent<CallResult>) => this.#pending.shift()?.(e.data);
  }

  #call(op: string, args: number[]): Promise<CallResult> {
    return new Promise((resolve) => {
      this.#pending.push(resolve);
      this.#worker.postMessage({ op, args });
    });
  }

  /** `pread(/dev/zero)` into `[addr, addr+len)`: the kernel writes the memory (kernel-mode fault). */
  preadZero(addr: number, len: number): Promise<CallResult> {
    return this.#call("pread_zero", [addr, len]);
  }

  /** `madvise(addr, len, advice)`. */
  madvise(addr: number, len: number, advice: number): Promise<CallResult> {
    return this.#call("madvise", [addr, len, advice]);
  }

  /** `mremap(addr, oldLen, newLen, flags, newAddr)`; ret is the new address. */
  mremap(addr: number, oldLen: number, newLen: number, flags: number, newAddr = 0): Promise<CallResult> {
    return this.#call("mremap", [addr, oldLen, newLen, flags, newAddr]);
  }

  /** `munmap(addr, len)`. */
  munmap(addr: number, len: number): Promise<CallResult> {
    return this.#call("munmap", [addr, len]);
  }

  /** Terminates the Worker. Only call once no call of it is blocked in a fault. */
  close(): void {
    this.#worker.terminate();
  }
}
