// uffd-stress.c's userfaultfd_stress() on the library's low-level API: two areas, one descriptor,
// and per bounce: register dst (+ its alias) in MISSING (+WP) mode, release dst, run the lockers,
// the fault handlers (poll or blocking read) and the background copiers, release src, stop,
// unprotect, unregister, verify every counter, swap src and dst. The threads are Workers
// (tests/helpers/stress_worker.ts) that live for every bounce.
import { availableParallelism } from "node:os";
import { Mapping, pageSize, Userfaultfd } from "../../mod.ts";
import { EventFd } from "../../src/eventfd.ts";
import { libc } from "../../ffi/mod.ts";
import { pageSizeOf, StressArea, type StressMemType } from "./stress_mem.ts";
import {
  type AdoptRange,
  type BackgroundResult,
  BOUNCE_POLL,
  BOUNCE_RACINGFAULTS,
  BOUNCE_RANDOM,
  BOUNCE_VERIFY,
  CTRL_EEXIST_TEST,
  CTRL_FINISHED,
  CTRL_WORDS,
  type HandlerResult,
  type LockerResult,
  MARK_PLACED,
  MARK_WP,
} from "./stress_worker.ts";

/** Options of {@link runUffdStress}: uffd-stress.c's `<test type> <MiB> <bounces>`. */
export interface StressOptions {
  mt: StressMemType;
  /** Bytes per area (the kernel's MiB argument). */
  bytes: number;
  bounces: number;
  /** Locking Workers (default one per CPU plus two). */
  lockers?: number;
  /** Deadline of each step of a bounce, ms (default 60000). */
  stepMs?: number;
  log?: (line: string) => void;
}

/** Totals over all bounces. */
export interface StressSummary {
  nPages: number;
  ps: number;
  bounces: number;
  wp: boolean;
  missing: number;
  wpFaults: number;
  backgroundCopies: number;
  eexist: number;
  retried: number;
  lockerIterations: number;
  ms: number;
}

const NR_fcntl = 72;
const F_GETFL = 3;
const F_SETFL = 4;
const O_NONBLOCK = 0o4000;

/** A Worker of stress_worker.ts with a request/answer call that never waits past a deadline. */
class StressWorker {
  readonly w: Worker;
  readonly name: string;
  #pending: { resolve: (v: unknown) => void; reject: (e: Error) => void } | undefined;

  constructor(name: string) {
    this.name = name;
    this.w = new Worker(new URL("./stress_worker.ts", import.meta.url), { type: "module" });
    this.w.onmessage = (e: MessageEvent) => {
      const p = this.#pending;
      this.#pending = undefined;
      if (e.data.type === "failed") p?.reject(new Error(`${name}: ${e.data.message}`));
      else p?.resolve(e.data);
    };
    this.w.onerror = (e) => {
      e.preventDefault?.();
      this.#pending?.reject(new Error(`${name} crashed: ${e.message}`));
    };
  }

