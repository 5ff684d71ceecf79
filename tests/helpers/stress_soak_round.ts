// One round of the FaultServer soak, in its own process (a poisoned page ends it by SIGBUS):
//   stress_soak_round.ts <seed> <passes> <poison: 0|1>
// Three servers on three descriptors at once, each over a caller-owned mapping, two faulter Workers
// each: A serves a shared buffer and is closed at a random moment of a random pass (onClose "zero")
// and started again; B serves the failing module source (throws, a thread that dies, pages that
// always fail); C serves a buffer and is moved by mremap between passes. madvise(DONTNEED) races the
// faulters on A and B (onRemove "source"); after each pass every mapping is dropped, so every pass
// faults every page again. Progress lines go straight to stdout (PASS ...); the round ends with
// ROUND {json} (every server closed, no descriptor, thread or registration left), or, with
// poison 1, by touching a page of B that always fails after POISON-TOUCH: SIGBUS by policy.
import process from "node:process";
import { alignedSharedBytes, FaultServer, Mapping, pageSize } from "../../mod.ts";
import { readTextFile } from "../../src/memory.ts";
import { mm } from "../../src/abi.ts";
import { libc } from "../../ffi/mod.ts";
import { fillPage, PLAN_ALWAYS, PLAN_KILL_ONCE, PLAN_THROW_ONCE } from "./stress_soak_source.ts";

const [seedArg, passesArg, poisonArg] = process.argv.slice(2);
let rngState = (Number(seedArg) | 0) || 1;
function rng(): number {
  rngState ^= rngState << 13;
  rngState ^= rngState >>> 17;
  rngState ^= rngState << 5;
  return (rngState >>> 0) / 4294967296;
}
const passes = Number(passesArg) || 4;
const poisonEnding = poisonArg === "1";
const PAGES = { A: 2048, B: 1024, C: 2048 };
const SALT = { A: 11, B: 22, C: 33 };

function out(line: string): void {
  const b = new TextEncoder().encode(line + "\n");
  libc.write(1, b, b.length);
}

function threads(): number {
  return Number(readTextFile("/proc/self/status")?.match(/^Threads:\s+(\d+)/m)?.[1] ?? -1);
}

/**
 * The names (comm) of this process's threads, sorted: which kind of thread is left, if one is.
 * Undefined where the directory cannot be listed (Deno's node:fs wants --allow-all for /proc).
 */
async function threadNames(): Promise<string[] | undefined> {
  try {
    const { readdirSync } = await import("node:fs");
    return readdirSync("/proc/self/task").map((t) => readTextFile(`/proc/self/task/${t}/comm`)?.trim() ?? "?")
      .sort();
  } catch {
    return undefined;
  }
}

function openFds(): number {
  let n = 0;
  for (let fd = 0; fd < 4096; fd++) if (libc.syscall(72, fd, 1 /* F_GETFD */) >= 0) n++;
  return n;
}

/** Open descriptors the library makes and the runtime never does: userfaultfds, memfds, pagemap. */
function libraryFds(): string[] {
  const out: string[] = [];
  const target = new Uint8Array(256);
  for (let fd = 0; fd < 4096; fd++) {
    if (libc.syscall(72, fd, 1) < 0) continue;
    const path = new TextEncoder().encode(`/proc/self/fd/${fd}\0`);
    const n = libc.syscall(89, /* readlink */ libc.addressOf(path), libc.addressOf(target), target.length);
    const t = n > 0 ? new TextDecoder().decode(target.subarray(0, n)) : "";
    if (/userfaultfd|^\/memfd:|pagemap/.test(t)) out.push(`${fd} -> ${t}`);
  }
  return out;
}

/** VMAs still registered with a userfaultfd (VmFlags um/uw/ui in smaps). */
function uffdVmas(): number {
  const smaps = readTextFile("/proc/self/smaps") ?? "";
  return (smaps.match(/^VmFlags:.*\b(um|uw|ui)\b/gm) ?? []).length;
}

