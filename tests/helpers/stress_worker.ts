// The threads of the kernel's uffd-stress.c as one Worker module with three roles:
// - "locker" (locking_thread): takes a per-page lock that lives in the faulting memory and
//   increments a per-page counter there, checked against count_verify (COPY atomicity);
// - "handler" (uffd_poll_thread / uffd_read_thread): resolves the faults with the library's
//   low-level API, polling a non-blocking descriptor with a stop eventfd, or blocking in read();
// - "background" (background_thread): copies its slice of the area while the faults are served
//   (EEXIST + WAKE when a handler got there first) and write-protects the slice half-way.
// The Workers live for all the bounces; each bounce is one message per Worker and one answer.
import { EventBuffer, Mapping, UffdError, Userfaultfd } from "../../mod.ts";
import {
  UFFD_EVENT,
  UFFD_PAGEFAULT_FLAG_MINOR,
  UFFD_PAGEFAULT_FLAG_WP,
  UFFD_PAGEFAULT_FLAG_WRITE,
} from "../../src/abi.ts";
import { libc } from "../../ffi/mod.ts";

/** Word offsets inside each page (Int32): lock, count, the non-zero placeholder, the page's tag. */
export const LOCK = 0;
export const COUNT = 2;
export const PLACEHOLDER = 3;
export const TAG = 4;
/** The tag of page `p` (stays with the page's bytes through every bounce). */
export const tagOf = (p: number): number => (p ^ 0x5a5a0000) | 0;

/** Shared control words (Int32Array over a SharedArrayBuffer). */
export const CTRL_FINISHED = 0;
export const CTRL_EEXIST_TEST = 1;
export const CTRL_SLEEP = 2;
export const CTRL_WORDS = 4;

/** Marks of a page in one bounce (see {@link Setup.marks}). */
export const MARK_PLACED = 1;
export const MARK_WP = 2;

/** uffd-stress.c's bounce mode bits. */
export const BOUNCE_RANDOM = 1;
export const BOUNCE_RACINGFAULTS = 2;
export const BOUNCE_VERIFY = 4;
export const BOUNCE_POLL = 8;

/** A range to declare with Mapping.adopt in the Worker. */
export interface AdoptRange {
  start: number;
  len: number;
  ps: number;
}

/** The setup message. */
export interface Setup {
  type: "setup";
  role: "locker" | "handler" | "background";
  id: number;
  fd: number;
  features: number;
  adopt: AdoptRange[];
  nPages: number;
  ps: number;
  ctrl: SharedArrayBuffer;
  verify: SharedArrayBuffer;
  /** Per page: MARK_PLACED when a handler's COPY placed it, MARK_WP when a wp fault on it was served. */
  marks: SharedArrayBuffer;
  nLockers: number;
  nCpus: number;
}

/** One bounce. */
export interface Bounce {
  type: "bounce";
  dst: number;
  src: number;
  /** Where the EEXIST retry copies: the dst alias for shared memory, dst itself otherwise. */
  retryDst: number;
  wp: boolean;
  mode: number;
  bounces: number;
  stopFd: number;
  doorbell: { start: number; n: number };
  seed: number;
  /** The descriptor for this bounce when it is not the one of the setup (a FaultServer's, new each bounce). */
  fd?: number;
}

/** What a handler counted in one bounce. */
export interface HandlerResult {
  missing: number;
  wp: number;
  unexpectedWrite: number;
  unexpectedEvents: number;
  outside: number;
  eexist: number;
  doorbells: number;
  errors: string[];
}

/** What a background copier counted in one bounce. */
export interface BackgroundResult {
  copied: number;
  eexist: number;
  retried: number;
  retryEexist: number;
  errors: string[];
}

/** What a locker counted in one bounce. */
export interface LockerResult {
  iterations: number;
  corrupt: string[];
}

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent) => void) | null;
  postMessage(m: unknown): void;
};

