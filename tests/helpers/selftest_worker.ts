// A Worker for the kernel-selftest ports: it plays the kernel test's "other thread" or
// "faulting process" (madvise that blocks on a REMOVE event; faulting_process() of the
// events test, with mremap and release) while the test's main thread reads the events.
import { libc } from "../../ffi/mod.ts";
import { patternByte } from "./selftest_common.ts";

const SYS_gettid = 186;
const MREMAP_MAYMOVE = 1;
const MREMAP_FIXED = 2;
const MAP_PRIVATE = 0x02;
const MAP_FIXED_NOREPLACE = 0x100000;
const MAP_ANONYMOUS = 0x20;

/** Requests understood by this worker. */
export type WorkerRequest =
  | { op: "madvise"; addr: number; len: number; advice: number }
  | {
    op: "faulting";
    /** area_dst. */
    dst: number;
    /** pages and page size. */
    n: number;
    ps: number;
    /** MREMAP_FIXED target after the first half (the kernel reuses area_src). */
    remapTo: number;
    /** madvise advice that releases the pages at the end (DONTNEED or REMOVE). */
    releaseAdvice: number;
  };

/** Replies: "tid" first for madvise, then "done". */
export type WorkerReply =
  | { type: "tid"; tid: number }
  | { type: "done"; result: number; errno: number }
  | {
    type: "faulting-done";
    errors: string[];
    remapped: number;
    placeholder: boolean;
    pagesChecked: number;
  };

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent<WorkerRequest>) => void) | null;
  postMessage(m: WorkerReply): void;
};

function touchPage(addr: number, ps: number, page: number, errors: string[]): void {
  const view = new Uint8Array(libc.view(addr, ps));
  // The first access is a read (a missing fault must not carry the WRITE flag) ...
  for (let j = 0; j < ps; j++) {
    if (view[j] !== patternByte(page, j)) {
      errors.push(`page ${page} byte ${j}: ${view[j]} != ${patternByte(page, j)}`);
      break;
    }
  }
  // ... then write the same value back to trigger write protection, if any. Atomics, because
  // an optimizing JIT may drop a plain `view[0] = view[0]` (Bun's FTL does, after a long loop).
  Atomics.store(view, 0, Atomics.load(view, 0));
}

scope.onmessage = (e: MessageEvent<WorkerRequest>) => {
  const req = e.data;
  if (req.op === "madvise") {
    scope.postMessage({ type: "tid", tid: libc.syscall(SYS_gettid) });
    const result = libc.madvise(req.addr, req.len, req.advice);
    scope.postMessage({ type: "done", result, errno: result < 0 ? libc.errno() : 0 });
    return;
  }
  // faulting_process(0) of uffd-unit-tests.c
  const { n, ps } = req;
  const errors: string[] = [];
  const split = Math.floor((n + 1) / 2);
  let nr = 0;
  for (; nr < split; nr++) touchPage(req.dst + nr * ps, ps, nr, errors);
  const moved = libc.mremap(req.dst, n * ps, n * ps, MREMAP_MAYMOVE | MREMAP_FIXED, req.remapTo);
  if (moved !== req.remapTo) {
    errors.push(`mremap returned ${moved} (errno ${libc.errno()})`);
    scope.postMessage({
      type: "faulting-done",
      errors,
      remapped: moved,
      placeholder: false,
      pagesChecked: 0,
    });
    return;
  }
  // Keep the old range mapped so the test's Mapping never unmaps someone else's memory there.
  const ph = libc.mmap(req.dst, n * ps, 0, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  for (; nr < n; nr++) touchPage(moved + nr * ps, ps, nr, errors);
  if (libc.madvise(moved, n * ps, req.releaseAdvice) !== 0) errors.push(`release: errno ${libc.errno()}`);
  const all = new Uint8Array(libc.view(moved, n * ps));
  let checked = 0;
  for (let p = 0; p < n; p++) {
    const base = p * ps;
    for (let j = 0; j < ps; j++) {
      if (all[base + j] !== 0) {
        errors.push(`page ${p} offset ${j} is not zero after release`);
        break;
      }
    }
    checked++;
  }
  scope.postMessage({
    type: "faulting-done",
    errors,
    remapped: moved,
    placeholder: ph === req.dst,
    pagesChecked: checked,
  });
};