function patternBytes(salt: number, pages: number): Uint8Array {
  const b = alignedSharedBytes(pages * pageSize);
  const w = new Uint32Array(b.buffer, b.byteOffset, b.length / 4);
  for (let p = 0; p < pages; p++) fillPage(w, p * 1024, salt, p);
  return b;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function call<T>(w: Worker, msg: unknown, ms: number): Promise<T> {
  let t: ReturnType<typeof setTimeout> | undefined;
  return new Promise<T>((resolve, reject) => {
    w.onmessage = (e) => resolve(e.data);
    w.onerror = (e) => reject(new Error(`faulter: ${e.message}`));
    t = setTimeout(() => reject(new Error(`faulter: no answer within ${ms} ms`)), ms);
    w.postMessage(msg);
  }).finally(() => clearTimeout(t));
}

// The baseline after a warm-up (a server and a Worker started and ended): the runtime keeps some
// threads and descriptors of its own once it has run a Worker.
for (let i = 0; i < 2; i++) {
  const w = new Worker(new URL("./stress_soak_faulter.ts", import.meta.url), { type: "module" });
  using m = Mapping.anonymous(pageSize);
  const s = await FaultServer.start({ source: { kind: "zero", length: pageSize }, mapping: m });
  s.close();
  await s.exited;
  w.terminate();
  await sleep(100);
}
const baseThreads = threads();
const baseNames = await threadNames();
const baseFds = openFds();
if (libraryFds().length > 0) throw new Error(`library descriptors open before the round: ${libraryFds()}`);
const t0 = Date.now();
const totals = {
  faults: 0,
  pages: 0,
  removed: 0,
  retries: 0,
  takeovers: 0,
  poisoned: 0,
  eagain: 0,
  eexist: 0,
  touched: 0,
  late: 0,
  closes: 0,
  remaps: 0,
  madvises: 0,
  throwsPlanned: 0,
  kills: 0,
  errors: [] as string[],
};

const dataA = patternBytes(SALT.A, PAGES.A);
const dataC = patternBytes(SALT.C, PAGES.C);
const mA = Mapping.anonymous(PAGES.A * pageSize);
const mB = Mapping.anonymous(PAGES.B * pageSize);
let mC = Mapping.anonymous(PAGES.C * pageSize);
const plan = new Uint8Array(new SharedArrayBuffer(PAGES.B));
for (let p = 0; p < PAGES.B; p++) {
  const r = rng();
  if (r < 0.02) plan[p] = PLAN_THROW_ONCE;
  else if (r < 0.025) plan[p] = PLAN_ALWAYS;
}
if (rng() < 0.5) plan[Math.floor(rng() * PAGES.B)] = PLAN_KILL_ONCE; // one thread death in half the rounds
totals.throwsPlanned = plan.filter((x) => x === PLAN_THROW_ONCE).length;
const skipB = new Uint8Array(new SharedArrayBuffer(PAGES.B));
for (let p = 0; p < PAGES.B; p++) skipB[p] = plan[p] === PLAN_ALWAYS ? 1 : 0;
const noSkip = new Uint8Array(new SharedArrayBuffer(Math.max(PAGES.A, PAGES.C)));
const calls = new Int32Array(new SharedArrayBuffer(PAGES.B * 4));
const killed = new Int32Array(new SharedArrayBuffer(PAGES.B * 4));
const closedA = new Int32Array(new SharedArrayBuffer(4));
const never = new Int32Array(new SharedArrayBuffer(4));

const startA = (): Promise<FaultServer> =>
  FaultServer.start({
    source: { kind: "bytes", data: dataA },
    mapping: mA,
    readahead: ([1, 4, "adaptive"] as const)[Math.floor(rng() * 3)],
    onRemove: "source",
    onClose: "zero",
  });
const sB = await FaultServer.start({
  source: {
    kind: "module",
    url: new URL("./stress_soak_source.ts", import.meta.url).href,
    length: PAGES.B * pageSize,
    options: { salt: SALT.B, plan, calls, killed },
  },
  mapping: mB,
  onRemove: "source",
  onError: { retries: 2, then: "poison" },
});
let sA = await startA();
const sC = await FaultServer.start({
  source: { kind: "bytes", data: dataC },
  mapping: mC,
  readahead: rng() < 0.5 ? 1 : "adaptive",
  onRemove: "source",
});
const racer = new Worker(new URL("./stress_soak_racer.ts", import.meta.url), { type: "module" });
const faulters = Array.from(
  { length: 6 },
  () => new Worker(new URL("./stress_soak_faulter.ts", import.meta.url), { type: "module" }),
);
const add = (s: FaultServer): void => {
  const st = s.stats;
  totals.faults += st.faults;
  totals.pages += st.pages;
  totals.removed += st.removed;
  totals.retries += st.retries;
  totals.takeovers += st.takeovers;
  totals.poisoned += st.poisoned;
  totals.eagain += st.eagain;
  totals.eexist += st.eexist;
  if (st.outside + st.unserved > 0) totals.errors.push(`outside ${st.outside}, unserved ${st.unserved}`);
};

if (process.env.UFFD_SOAK_DEBUG) {
  out(`START kill ${plan.indexOf(PLAN_KILL_ONCE)} always ${plan.filter((x) => x === PLAN_ALWAYS).length}`);
}
if (process.env.UFFD_SOAK_DEBUG) {
  let last = "";
  setInterval(() => {
    const e = `${sB.lastError} ${
      JSON.stringify({ p: sB.stats.poisoned, t: sB.stats.takeovers, r: sB.stats.retries })
    }`;
    if (e !== last) out(`B: ${(last = e)}`);
  }, 1).unref?.();
}
const closePass = Math.floor(rng() * passes);
for (let pass = 0; pass < passes; pass++) {
  calls.fill(0);
  const jobs = (
    addr: number,
    pages: number,
    salt: number,
    skip: Uint8Array,
    stop: boolean,
    closed: Int32Array,
  ) =>
    [0, 1].map((h) => ({
      addr,
      first: h * (pages / 2),
      count: pages / 2,
      salt,
      skip: skip.buffer,
      closed: closed.buffer,
      stop,
      seed: Math.floor(rng() * 2 ** 31),
    }));
  const work = [
    ...jobs(sA.address, PAGES.A, SALT.A, noSkip, true, closedA),
    ...jobs(sB.address, PAGES.B, SALT.B, skipB, false, never),
    ...jobs(sC.address, PAGES.C, SALT.C, noSkip, false, never),
  ];
  const results = Promise.all(
    work.map((j, i) =>
      call<{ touched: number; bad: number; late: number; badInfo: string[] }>(
        faulters[i],
        j,
        Number(process.env.UFFD_SOAK_PASS_MS) || 120000,
      )
    ),
  );
  // madvise(DONTNEED) racing the faulters (onRemove "source": the pages come back from the source)
  const stopRacer = new Int32Array(new SharedArrayBuffer(4));
  const racing = call<{ madvises: number }>(racer, {
    ranges: [{ start: mA.start, pages: PAGES.A, closed: closedA.buffer }, {
      start: mB.start,
      pages: PAGES.B,
    }],
    stop: stopRacer.buffer,
    seed: Math.floor(rng() * 2 ** 31),
  }, 180000);
  let closing: Promise<void> | undefined;
  if (pass === closePass) {
    closing = (async () => {
      await sleep(rng() * 30);
      Atomics.store(closedA, 0, 1); // the faulters of A stop: a page read after this may be zeros
      sA.close();
      add(sA);
      totals.closes++;
    })();
  }
  const r = await results.finally(() => {
    Atomics.store(stopRacer, 0, 1);
    Atomics.notify(stopRacer, 0);
  }).catch((e) => {
    for (const [name, sv] of [["A", sA], ["B", sB], ["C", sC]] as const) {
      out(`STUCK ${name} ${sv.state} ${JSON.stringify(sv.stats)} lastError ${sv.lastError}`);
    }
    throw e;
  });
  totals.madvises += (await racing).madvises;
  await closing;
  for (const [i, x] of r.entries()) {
    totals.touched += x.touched;
    totals.late += x.late;
    if (x.bad > 0) {
      totals.errors.push(`pass ${pass} faulter ${i}: ${x.bad} bad pages: ${x.badInfo.join("; ")}`);
    }
    if (x.late > 0 && i >= 2) {
      totals.errors.push(`pass ${pass} faulter ${i}: ${x.late} zero pages on a server never closed`);
    }
  }
  if (Atomics.load(closedA, 0) !== 0) {
    await sA.exited;
    mA.dontneed();
    Atomics.store(closedA, 0, 0);
    sA = await startA(); // a new server and descriptor over the same memory
  }
  const live = [sA, sB, sC].reduce((n, s) => n + s.stats.faults, 0);
  out(
    `PASS ${pass} ${
      JSON.stringify({ faults: totals.faults + live, errors: totals.errors.length, ms: Date.now() - t0 })
    }`,
  );
  if (totals.errors.length > 0 || pass === passes - 1) break;
  // drop everything: the next pass faults every page again
  mA.dontneed();
  mB.dontneed();
  mC.dontneed();
  // mremap C somewhere else (the server follows the REMAP event)
  const to = libc.mmap(0, PAGES.C * pageSize, mm.PROT_NONE, mm.MAP_PRIVATE | mm.MAP_ANONYMOUS, -1, 0);
  mC = mC.remap(PAGES.C * pageSize, { to });
  totals.remaps++;
  for (const end = Date.now() + 5000; sC.address !== mC.start;) {
    if (Date.now() > end) {
      totals.errors.push(`pass ${pass}: the server did not follow the mremap`);
      break;
    }
    await sleep(1);
  }
}

totals.kills = killed.reduce((n, k) => n + k, 0);
if (poisonEnding && totals.errors.length === 0) {
  const p = plan.indexOf(PLAN_ALWAYS);
  if (p >= 0) {
    const w = faulters[0];
    await call(w, { type: "poison", addr: sB.address + p * pageSize, what: `B page ${p}` }, 10000).catch(
      () => {},
    );
    out("POISON-SURVIVED");
    process.exit(3);
  }
}
// Nothing was poisoned while serving (a page that always fails is never touched): only close()
// poisons, by policy, the pages never placed (B's pages that always fail).
const poisonedServing = sB.stats.poisoned + sC.stats.poisoned;
if (poisonedServing !== 0) totals.errors.push(`${poisonedServing} pages poisoned while serving`);
sA.close();
sB.close();
sC.close();
for (const s of [sA, sB, sC]) add(s);
await Promise.all([sA.exited, sB.exited, sC.exited]);
for (const w of faulters) w.terminate();
racer.terminate();
mA.close();
mB.close();
mC.close();
if (totals.takeovers < totals.kills) {
  totals.errors.push(`${totals.kills} thread deaths, ${totals.takeovers} takeovers`);
}
const always = plan.filter((x) => x === PLAN_ALWAYS).length;
if (totals.poisoned < always) {
  totals.errors.push(`close() poisoned ${totals.poisoned} pages, but ${always} pages always failed`);
}
// Leaks: every thread, descriptor and registration gone (threads end asynchronously: wait for them).
// (The runtime's own descriptors, pools that grow with the threads it has run, are only reported.)
let leaks = { threads: 0, libraryFds: [] as string[], uffdVmas: 0, otherFds: 0 };
// A Worker that ended by process.exit() (the thread deaths) is an OS thread until the runtime
// collects its Worker object: after 5 s a garbage collection is asked for, where the runtime
// offers one (Bun.gc; gc() under --expose-gc), and the threads get 30 s in all on a loaded machine.
const gc = (globalThis as { Bun?: { gc(force: boolean): void } }).Bun?.gc ??
  (globalThis as { gc?: () => void }).gc;
let collected = false;
const t1 = Date.now();
for (const end = t1 + 30000;;) {
  if (!collected && Date.now() - t1 > 5000) {
    collected = true;
    gc?.(true);
  }
  leaks = {
    threads: threads() - baseThreads,
    libraryFds: libraryFds(),
    uffdVmas: uffdVmas(),
    otherFds: openFds() - baseFds,
  };
  if ((leaks.threads <= 0 && leaks.libraryFds.length === 0 && leaks.uffdVmas === 0) || Date.now() > end) {
    break;
  }
  await sleep(50);
}
const leaked = Math.max(0, leaks.threads) + leaks.libraryFds.length + leaks.uffdVmas;
if (leaks.threads > 0) {
  // Name the threads that are new since the start (the runtime's own pools, or a server's Worker).
  const now = await threadNames();
  out(`THREADS-NOW ${threads() - baseThreads} more than at the start`);
  for (const n of baseNames ?? []) {
    const i = now?.indexOf(n) ?? -1;
    if (i >= 0) now!.splice(i, 1);
  }
  out(`THREADS-LEFT ${now && baseNames ? JSON.stringify(now) : "(names not readable here)"}`);
}
if (leaked > 0 && process.env.UFFD_SOAK_DEBUG) {
  const { readdirSync, readlinkSync } = await import("node:fs");
  for (const f of readdirSync("/proc/self/fd")) {
    try {
      out(`fd ${f} -> ${readlinkSync(`/proc/self/fd/${f}`)}`);
    } catch { /* gone */ }
  }
}
out(`ROUND ${JSON.stringify({ ...totals, always, leaks, leaked, ms: Date.now() - t0 })}`);
process.exit(totals.errors.length === 0 && leaked === 0 ? 0 : 1);
