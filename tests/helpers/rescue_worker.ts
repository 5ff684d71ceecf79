// For sealStuck() in ./peek.ts: replaces the pages a stuck Worker faults on with fresh anonymous
// memory and seals them, on its own thread (the mmap waits while an UNMAP event is unread, and
// the test thread must not). Signals the control word: 1 = done, 2 = could not.
import { libc } from "../../ffi/mod.ts";
import { hugePageSize, pageSize } from "../../mod.ts";

const SYS_mseal = 462;
const PROT_READ_WRITE = 3;
const MAP_PRIVATE_ANONYMOUS_FIXED = 0x32;

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent<{ addr: number; len: number; ctrl: SharedArrayBuffer }>) => void) | null;
};

scope.onmessage = (e) => {
  const { addr, len, ctrl } = e.data;
  const state = new Int32Array(ctrl);
  let done = 2;
  // hugetlb memory is replaced and sealed in whole huge pages only (EINVAL otherwise).
  for (const unit of [pageSize, hugePageSize()]) {
    if (unit === 0) continue;
    const a = addr - (addr % unit);
    const n = Math.ceil((addr + Math.max(len, 1)) / unit) * unit - a;
    if (libc.mmap(a, n, PROT_READ_WRITE, MAP_PRIVATE_ANONYMOUS_FIXED, -1, 0) !== a) continue;
    libc.syscall(SYS_mseal, a, n, 0);
    done = 1;
    break;
  }
  Atomics.store(state, 0, done);
  Atomics.notify(state, 0);
};
