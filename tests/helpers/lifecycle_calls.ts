// Main-thread side of tests/helpers/lifecycle_worker.ts.

/** What a call returned on the Worker: its result (a read: the byte) and errno (0 on success). */
export interface CallResult {
  ret: number;
  errno: number;
}

/** A read the Worker starts only when told to, after a delay (see {@link LifecycleWorker.armedRead}). */
export interface ArmedRead {
  /** Resolves once the Worker is parked, waiting for {@link fire}. */
  armed(): Promise<void>;
  /** Lets the Worker go: it sleeps the delay, then reads. Needs no event loop on either side. */
  fire(): void;
  /** The read's result, once it has returned. */
  done: Promise<CallResult>;
}

/** A Worker that runs libc calls and reads on request. Always `close()` it, also on failure. */
export class LifecycleWorker {
  #worker: Worker;
  #pending: ((r: CallResult) => void)[] = [];

  constructor() {
    this.#worker = new Worker(new URL("./lifecycle_worker.ts", import.meta.url), { type: "module" });
    this.#worker.onmessage = (e: MessageEvent<CallResult>) => this.#pending.shift()?.(e.data);
  }

  #call(op: string, args: number[], gate?: SharedArrayBuffer): Promise<CallResult> {
    return new Promise((resolve) => {
      this.#pending.push(resolve);
      this.#worker.postMessage({ op, args, gate });
    });
  }

  /** Answers at once: the Worker is running. */
  ping(): Promise<CallResult> {
    return this.#call("ping", []);
  }

  /** Anonymous `mmap(addr, len, prot, flags, -1, 0)`; ret is the address. */
  mmap(addr: number, len: number, prot: number, flags: number): Promise<CallResult> {
    return this.#call("mmap", [addr, len, prot, flags]);
  }

  /** `mremap(addr, oldLen, newLen, flags, newAddr)`; ret is the new address. */
  mremap(addr: number, oldLen: number, newLen: number, flags: number, newAddr = 0): Promise<CallResult> {
    return this.#call("mremap", [addr, oldLen, newLen, flags, newAddr]);
  }

  /** Reads the byte at `addr`; ret is its value. */
  read(addr: number): Promise<CallResult> {
    return this.#call("read", [addr]);
  }

  /**
   * Parks the Worker until {@link ArmedRead.fire}, then it sleeps `delayMs` and reads the byte
   * at `addr`. The caller can then block its own thread (a blocking read(2)) right after fire().
   */
  armedRead(addr: number, delayMs: number): ArmedRead {
    const sab = new SharedArrayBuffer(12);
    const gate = new Int32Array(sab);
    const done = this.#call("armedRead", [addr, delayMs], sab);
    return {
      async armed(): Promise<void> {
        const end = Date.now() + 10000;
        while (Atomics.load(gate, 1) === 0) {
          if (Date.now() > end) throw new Error("the Worker did not park within 10 s");
          await new Promise((r) => setTimeout(r, 2));
        }
      },
      fire(): void {
        Atomics.store(gate, 0, 1);
        Atomics.notify(gate, 0);
      },
      done,
    };
  }

  /** Terminates the Worker. Only call once no call of it is blocked in a fault or an event. */
  close(): void {
    this.#worker.terminate();
  }
}

/** Waits for calls that may still be blocked, at most `ms` (the timer is cleared); never rejects. */
export async function settle(calls: Promise<unknown>[], ms = 5000): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([
    Promise.allSettled(calls),
    new Promise<void>((r) => (timer = setTimeout(r, ms))),
  ]);
  clearTimeout(timer);
}