let setup: Setup;
let ctrl: Int32Array;
let verify: Uint32Array;
let marks: Uint8Array;
const adopted: Mapping[] = [];

scope.onmessage = (e: MessageEvent) => {
  const m = e.data;
  try {
    switch (m.type) {
      case "setup":
        setup = m;
        ctrl = new Int32Array(m.ctrl);
        verify = new Uint32Array(m.verify);
        marks = new Uint8Array(m.marks);
        for (const a of m.adopt as AdoptRange[]) adopted.push(Mapping.adopt(a.start, a.len, a.ps));
        scope.postMessage({ type: "ready" });
        return;
      case "bounce":
        if (setup.role === "locker") scope.postMessage({ type: "done", ...locker(m) });
        else if (setup.role === "handler") scope.postMessage({ type: "done", ...handler(m) });
        else scope.postMessage({ type: "done", ...background(m) });
        return;
      case "init":
        scope.postMessage({ type: "done", ...initArea(m.area) });
        return;
      case "verify":
        scope.postMessage({ type: "done", ...verifyArea(m.area) });
        return;
      case "memcpy":
        libc.memcpy(m.to, m.from, m.len);
        scope.postMessage({ type: "done" });
        return;
      case "bell":
        scope.postMessage({ type: "done", ...bell(m.doorbell) });
        return;
    }
  } catch (err) {
    scope.postMessage({
      type: "failed",
      message: err instanceof Error ? `${err.message}\n${err.stack}` : String(err),
    });
  }
};

function pageWords(): number {
  return setup.ps / 4;
}

/** uffd_test_ctx_init: lock 0, count 1 (and count_verify 1), placeholder 1, the page's tag. */
function initArea(area: number): { pages: number } {
  const v = new Int32Array(libc.view(area, setup.nPages * setup.ps));
  const w = pageWords();
  for (let p = 0; p < setup.nPages; p++) {
    v[p * w + LOCK] = 0;
    v[p * w + COUNT] = 1;
    v[p * w + PLACEHOLDER] = 1;
    v[p * w + TAG] = tagOf(p);
    verify[p] = 1;
  }
  return { pages: setup.nPages };
}

/** The BOUNCE_VERIFY pass, on every bounce: each page's count equals count_verify, tag intact. */
function verifyArea(area: number): { bad: string[]; total: number } {
  const v = new Int32Array(libc.view(area, setup.nPages * setup.ps));
  const w = pageWords();
  const bad: string[] = [];
  let total = 0;
  for (let p = 0; p < setup.nPages; p++) {
    const count = v[p * w + COUNT] >>> 0;
    total += count;
    const problems = [];
    if (count !== verify[p]) problems.push(`count ${count}, count_verify ${verify[p]}`);
    if (v[p * w + TAG] !== tagOf(p)) problems.push(`tag 0x${(v[p * w + TAG] >>> 0).toString(16)}`);
    if (v[p * w + PLACEHOLDER] !== 1) problems.push(`placeholder ${v[p * w + PLACEHOLDER]}`);
    if (v[p * w + LOCK] !== 0) problems.push(`lock ${v[p * w + LOCK]}`);
    if (problems.length > 0 && bad.length < 8) bad.push(`page ${p}: ${problems.join(", ")}`);
  }
  return { bad, total };
}