  call<T>(msg: unknown, ms: number, what: string): Promise<T> {
    if (this.#pending) throw new Error(`${this.name}: a call is already in flight`);
    let timer: ReturnType<typeof setTimeout> | undefined;
    return new Promise<T>((resolve, reject) => {
      this.#pending = { resolve: resolve as (v: unknown) => void, reject };
      timer = setTimeout(() => {
        this.#pending = undefined;
        reject(new Error(`${this.name}: ${what}: no answer within ${ms} ms`));
      }, ms);
      this.w.postMessage(msg);
    }).finally(() => clearTimeout(timer));
  }

  get busy(): boolean {
    return this.#pending !== undefined;
  }

  terminate(): void {
    this.w.terminate();
  }
}

function setNonBlocking(fd: number, on: boolean): void {
  const fl = libc.syscall(NR_fcntl, fd, F_GETFL);
  if (fl < 0 || libc.syscall(NR_fcntl, fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK) < 0) {
    throw new Error(`fcntl on the userfaultfd failed: errno ${libc.errno()}`);
  }
}

function modeName(b: number): string {
  return [
    b & BOUNCE_RANDOM ? "rnd" : "",
    b & BOUNCE_RACINGFAULTS ? "racing" : "",
    b & BOUNCE_VERIFY ? "ver" : "",
    b & BOUNCE_POLL ? "poll" : "read",
  ].filter(Boolean).join(" ");
}

const sum = <T>(xs: T[], f: (x: T) => number): number => xs.reduce((s, x) => s + f(x), 0);

/** Runs the bounces; throws with the bounce and the counters that went wrong. */
export async function runUffdStress(o: StressOptions): Promise<StressSummary> {
  const t0 = Date.now();
  const ps = pageSizeOf(o.mt);
  const nCpus = Math.min(32, Math.max(1, availableParallelism()));
  const ppc = Math.floor(o.bytes / ps / nCpus);
  if (ppc === 0) throw new Error(`invalid MiB: ${o.bytes} bytes is less than a page per CPU`);
  const nPages = ppc * nCpus;
  const stepMs = o.stepMs ?? 60000;
  const probe = Userfaultfd.probe();
  const wp = probe.features.includes("PAGEFAULT_FLAG_WP") &&
    (o.mt === "anon" || probe.features.includes("WP_HUGETLBFS_SHMEM"));
  const features = o.mt === "anon" && probe.features.includes("WP_UNPOPULATED")
    ? ["WP_UNPOPULATED" as const]
    : [];
  const nLockers = o.lockers ?? nCpus + 2;

  const owned: { close(): void }[] = [];
  const workers: StressWorker[] = [];
  const stops: EventFd[] = [];
  let uffd: Userfaultfd | undefined;
  const ctrlBuf = new SharedArrayBuffer(CTRL_WORDS * 4);
  const ctrl = new Int32Array(ctrlBuf);
  let doorbell: Mapping | undefined;
  let registered: Mapping[] = [];
  try {
    let src = StressArea.alloc(o.mt, nPages, "uffd-stress-a");
    owned.push(src);
    let dst = StressArea.alloc(o.mt, nPages, "uffd-stress-b");
    owned.push(dst);
    doorbell = Mapping.anonymous(nCpus * pageSize);
    owned.push(doorbell);
    uffd = Userfaultfd.open({ features });
    for (let i = 0; i < nCpus; i++) stops.push(new EventFd());
    const verifyBuf = new SharedArrayBuffer(nPages * 4);
    const marks = new Uint8Array(new SharedArrayBuffer(nPages));
    const adopt: AdoptRange[] = [src.map, src.alias, dst.map, dst.alias, doorbell]
      .filter((m): m is Mapping => m !== undefined)
      .map((m) => ({ start: m.start, len: m.length, ps: m.pageSize }));
    const lockers = Array.from({ length: nLockers }, (_, i) => new StressWorker(`locker ${i}`));
    const handlers = Array.from({ length: nCpus }, (_, i) => new StressWorker(`handler ${i}`));
    const bgs = Array.from({ length: nCpus }, (_, i) => new StressWorker(`background ${i}`));
    workers.push(...lockers, ...handlers, ...bgs);
    const base = {
      fd: uffd.fd,
      features: uffd.featureBits,
      adopt,
      nPages,
      ps,
      ctrl: ctrlBuf,
      verify: verifyBuf,
      marks: marks.buffer,
      nLockers,
      nCpus,
    };
    await Promise.all([
      ...lockers.map((w, id) => w.call({ type: "setup", role: "locker", id, ...base }, stepMs, "setup")),
      ...handlers.map((w, id) => w.call({ type: "setup", role: "handler", id, ...base }, stepMs, "setup")),
      ...bgs.map((w, id) => w.call({ type: "setup", role: "background", id, ...base }, stepMs, "setup")),
    ]);
    await lockers[0].call({ type: "init", area: src.start }, stepMs, "init");
    dst.release();

    const total: StressSummary = {
      nPages,
      ps,
      bounces: o.bounces,
      wp,
      missing: 0,
      wpFaults: 0,
      backgroundCopies: 0,
      eexist: 0,
      retried: 0,
      lockerIterations: 0,
      ms: 0,
    };
    let countTotal = nPages;
    const fdFlags = libc.syscall(NR_fcntl, uffd.fd, F_GETFL);
    for (let bounces = o.bounces; bounces-- > 0;) {
      const poll = (bounces & BOUNCE_POLL) !== 0;
      setNonBlocking(uffd.fd, poll);
      registered = [dst.map, ...(dst.alias ? [dst.alias] : [])];
      for (const m of registered) uffd.register(m, { missing: true, wp });
      if (!poll) {
        uffd.register(doorbell, { missing: true });
        registered.push(doorbell);
      }
      dst.release(); // after registering: see uffd-stress.c on the zero pages a racing COPY leaves in src
      marks.fill(0);
      Atomics.store(ctrl, CTRL_FINISHED, 0);
      Atomics.store(ctrl, CTRL_EEXIST_TEST, 1); // uffd-stress.c's SIGALRM, once per bounce
      const bounce = {
        type: "bounce",
        dst: dst.start,
        src: src.start,
        retryDst: dst.alias?.start ?? dst.start,
        wp,
        mode: bounces,
        bounces,
        doorbell: { start: doorbell.start, n: nCpus },
        seed: (bounces + 1) * 2654435761,
      };
      const hs = handlers.map((w, i) =>
        w.call<HandlerResult>({ ...bounce, stopFd: stops[i].fd }, stepMs, `bounce ${bounces}`)
      );
      const ls = lockers.map((w) => w.call<LockerResult>(bounce, stepMs, `bounce ${bounces}`));
      const bs = await Promise.all(
        bgs.map((w) => w.call<BackgroundResult>(bounce, stepMs, `bounce ${bounces}`)),
      );
      src.release(); // the whole area was transferred: zap it now, as uffd-stress.c does
      Atomics.store(ctrl, CTRL_FINISHED, 1);
      const lr = await Promise.all(ls);
      if (poll) { for (const s of stops) s.signal(); }
      else {await lockers[0].call(
          { type: "bell", doorbell: { start: doorbell.start, n: nCpus } },
          stepMs,
          "bell",
        );}
      const hr = await Promise.all(hs);
      if (wp) uffd.writeprotect({ start: dst.start, len: dst.len, wp: false });
      for (const m of registered) uffd.unregister(m);
      registered = [];
      doorbell.dontneed();
      const vr = await lockers[0].call<{ bad: string[]; total: number }>(
        { type: "verify", area: dst.start },
        stepMs,
        "verify",
      );

      const missing = sum(hr, (h) => h.missing);
      const copied = sum(bs, (b) => b.copied);
      const iterations = sum(lr, (l) => l.iterations);
      const wpFaults = sum(hr, (h) => h.wp);
      const problems = [
        ...hr.flatMap((h) => h.errors),
        ...bs.flatMap((b) => b.errors),
        ...lr.flatMap((l) => l.corrupt),
        ...vr.bad.map((s) => `verify: ${s}`),
      ];
      const check = (ok: boolean, what: string): void => void (ok || problems.push(what));
      check(
        missing + copied === nPages,
        `pages placed ${missing} by the handlers + ${copied} in the background, not ${nPages}`,
      );
      check(
        sum(hr, (h) => h.unexpectedWrite) === 0,
        `${sum(hr, (h) => h.unexpectedWrite)} missing faults with the WRITE flag`,
      );
      check(
        sum(hr, (h) => h.unexpectedEvents) === 0,
        `${sum(hr, (h) => h.unexpectedEvents)} unexpected messages`,
      );
      check(sum(hr, (h) => h.outside) === 0, `${sum(hr, (h) => h.outside)} faults outside dst`);
      check(
        vr.total === countTotal + iterations,
        `counts sum to ${vr.total}, expected ${countTotal} + ${iterations} increments`,
      );
      // A page a handler placed (COPY_MODE_WP) was faulted by a locker, whose next step writes it.
      let unprotected = 0;
      for (const m of marks) if ((m & (MARK_PLACED | MARK_WP)) === MARK_PLACED) unprotected++;
      check(
        !wp || unprotected === 0,
        `${unprotected} pages placed write-protected saw no wp fault on the write after`,
      );
      check(
        poll || sum(hr, (h) => h.doorbells) === nCpus,
        `${sum(hr, (h) => h.doorbells)} of ${nCpus} read threads ended`,
      );
      check(
        sum(bs, (b) => b.retryEexist) === sum(bs, (b) => b.retried),
        "an EEXIST retry did not get EEXIST",
      );
      if (problems.length > 0) {
        throw new Error(`${o.mt} bounce ${bounces} (${modeName(bounces)}): ${problems.join("; ")}`);
      }
      countTotal = vr.total;
      total.missing += missing;
      total.wpFaults += wpFaults;
      total.backgroundCopies += copied;
      total.eexist += sum(hr, (h) => h.eexist) + sum(bs, (b) => b.eexist);
      total.retried += sum(bs, (b) => b.retried);
      total.lockerIterations += iterations;
      o.log?.(
        `bounces: ${bounces}, mode: ${modeName(bounces)}, userfaults: ${missing} missing (${
          hr.map((h) => h.missing).join("+")
        }) ${wpFaults} wp (${
          hr.map((h) => h.wp).join("+")
        }), ${copied} background copies, ${iterations} locks`,
      );
      [src, dst] = [dst, src];
    }
    libc.syscall(NR_fcntl, uffd.fd, F_SETFL, fdFlags);
    total.ms = Date.now() - t0;
    return total;
  } finally {
    // Never leave a thread behind: wake every handler (stop eventfd; a read() blocked on a blocking
    // descriptor only returns with a message: ring the doorbells from a new Worker), then close.
    Atomics.store(ctrl, CTRL_FINISHED, 1);
    for (const s of stops) s.signal();
    const blocked = workers.filter((w) => w.busy && w.name.startsWith("handler")).length;
    if (uffd && !uffd.closed && doorbell && blocked > 0) {
      const ringer = new StressWorker("ringer");
      try {
        if (!registered.includes(doorbell)) {
          doorbell.dontneed();
          uffd.register(doorbell, { missing: true });
          registered.push(doorbell);
        }
        await ringer.call({ type: "bell", doorbell: { start: doorbell.start, n: nCpus } }, 5000, "bell");
      } catch { /* the handlers were polling, or the descriptor is gone */ }
      ringer.terminate();
    }
    if (uffd && !uffd.closed) {
      try {
        for (const m of registered) uffd.unregister(m); // wakes lockers blocked on a fault
      } catch { /* closing below wakes them too */ }
      uffd.close();
    }
    for (const w of workers) w.terminate();
    for (const s of stops) s.close();
    for (const m of owned.reverse()) m.close();
  }
}

/** Totals of {@link runServerStress}. */
export interface ServerStressSummary {
  nPages: number;
  ps: number;
  bounces: number;
  serverPages: number;
  faults: number;
  eexist: number;
  backgroundCopies: number;
  lockerIterations: number;
  ms: number;
}

/**
 * The same bounce with a FaultServer as the handler: each bounce a new server over the caller's
 * dst mapping (anonymous or hugetlb), served from a shared buffer holding the last bounce's pages,
 * while the lockers take their locks in it and a background Worker copies every page through the
 * server's own descriptor (the server's copies then meet EEXIST, the background's too). After the
 * server's close() no page may be poisoned or lost and every counter must match; the pages are
 * copied back into the buffer as the next bounce's source.
 */
export async function runServerStress(o: StressOptions): Promise<ServerStressSummary> {
  const { FaultServer } = await import("../../mod.ts");
  const { alignedSharedBytes } = await import("../../mod.ts");
  const t0 = Date.now();
  const ps = pageSizeOf(o.mt);
  const nCpus = Math.min(32, Math.max(1, availableParallelism()));
  const ppc = Math.floor(o.bytes / ps / nCpus);
  if (ppc === 0) throw new Error(`invalid MiB: ${o.bytes} bytes is less than a page per CPU`);
  const nPages = ppc * nCpus;
  const stepMs = o.stepMs ?? 60000;
  const nLockers = o.lockers ?? nCpus + 2;
  const ctrlBuf = new SharedArrayBuffer(CTRL_WORDS * 4);
  const ctrl = new Int32Array(ctrlBuf);
  const workers: StressWorker[] = [];
  let dst: StressArea | undefined;
  let server: InstanceType<typeof FaultServer> | undefined;
  try {
    dst = StressArea.alloc(o.mt, nPages, "uffd-stress-server");
    const src = alignedSharedBytes(nPages * ps, ps);
    const srcAddr = libc.addressOf(src);
    const adopt: AdoptRange[] = [
      { start: dst.start, len: dst.len, ps },
      { start: srcAddr, len: src.byteLength, ps },
    ];
    const lockers = Array.from({ length: nLockers }, (_, i) => new StressWorker(`locker ${i}`));
    const bgs = Array.from({ length: nCpus }, (_, i) => new StressWorker(`background ${i}`));
    workers.push(...lockers, ...bgs);
    const verifyBuf = new SharedArrayBuffer(nPages * 4);
    const base = {
      fd: -1,
      features: 0,
      adopt,
      nPages,
      ps,
      ctrl: ctrlBuf,
      verify: verifyBuf,
      nLockers,
      nCpus,
    };
    await Promise.all([
      ...lockers.map((w, id) => w.call({ type: "setup", role: "locker", id, ...base }, stepMs, "setup")),
      ...bgs.map((w, id) => w.call({ type: "setup", role: "background", id, ...base }, stepMs, "setup")),
    ]);
    await lockers[0].call({ type: "init", area: srcAddr }, stepMs, "init");
    const total: ServerStressSummary = {
      nPages,
      ps,
      bounces: o.bounces,
      serverPages: 0,
      faults: 0,
      eexist: 0,
      backgroundCopies: 0,
      lockerIterations: 0,
      ms: 0,
    };
    let countTotal = nPages;
    const readaheads = [1, 4, "adaptive"] as const;
    for (let bounces = o.bounces; bounces-- > 0;) {
      dst.release();
      const readahead = readaheads[bounces % 3];
      server = await FaultServer.start({ source: { kind: "bytes", data: src }, mapping: dst.map, readahead });
      Atomics.store(ctrl, CTRL_FINISHED, 0);
      Atomics.store(ctrl, CTRL_EEXIST_TEST, 1);
      const bounce = {
        type: "bounce",
        dst: dst.start,
        src: srcAddr,
        retryDst: dst.start,
        wp: false,
        mode: bounces & ~BOUNCE_POLL,
        bounces,
        doorbell: { start: 0, n: 0 },
        seed: (bounces + 1) * 2654435761,
        fd: server.uffd.fd,
      };
      const ls = lockers.map((w) => w.call<LockerResult>(bounce, stepMs, `bounce ${bounces}`));
      const bs = await Promise.all(
        bgs.map((w) => w.call<BackgroundResult>(bounce, stepMs, `bounce ${bounces}`)),
      );
      Atomics.store(ctrl, CTRL_FINISHED, 1);
      const lr = await Promise.all(ls);
      server.close();
      const st = server.stats;
      server = undefined;
      const vr = await lockers[0].call<{ bad: string[]; total: number }>(
        { type: "verify", area: dst.start },
        stepMs,
        "verify",
      );
      const copied = sum(bs, (b) => b.copied);
      const iterations = sum(lr, (l) => l.iterations);
      const problems = [
        ...bs.flatMap((b) => b.errors),
        ...lr.flatMap((l) => l.corrupt),
        ...vr.bad.map((s) => `verify: ${s}`),
      ];
      const check = (ok: boolean, what: string): void => void (ok || problems.push(what));
      check(
        st.pages + copied === nPages,
        `pages placed ${st.pages} by the server + ${copied} in the background, not ${nPages}`,
      );
      check(
        st.errors === 0 && st.poisoned === 0 && st.zeroed === 0 && st.unserved === 0,
        `server errors ${st.errors}, poisoned ${st.poisoned}, zeroed ${st.zeroed}, unserved ${st.unserved}`,
      );
      check(st.outside === 0, `${st.outside} faults outside the served range`);
      check(
        vr.total === countTotal + iterations,
        `counts sum to ${vr.total}, expected ${countTotal} + ${iterations}`,
      );
      check(
        sum(bs, (b) => b.retryEexist) === sum(bs, (b) => b.retried),
        "an EEXIST retry did not get EEXIST",
      );
      if (problems.length > 0) {
        throw new Error(
          `${o.mt} FaultServer bounce ${bounces} (readahead ${readahead}): ${problems.join("; ")}`,
        );
      }
      countTotal = vr.total;
      total.serverPages += st.pages;
      total.faults += st.faults;
      total.eexist += st.eexist + sum(bs, (b) => b.eexist);
      total.backgroundCopies += copied;
      total.lockerIterations += iterations;
      o.log?.(
        `bounces: ${bounces}, readahead ${readahead}, server: ${st.faults} faults ${st.pages} pages ${st.eexist} eexist, ` +
          `${copied} background copies, ${iterations} locks`,
      );
      // swap: this bounce's pages are the next one's source
      await lockers[0].call({ type: "memcpy", to: srcAddr, from: dst.start, len: dst.len }, stepMs, "memcpy");
    }
    total.ms = Date.now() - t0;
    return total;
  } finally {
    Atomics.store(ctrl, CTRL_FINISHED, 1);
    server?.close();
    for (const w of workers) w.terminate();
    dst?.close();
  }
}
