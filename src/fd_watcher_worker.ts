/**
 * Worker side of {@link FdWatcher}: blocks in poll() so the main thread's event loop
 * does not. Control word: 0 idle, 1 poll requested, 2 stop.
 *
 * With a consumer thread id it also checks, whenever the consumer stays away longer than its
 * grace, whether the consumer is blocked on a fault of this very descriptor (a pagefault message
 * whose ptid is the consumer's): then it explains on stderr and ends the process, since that
 * fault can never be served. Messages it reads to find out are set aside for the consumer.
 * @module
 */
import { libc } from "../ffi/mod.ts";
import { POLLIN } from "./eventfd.ts";
import { cstring, readTextFile } from "./memory.ts";
import { STASH_CAPACITY, STASH_OFFSET } from "./fd_watcher.ts";
import { UFFD_EVENT } from "./abi.ts";

interface Init {
  fd: number;
  stopFd: number;
  ctrl: SharedArrayBuffer;
  stash: SharedArrayBuffer;
  consumerTid: number;
  graceMs: number;
}

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent<Init>) => void) | null;
  postMessage(m: unknown): void;
  close(): void;
};

const NR_exit_group = 231;
/** The exit status of a process ended for a self-fault (EX_SOFTWARE). */
const SELF_FAULT_STATUS = 70;
const MSG = 32;

/** Whether thread `tid` of this process sleeps in the kernel's userfaultfd fault handler. */
function inUserfault(tid: number): boolean {
  return readTextFile(`/proc/self/task/${tid}/wchan`)?.trim() === "handle_userfault";
}

/**
 * The consumer waits for itself: say why on stderr and end the process with status 70 (a hang is
 * the only alternative). exit_group(2), not abort(): the runtimes' crash handlers would blame
 * themselves.
 */
function selfFault(tid: number, address: number, flags: number): never {
  const kind = flags & 2 ? "write-protect" : flags & 4 ? "minor" : "missing-page";
  const text = `\nuffd: the thread that reads this userfaultfd's events (tid ${tid}, the one iterating ` +
    `events()) is blocked on a ${kind} fault at 0x${address.toString(16)} of that same userfaultfd. ` +
    "Only it would serve the fault, and it waits for itself: the process would hang forever. " +
    "Touch registered memory only from other threads (a Worker, a child process), or serve the faults " +
    "on another thread (FaultServer, or events() in a Worker). Ending the process (status 70).\n";
  const bytes = cstring(text).subarray(0, -1);
  libc.write(2, bytes, bytes.length);
  libc.syscall(NR_exit_group, SELF_FAULT_STATUS);
  for (;;) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1000);
}

scope.onmessage = (e: MessageEvent<Init>) => {
  scope.onmessage = null;
  const { fd, stopFd, consumerTid, graceMs } = e.data;
  const ctrl = new Int32Array(e.data.ctrl);
  const stashWords = new Int32Array(e.data.stash, 0, 2);
  const stashBytes = new Uint8Array(e.data.stash, STASH_OFFSET);
  const fds = new Int32Array([fd, POLLIN, stopFd, POLLIN]);
  const u16 = new Uint16Array(fds.buffer);
  const one = new Int32Array([fd, POLLIN]);
  const msgs = new Uint8Array(STASH_CAPACITY * MSG);
  const words = new Uint32Array(msgs.buffer);

  /** The consumer stayed away: if it is blocked on a fault of this descriptor, end the process. */
  const checkConsumer = (): void => {
    if (!inUserfault(consumerTid)) return; // busy, or waiting for something else
    one[1] = POLLIN;
    if (libc.poll(one, 1, 0) !== 1) return; // nothing pending here: its fault is another descriptor's
    while (Atomics.compareExchange(stashWords, 1, 0, 1) !== 0) { /* the consumer holds it */ }
    try {
      const held = Atomics.load(stashWords, 0);
      const room = STASH_CAPACITY - held;
      if (room <= 0) return;
      const n = libc.read(fd, msgs, room * MSG);
      if (n <= 0) return;
      const count = Math.floor(n / MSG);
      stashBytes.set(msgs.subarray(0, count * MSG), held * MSG);
      Atomics.add(stashWords, 0, count);
      for (let i = 0; i < count; i++) {
        if (msgs[i * MSG] !== UFFD_EVENT.PAGEFAULT || words[i * 8 + 6] !== consumerTid) continue;
        selfFault(consumerTid, words[i * 8 + 5] * 4294967296 + words[i * 8 + 4], words[i * 8 + 2]);
      }
    } finally {
      Atomics.store(stashWords, 1, 0);
    }
  };

  for (;;) {
    while (Atomics.load(ctrl, 0) === 0) {
      const r = Atomics.wait(ctrl, 0, 0, consumerTid ? graceMs : Infinity);
      if (r === "timed-out") checkConsumer();
    }
    if (Atomics.load(ctrl, 0) === 2) break;
    if (Atomics.load(stashWords, 0) > 0) { // set aside earlier: readable at once
      Atomics.store(ctrl, 0, 0);
      scope.postMessage("readable");
      continue;
    }
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