/** locking_thread, until CTRL_FINISHED (at least one iteration). */
function locker(b: Bounce): LockerResult {
  const n = setup.nPages;
  const w = pageWords();
  const v = new Int32Array(libc.view(b.dst, n * setup.ps));
  const random = (b.mode & BOUNCE_RANDOM) !== 0;
  let page = (((-b.bounces) % n) + n) % n;
  if (!random && !(b.mode & BOUNCE_RACINGFAULTS)) {
    page = (page + setup.id * Math.floor(n / setup.nLockers)) % n;
  }
  let x = (b.seed ^ (setup.id * 0x9e3779b9)) | 1;
  const corrupt: string[] = [];
  let iterations = 0;
  do {
    if (random) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      page = (x >>> 0) % n;
    } else {
      page = (page + 1) % n;
    }
    const base = page * w;
    // pthread_mutex_lock reads the mutex first: the missing fault is a read, never a write.
    Atomics.load(v, base + LOCK);
    let spins = 0;
    while (Atomics.compareExchange(v, base + LOCK, 0, 1) !== 0) {
      if (++spins > 64) Atomics.wait(ctrl, CTRL_SLEEP, 0, 0.05); // another thread holds it (or waits on a fault)
    }
    const count = v[base + COUNT] >>> 0;
    if (count !== verify[page] && corrupt.length < 8) {
      corrupt.push(`page ${page} memory corruption ${count} ${verify[page]}`);
    }
    v[base + COUNT] = count + 1;
    verify[page] = count + 1;
    Atomics.store(v, base + LOCK, 0);
    iterations++;
  } while (Atomics.load(ctrl, CTRL_FINISHED) === 0);
  return { iterations, corrupt };
}

/** One UFFDIO_COPY of page `p` (uffd-common.c __copy_page): 1 if placed, 0 on EEXIST (then WAKE). */
class Copier {
  readonly uffd: Userfaultfd;
  readonly b: Bounce;
  readonly opts = { start: 0, len: 0, src: 0, wp: false };
  eexist = 0;
  retried = 0;
  retryEexist = 0;
  errors: string[] = [];

  constructor(uffd: Userfaultfd, b: Bounce) {
    this.uffd = uffd;
    this.b = b;
    this.opts.len = setup.ps;
    this.opts.wp = b.wp;
  }

  copy(p: number, retry: boolean): number {
    const off = p * setup.ps;
    this.opts.start = this.b.dst + off;
    this.opts.src = this.b.src + off;
    try {
      const n = this.uffd.copy(this.opts);
      if (n !== setup.ps) this.err(`UFFDIO_COPY error: ${n}`);
    } catch (e) {
      if (e instanceof UffdError && e.code === "EEXIST") {
        this.eexist++;
        this.uffd.wake({ start: this.opts.start, len: setup.ps });
      } else {
        this.err(`UFFDIO_COPY of page ${p}: ${e instanceof Error ? e.message : e}`);
      }
      return 0;
    }
    if (retry && Atomics.compareExchange(ctrl, CTRL_EEXIST_TEST, 1, 0) === 1) {
      // retry_copy_page: the same copy again (on the shared alias) must say EEXIST
      this.retried++;
      this.opts.start = this.b.retryDst + off;
      try {
        this.uffd.copy(this.opts);
        this.err(`UFFDIO_COPY retry of page ${p} unexpected: it succeeded`);
      } catch (e) {
        if (e instanceof UffdError && e.code === "EEXIST" && e.result === -17) this.retryEexist++;
        else this.err(`UFFDIO_COPY retry error: ${e instanceof Error ? e.message : e}`);
      }
    }
    return 1;
  }

  err(s: string): void {
    if (this.errors.length < 8) this.errors.push(s);
  }
}

/** background_thread: copy the first half of the slice, write-protect the slice, copy the rest. */
function background(b: Bounce): BackgroundResult {
  const uffd = Userfaultfd.fromFd(b.fd ?? setup.fd, setup.features);
  const c = new Copier(uffd, b);
  const ppc = Math.floor(setup.nPages / setup.nCpus);
  const start = setup.id * ppc;
  const end = start + ppc;
  const mid = Math.floor((start + end) / 2);
  let copied = 0;
  for (let p = start; p < mid; p++) copied += c.copy(p, true);
  if (b.wp) uffd.writeprotect({ start: b.dst + start * setup.ps, len: ppc * setup.ps, wp: true });
  for (let p = mid; p < end; p++) copied += c.copy(p, true);
  return { copied, eexist: c.eexist, retried: c.retried, retryEexist: c.retryEexist, errors: c.errors };
}

