// A Worker for the kernel-selftest ports: it plays the kernel test's faulting side (the main
// thread of uffd-unit-tests.c, or its forked faulting_process()) while the test's main thread is
// the kernel's uffd_poll_thread and resolves the faults. It touches registered memory, which the
// test's own thread never does: madvise that blocks on a REMOVE event, faulting_process(0) of the
// events test, check_memory_contents() of the minor tests, the move tests' loop, and page checks.
import { libc } from "../../ffi/mod.ts";
import { findByteMismatch, findPatternMismatch } from "./selftest_common.ts";

const SYS_gettid = 186;
const MREMAP_MAYMOVE = 1;
const MREMAP_FIXED = 2;
const MAP_PRIVATE = 0x02;
const MAP_FIXED_NOREPLACE = 0x100000;
const MAP_ANONYMOUS = 0x20;

/** What every byte of page i must hold, for the "check" request. */
export type Expect =
  /** The pattern of page `i + offset` (selftest_common.ts patternByte). */
  | { kind: "pattern"; offset: number }
  /** uffd-unit-tests.c check_memory_contents(): ~(i % 255), the minor handler's bit flip. */
  | { kind: "minor" }
  /** All zeros. */
  | { kind: "zero" };

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
  }
  | {
    /** Reads every byte of pages [0, n) at addr, page by page, in order; each first touch may fault. */
    op: "check";
    addr: number;
    n: number;
    ps: number;
    expect: Expect;
  }
  | {
    /**
     * uffd_move_test_common()'s loop over `steps` chunks of `stepPages` pages: the source chunk
     * holds its pattern (page `srcOffs + nr`), reading the destination chunk (a fault the test
     * resolves with one UFFDIO_MOVE) shows that pattern, and the source chunk is empty after.
     */
    op: "move";
    src: number;
    dst: number;
    ps: number;
    stepPages: number;
    steps: number;
    srcOffs: number;
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
  }
  | { type: "checked"; errors: string[]; pages: number };

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent<WorkerEnvelope>) => void) | null;
  postMessage(m: WorkerReply): void;
};

function pageView(addr: number, ps: number): Uint8Array {
  return new Uint8Array(libc.view(addr, ps));
}

function touchPage(addr: number, ps: number, page: number, errors: string[]): void {
  const view = pageView(addr, ps);
  // The first access is a read (a missing fault must not carry the WRITE flag) ...
  const j = findPatternMismatch(view, 0, ps, page);
  if (j >= 0) errors.push(`page ${page} byte ${j}: ${view[j]}`);
  // ... then write the same value back to trigger write protection, if any. Atomics, because
  // an optimizing JIT may drop a plain `view[0] = view[0]` (Bun's FTL does, after a long loop).
  Atomics.store(view, 0, Atomics.load(view, 0));
}

/** Offset of the first byte of the page at `addr` that is not as `expect` says for page `i`, or -1. */
function mismatch(addr: number, ps: number, i: number, expect: Expect): number {
  const view = pageView(addr, ps);
  if (expect.kind === "pattern") return findPatternMismatch(view, 0, ps, i + expect.offset);
  if (expect.kind === "zero") return findByteMismatch(view, 0, ps, 0);
  return findByteMismatch(view, 0, ps, ~(i % 255) & 0xff);
}

function faulting(req: WorkerRequest & { op: "faulting" }): WorkerReply {
  // faulting_process(0) of uffd-unit-tests.c
  const { n, ps } = req;
  const errors: string[] = [];
  const split = Math.floor((n + 1) / 2);
  let nr = 0;
  for (; nr < split; nr++) touchPage(req.dst + nr * ps, ps, nr, errors);
  const moved = libc.mremap(req.dst, n * ps, n * ps, MREMAP_MAYMOVE | MREMAP_FIXED, req.remapTo);
  if (moved !== req.remapTo) {
    errors.push(`mremap returned ${moved} (errno ${libc.errno()})`);
    return { type: "faulting-done", errors, remapped: moved, placeholder: false, pagesChecked: 0 };
  }
  // Keep the old range mapped so the test's Mapping never unmaps someone else's memory there.
  const ph = libc.mmap(req.dst, n * ps, 0, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  for (; nr < n; nr++) touchPage(moved + nr * ps, ps, nr, errors);
  if (libc.madvise(moved, n * ps, req.releaseAdvice) !== 0) errors.push(`release: errno ${libc.errno()}`);
  let checked = 0;
  for (let p = 0; p < n; p++) {
    const j = mismatch(moved + p * ps, ps, p, { kind: "zero" });
    if (j >= 0 && errors.length < 10) errors.push(`page ${p} offset ${j} is not zero after release`);
    checked++;
  }
  return {
    type: "faulting-done",
    errors,
    remapped: moved,
    placeholder: ph === req.dst,
    pagesChecked: checked,
  };
}

function check(req: WorkerRequest & { op: "check" }): WorkerReply {
  const errors: string[] = [];
  for (let i = 0; i < req.n; i++) {
    const j = mismatch(req.addr + i * req.ps, req.ps, i, req.expect);
    if (j >= 0 && errors.length < 10) errors.push(`page ${i} byte ${j} is not ${req.expect.kind}`);
  }
  return { type: "checked", errors, pages: req.n };
}

function move(req: WorkerRequest & { op: "move" }): WorkerReply {
  const { ps, stepPages } = req;
  const errors: string[] = [];
  const fail = (s: string) => errors.length < 10 && errors.push(s);
  let pages = 0;
  for (let nr = 0; nr < req.steps * stepPages; nr += stepPages) {
    for (let i = 0; i < stepPages; i++) {
      const j = mismatch(req.src + (nr + i) * ps, ps, nr + i, { kind: "pattern", offset: req.srcOffs });
      if (j >= 0) fail(`nr ${nr + i} source memory invalid at byte ${j}`);
    }
    for (let i = 0; i < stepPages; i++) {
      const j = mismatch(req.dst + (nr + i) * ps, ps, nr + i, { kind: "pattern", offset: req.srcOffs });
      if (j >= 0) fail(`nr ${nr + i} memory corruption at byte ${j}`);
      pages++;
    }
    for (let i = 0; i < stepPages; i++) {
      const j = mismatch(req.src + (nr + i) * ps, ps, nr + i, { kind: "zero" });
      if (j >= 0) fail(`nr ${nr + i} move failed: source byte ${j} not empty`);
    }
  }
  return { type: "checked", errors, pages };
}

/** A request with the flag the worker raises (Atomics) once it is done, before it replies. */
export interface WorkerEnvelope {
  req: WorkerRequest;
  done: Int32Array;
}

scope.onmessage = (e: MessageEvent<WorkerEnvelope>) => {
  const { req, done } = e.data;
  const finish = (r: WorkerReply) => {
    Atomics.store(done, 0, 1);
    scope.postMessage(r);
  };
  switch (req.op) {
    case "madvise": {
      scope.postMessage({ type: "tid", tid: libc.syscall(SYS_gettid) });
      const result = libc.madvise(req.addr, req.len, req.advice);
      finish({ type: "done", result, errno: result < 0 ? libc.errno() : 0 });
      return;
    }
    case "faulting":
      finish(faulting(req));
      return;
    case "check":
      finish(check(req));
      return;
    case "move":
      finish(move(req));
      return;
  }
};