/** uffd_poll_thread (BOUNCE_POLL) or uffd_read_thread, with uffd_handle_page_fault. */
function handler(b: Bounce): HandlerResult {
  const uffd = Userfaultfd.fromFd(setup.fd, setup.features); // O_NONBLOCK as the bounce set it
  const poll = (b.mode & BOUNCE_POLL) !== 0;
  const c = new Copier(uffd, b);
  const ps = setup.ps;
  const buf = new EventBuffer(poll ? 8 : 1); // the read thread reads one message per read(), as the kernel's
  const r: HandlerResult = {
    missing: 0,
    wp: 0,
    unexpectedWrite: 0,
    unexpectedEvents: 0,
    outside: 0,
    eexist: 0,
    doorbells: 0,
    errors: c.errors,
  };
  const pfd = new Int32Array([setup.fd, 1, /* POLLIN */ b.stopFd, 1]);
  const wpOff = { start: 0, len: ps, wp: false };
  const dbEnd = b.doorbell.start + b.doorbell.n * 4096;
  const stopBuf = new BigUint64Array(1);
  for (let stop = false; !stop;) {
    if (poll) {
      pfd[1] = 1;
      pfd[3] = 1;
      const k = libc.poll(pfd, 2, -1);
      if (k < 0) {
        if (libc.errno() === 4) continue; // EINTR
        throw new Error(`poll error: errno ${libc.errno()}`);
      }
      if (pfd[3] >>> 16) {
        if (!((pfd[3] >>> 16) & 1)) throw new Error(`pollfd[1].revents ${pfd[3] >>> 16}`);
        libc.read(b.stopFd, stopBuf, 8);
        break;
      }
      if (!((pfd[1] >>> 16) & 1)) throw new Error(`pollfd[0].revents ${pfd[1] >>> 16}`);
    }
    const n = uffd.readEvents(buf); // poll: EAGAIN when another thread took it (0)
    for (let i = 0; i < n; i++) {
      if (buf.code(i) !== UFFD_EVENT.PAGEFAULT) {
        r.unexpectedEvents++;
        continue;
      }
      const addr = buf.pagefaultAddress(i);
      const flags = buf.pagefaultFlags(i);
      if (addr >= b.doorbell.start && addr < dbEnd) {
        // the end of a read-mode bounce (the kernel cancels its read threads): resolve and leave
        uffd.zeropage({ start: addr - (addr % 4096), len: 4096 });
        r.doorbells++;
        stop = true;
        continue;
      }
      if (addr < b.dst || addr >= b.dst + setup.nPages * ps) {
        r.outside++;
        continue;
      }
      const p = Math.floor((addr - b.dst) / ps);
      if (flags & UFFD_PAGEFAULT_FLAG_WP) {
        wpOff.start = b.dst + p * ps;
        uffd.writeprotect(wpOff);
        // Atomically: another handler may be marking the same page PLACED right now (the locker's
        // write can fault before the COPY's handler has marked the page; a plain |= loses a bit).
        Atomics.or(marks, p, MARK_WP);
        r.wp++;
      } else if (flags & UFFD_PAGEFAULT_FLAG_MINOR) {
        r.unexpectedEvents++;
      } else {
        if (flags & UFFD_PAGEFAULT_FLAG_WRITE) r.unexpectedWrite++;
        if (c.copy(p, false) === 1) {
          r.missing++;
          Atomics.or(marks, p, MARK_PLACED);
        }
      }
    }
  }
  r.eexist = c.eexist;
  return r;
}

/** Ends the read-mode handlers: one fault on each doorbell page, one after the other. */
function bell(d: { start: number; n: number }): { rung: number } {
  const v = new Uint8Array(libc.view(d.start, d.n * 4096));
  let sum = 0;
  for (let i = 0; i < d.n; i++) sum += v[i * 4096];
  return { rung: d.n + sum }; // zero pages: sum is 0
}
