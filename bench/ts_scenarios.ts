/**
 * The benchmark scenarios with this library, under whichever runtime runs the file:
 *
 *   deno run -A bench/ts_scenarios.ts <scenario> [pages]
 *   bun run bench/ts_scenarios.ts <scenario> [pages]
 *
 * Prints one JSON line {scenario, impl, pages, seconds, usPerPage, ...}; exits 3 when
 * the served memory does not hold the expected bytes. Uses only the library, ffi/mod.ts
 * (for views of addresses in Workers) and node: modules; never Deno.* or bun:ffi.
 * Scenario `heap` (not in the C set) drives ~1,000,000 faults through one FaultServer
 * and reports the Worker's JS heap growth.
 * @module
 */
import { spawn } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import {
  alignedSharedBytes,
  FaultServer,
  type FaultServerOptions,
  type FaultServerStats,
  Mapping,
  recvMessage,
  sendMessage,
  UnixListener,
  Userfaultfd,
  waitReadable,
} from "../mod.ts";
import { libc } from "../ffi/mod.ts";
import {
  checksum,
  cpuPerPage,
  fillPattern,
  permutation,
  PS,
  SCENARIOS,
  type ThreadTime,
  threadTimes,
  words,
} from "./common.ts";
import { DONE, GO, READY, type TouchInit, type WpInit } from "./ts_workers.ts";
import type { MinHandlerInit } from "./ts_min_handler.ts";

const CLOSE_TIMEOUT_MS = 100;
/** Warm-up: at least this many faults (same in bench/native/handler.c), in at most WARM_PASSES passes. */
const WARM_FAULTS = 65536;
const WARM_PASSES = 32;

function fail(message: string): never {
  console.error(`ts_scenarios: ${message}`);
  process.exit(3);
}

/** Blocks this thread until ctrl[i] reaches `want`. */
function waitFor(ctrl: Int32Array, i: number, want: number, timeoutMs = 120_000): void {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const v = Atomics.load(ctrl, i);
    if (v >= want) return;
    if (performance.now() > deadline) fail(`timed out waiting for ctrl[${i}] = ${want} (at ${v})`);
    Atomics.wait(ctrl, i, v, 100);
  }
}

function verify(name: string, mem: Uint8Array, expect: Uint8Array): void {
  const got = checksum(words(mem));
  const want = checksum(words(expect));
  if (got !== want) fail(`${name}: CHECKSUM MISMATCH: got ${got.toString(16)} want ${want.toString(16)}`);
}

function report(
  scenario: string,
  pages: number,
  seconds: number,
  extra: Record<string, unknown> = {},
): void {
  console.log(JSON.stringify({
    scenario,
    impl: libc.runtime,
    pages,
    seconds: Number(seconds.toFixed(6)),
    usPerPage: Number((seconds * 1e6 / pages).toFixed(4)),
    ...extra,
  }));
}

/** Counters of the timed pass (after minus before). */
function statsOf(s: FaultServerStats, before: FaultServerStats): Record<string, number> {
  return {
    faults: s.faults - before.faults,
    reads: s.reads - before.reads,
    placed: s.pages - before.pages,
    eexist: s.eexist - before.eexist,
    eagain: s.eagain - before.eagain,
    wakes: s.wakes - before.wakes,
    meanLatencyUs: Number(s.meanLatencyUs.toFixed(3)),
  };
}

function touchRead(mem: Uint8Array, from: number, to: number): number {
  let acc = 0;
  for (let p = from; p < to; p++) acc += mem[p * PS];
  return acc;
}

/** Closes the server, timing it (a slow close is a finding, not a benchmark failure). */
function closeTimed(server: FaultServer): number {
  const t0 = performance.now();
  server.close();
  return Number((performance.now() - t0).toFixed(1));
}

/** Pages touched (then dropped) before the timed pass, so the JIT runs warm code (`--warmup=N`). */
let warmup = -1;
function warmupPages(npages: number): number {
  return warmup >= 0 ? Math.min(warmup, npages) : npages;
}

/** Timer plus per-thread CPU snapshots around the timed pass. */
class Timer {
  #t0 = 0;
  #t1 = 0;
  #cpu0: { user: number; system: number } = { user: 0, system: 0 };
  #cpu: { user: number; system: number } = { user: 0, system: 0 };
  #before = new Map<number, ThreadTime>();
  #after = new Map<number, ThreadTime>();
  start(): void {
    this.#before = threadTimes();
    this.#cpu0 = process.cpuUsage();
    this.#t0 = performance.now();
  }
  stop(): void {
    this.#t1 = performance.now();
    this.#cpu = process.cpuUsage(this.#cpu0);
    this.#after = threadTimes();
  }
  /** Process CPU (all threads, getrusage) per page: total, user, system, microseconds. */
  usage(pages: number): { cpuUsPerPage: number; userUsPerPage: number; sysUsPerPage: number } {
    const r = (x: number): number => Number((x / pages).toFixed(4));
    return {
      cpuUsPerPage: r(this.#cpu.user + this.#cpu.system),
      userUsPerPage: r(this.#cpu.user),
      sysUsPerPage: r(this.#cpu.system),
    };
  }
  get seconds(): number {
    return (this.#t1 - this.#t0) / 1000;
  }
  cpu(pages: number): ReturnType<typeof cpuPerPage> {
    return cpuPerPage(this.#before, this.#after, pages);
  }
}

async function serverScenario(
  name: string,
  npages: number,
  src: Uint8Array,
  options: Omit<FaultServerOptions, "closeTimeoutMs" | "onRemove">,
  run: (server: FaultServer, timer: Timer) => Promise<void> | void,
  expect: Uint8Array = src,
): Promise<void> {
  // onRemove "source": the warm-up pages dropped with MADV_DONTNEED are served from the source again.
  const server = await FaultServer.start({
    ...options,
    onRemove: "source",
    closeTimeoutMs: CLOSE_TIMEOUT_MS,
  });
  const mem = server.bytes();
  const warm = warmupPages(npages);
  // Warm-up passes until the loop has seen WARM_FAULTS faults (readahead scenarios fault
  // once per 16-64 pages, and V8/JSC tier up after tens of thousands of calls), and at
  // least two: the first drop is the loop's first REMOVE event, which deoptimizes the
  // function that reads the messages; the second pass runs it recompiled, so that the
  // recompilation does not land in the timed pass.
  for (
    let pass = 0;
    warm > 0 && pass < WARM_PASSES && (pass < 2 || server.stats.faults < WARM_FAULTS);
    pass++
  ) {
    touchRead(mem, 0, warm);
    // Drop the warm-up pages plus what the largest readahead window (64) placed beyond them.
    server.mapping.dontneed(0, Math.min(npages, warm + 64) * PS);
  }
  const s0 = server.stats;
  const timer = new Timer();
  await run(server, timer);
  verify(name, mem, expect);
  const st = server.stats;
  if (st.pages - s0.pages !== npages) {
    fail(`${name}: placed ${st.pages - s0.pages} pages, expected ${npages}`);
  }
  if (st.errors !== 0) fail(`${name}: ${st.errors} errors: ${server.lastError}`);
  const closeMs = closeTimed(server);
  report(name, npages, timer.seconds, {
    ...statsOf(st, s0),
    warmup: warm,
    ...timer.usage(npages),
    cpu: timer.cpu(npages),
    closeMs,
    closeTimedOut: server.state !== "stopped",
  });
}

function sequential(npages: number): (server: FaultServer, timer: Timer) => void {
  return (server, timer) => {
    const mem = server.bytes();
    timer.start();
    touchRead(mem, 0, npages);
    timer.stop();
  };
}

/** Four toucher Workers over quarters of `[addr, addr + len)`, warmed up and waiting for GO. */
async function startTouchers(addr: number, len: number, npages: number): Promise<{
  ctrl: Int32Array;
  finished: Promise<unknown[]>;
  workers: Worker[];
}> {
  const ctrl = new Int32Array(new SharedArrayBuffer(16));
  const workers: Worker[] = [];
  const finished: Promise<unknown>[] = [];
  const q = npages / 4;
  for (let i = 0; i < 4; i++) {
    const w = new Worker(new URL("./ts_workers.ts", import.meta.url), { type: "module" });
    workers.push(w);
    finished.push(
      new Promise((res, rej) => {
        w.onmessage = (e: MessageEvent<{ error?: string }>) =>
          e.data.error ? rej(new Error(e.data.error)) : res(e.data);
        w.onerror = (e: ErrorEvent) => rej(new Error(e.message));
      }),
    );
    const init: TouchInit = {
      kind: "touch",
      addr,
      len,
      from: q * i,
      to: q * (i + 1),
      ctrl: ctrl.buffer as SharedArrayBuffer,
    };
    w.postMessage(init);
  }
  // Wait (asynchronously: the Workers need the event loop to start) until all are ready.
  while (Atomics.load(ctrl, READY) < 4) await new Promise((r) => setTimeout(r, 1));
  return { ctrl, finished: Promise.all(finished), workers };
}

/** Releases the touchers and blocks until all four are done (the timed part). */
function runTouchers(ctrl: Int32Array): void {
  Atomics.store(ctrl, GO, 1);
  Atomics.notify(ctrl, GO);
  waitFor(ctrl, DONE, 4);
}

async function threads4(
  name: string,
  npages: number,
  src: Uint8Array,
  data: Uint8Array,
): Promise<void> {
  await serverScenario(
    name,
    npages,
    src,
    { source: { kind: "bytes", data }, readahead: 1 },
    async (server, timer) => {
      const t = await startTouchers(server.mapping.start, server.mapping.length, npages);
      timer.start();
      runTouchers(t.ctrl);
      timer.stop();
      await t.finished;
      for (const w of t.workers) w.terminate();
    },
  );
}

// ---- two processes: the toucher registers its memory and sends the uffd to the handler ----
// The protocol is bench/native/handler.c's ("two processes"): T -> H the uffd and u64 start,
// u64 length; H -> T 'R'; T warms up; T -> H 'S', H -> T 'A'; the timed pass; T -> H 'E' +
// f64 seconds, user us, sys us; H -> T 'H' + f64 faults, user us, sys us; T checks the memory
// and closes the connection; H serves until then.

/** The C handler binary that run.ts builds (bench/native/build/handler). */
const HANDLER_BIN = fileURLToPath(new URL("./native/build/handler", import.meta.url));
const REC = 25;
const PROTOCOL_TIMEOUT_MS = 120_000;

/** Reads exactly `n` bytes from the connection (blocking, with a deadline). */
function recvExact(fd: number, n: number, what: string): Uint8Array {
  const out = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    if (!waitReadable(fd, PROTOCOL_TIMEOUT_MS)) fail(`${what}: nothing within ${PROTOCOL_TIMEOUT_MS} ms`);
    const m = recvMessage(fd, { maxBytes: n - got, maxFds: 0 });
    if (m.eof) fail(`${what}: the other process closed the connection`);
    out.set(m.bytes, got);
    got += m.bytes.length;
  }
  return out;
}

function expectByte(fd: number, want: string, what: string): void {
  const b = recvExact(fd, 1, what)[0];
  if (b !== want.charCodeAt(0)) fail(`${what}: got ${String.fromCharCode(b)}, expected ${want}`);
}

function sendRecord(fd: number, tag: string, a: number, b: number, c: number): void {
  const m = new Uint8Array(REC);
  const v = new DataView(m.buffer);
  m[0] = tag.charCodeAt(0);
  v.setFloat64(1, a, true);
  v.setFloat64(9, b, true);
  v.setFloat64(17, c, true);
  sendMessage(fd, m);
}

function recvRecord(fd: number, tag: string): [number, number, number] {
  const m = recvExact(fd, REC, `record ${tag}`);
  if (m[0] !== tag.charCodeAt(0)) fail(`expected record ${tag}, got ${String.fromCharCode(m[0])}`);
  const v = new DataView(m.buffer);
  return [v.getFloat64(1, true), v.getFloat64(9, true), v.getFloat64(17, true)];
}

/** Listens at a fresh path, starts `argv` (which connects to it), accepts its connection. */
async function startPeer(argv: (path: string) => string[]): Promise<{
  conn: number;
  exited: Promise<number | null>;
  close(): void;
}> {
  const path = join(tmpdir(), `uffd-bench-${process.pid}.sock`);
  const l = UnixListener.listen(path);
  const [cmd, ...args] = argv(path);
  const child = spawn(cmd, args, { stdio: ["ignore", "inherit", "inherit"] });
  const exited = new Promise<number | null>((res) => child.on("exit", (code) => res(code)));
  try {
    if (!waitReadable(l.fd, 10_000)) fail(`${cmd} ${args.join(" ")} did not connect within 10 s`);
    const conn = await l.accept();
    return {
      conn,
      exited,
      close: () => {
        libc.close(conn);
        if (child.exitCode === null) child.kill("SIGKILL");
      },
    };
  } finally {
    l.close();
  }
}

/** The handler of remote-threads-4 in TS: the FaultServer, or (`--handler=min`) ts_min_handler.ts. */
interface RemoteHandler {
  /** Faults and pages placed so far. */
  counts(): { faults: number; placed: number; reads: number };
  /** Stops it; extra fields of the report (not counts: those are of the timed pass, from counts()). */
  close(): Promise<Record<string, unknown>>;
}

async function faultServerHandler(
  data: Uint8Array,
  uffd: Userfaultfd,
  start: number,
  length: number,
): Promise<RemoteHandler> {
  const server = await FaultServer.start({
    source: { kind: "bytes", data },
    remote: { uffd, start, length },
    readahead: 1,
    onRemove: "source",
    closeTimeoutMs: CLOSE_TIMEOUT_MS,
  });
  return {
    counts: () => {
      const st = server.stats;
      return { faults: st.faults, placed: st.pages, reads: st.reads };
    },
    close: () => {
      const st = server.stats;
      if (st.errors !== 0) fail(`${st.errors} errors: ${server.lastError}`);
      const closeMs = closeTimed(server);
      return Promise.resolve({ meanLatencyUs: Number(st.meanLatencyUs.toFixed(3)), closeMs });
    },
  };
}

async function minHandler(
  data: Uint8Array,
  uffd: Userfaultfd,
  start: number,
  length: number,
): Promise<RemoteHandler> {
  const counters = new Int32Array(new SharedArrayBuffer(16));
  const stopFd = libc.syscall(290, /* eventfd2 */ 0, 0o2000000 /* EFD_CLOEXEC */);
  if (stopFd < 0) fail(`eventfd2: errno ${libc.errno()}`);
  const w = new Worker(new URL("./ts_min_handler.ts", import.meta.url), { type: "module" });
  const done = new Promise((res, rej) => {
    w.onmessage = (e: MessageEvent<{ error?: string }>) =>
      e.data.error ? rej(new Error(e.data.error)) : res(e.data);
    w.onerror = (e: ErrorEvent) => rej(new Error(e.message));
  });
  const init: MinHandlerInit = {
    fd: uffd.fd,
    stopFd,
    start,
    src: libc.addressOf(data),
    length,
    counters: counters.buffer as SharedArrayBuffer,
  };
  w.postMessage(init);
  while (Atomics.load(counters, 3) === 0) await new Promise((r) => setTimeout(r, 1));
  return {
    counts: () => ({ faults: counters[0], placed: counters[2], reads: counters[1] }),
    close: async () => {
      libc.write(stopFd, new Uint8Array(new BigUint64Array([1n]).buffer), 8);
      await done;
      w.terminate();
      libc.close(stopFd);
      uffd.close();
      return { handlerLoop: "min" };
    },
  };
}

/** H in TS: the FaultServer serves a C process whose 4 pthreads touch (handler.c touch-remote). */
async function remoteThreads4(name: string, npages: number, data: Uint8Array, kind: string): Promise<void> {
  const warm = warmupPages(npages);
  const peer = await startPeer((path) => [HANDLER_BIN, "touch-remote", path, `${npages}`, `${warm}`, "4"]);
  const m = recvMessage(peer.conn, { maxBytes: 16, maxFds: 1 });
  if (m.fds.length !== 1 || m.bytes.length !== 16) fail(`${name}: no uffd and region from the toucher`);
  const region = new DataView(m.bytes.buffer, m.bytes.byteOffset, 16);
  const start = Number(region.getBigUint64(0, true));
  const length = Number(region.getBigUint64(8, true));
  if (length !== npages * PS) fail(`${name}: region of ${length} bytes, expected ${npages * PS}`);
  const uffd = Userfaultfd.fromFd(m.fds[0], ["EVENT_REMOVE"], { remote: true });
  const handler = kind === "min"
    ? await minHandler(data, uffd, start, length)
    : await faultServerHandler(data, uffd, start, length);
  sendMessage(peer.conn, new TextEncoder().encode("R"));
  expectByte(peer.conn, "S", "waiting for S");
  const s0 = handler.counts();
  const before = threadTimes();
  const cpu0 = process.cpuUsage();
  sendMessage(peer.conn, new TextEncoder().encode("A"));
  const [seconds, tUser, tSys] = recvRecord(peer.conn, "E");
  const cpu = process.cpuUsage(cpu0);
  const after = threadTimes();
  sendRecord(peer.conn, "H", handler.counts().faults - s0.faults, cpu.user, cpu.system);
  // Serve until the toucher has checked its memory and closed the connection.
  while (!recvMessage(peer.conn, { maxBytes: 1, maxFds: 0 }).eof) { /* nothing else is sent */ }
  // Read after that: the counters are updated after the ioctl that woke the toucher.
  const st = handler.counts();
  const code = await peer.exited;
  peer.close();
  if (code !== 0) fail(`${name}: the toucher exited with ${code}`);
  if (st.placed - s0.placed !== npages) {
    fail(`${name}: placed ${st.placed - s0.placed} pages, expected ${npages}`);
  }
  const extra = await handler.close();
  const r = (x: number): number => Number((x / npages).toFixed(4));
  report(name, npages, seconds, {
    handler: kind === "min" ? `${libc.runtime} (minimal loop)` : libc.runtime,
    toucher: "c",
    ...extra,
    faults: st.faults - s0.faults,
    reads: st.reads - s0.reads,
    placed: st.placed - s0.placed,
    warmup: warm,
    cpuUsPerPage: r(cpu.user + cpu.system + tUser + tSys),
    userUsPerPage: r(cpu.user + tUser),
    sysUsPerPage: r(cpu.system + tSys),
    handlerCpuUsPerPage: r(cpu.user + cpu.system),
    toucherCpuUsPerPage: r(tUser + tSys),
    handlerUserUsPerPage: r(cpu.user),
    handlerSysUsPerPage: r(cpu.system),
    cpu: cpuPerPage(before, after, npages),
  });
}

/** T in TS: 4 toucher Workers on this process's memory, served by the C handler (handler.c serve-remote). */
async function remoteWorkers4(name: string, npages: number, src: Uint8Array): Promise<void> {
  const len = npages * PS;
  const warm = warmupPages(npages);
  const uffd = Userfaultfd.open({ nonBlocking: true, features: ["EVENT_REMOVE"] });
  const region = Mapping.anonymous(len);
  uffd.register(region, { missing: true });
  const peer = await startPeer((path) => [HANDLER_BIN, "serve-remote", path, `${npages}`]);
  const head = new Uint8Array(16);
  const hv = new DataView(head.buffer);
  hv.setBigUint64(0, BigInt(region.start), true);
  hv.setBigUint64(8, BigInt(len), true);
  sendMessage(peer.conn, head, [uffd.fd]);
  expectByte(peer.conn, "R", "waiting for R");
  const mem = region.bytes();
  // Warm-up as in-process: at least two passes and WARM_FAULTS faults (a fault a page).
  for (let pass = 0; warm > 0 && pass < WARM_PASSES && (pass < 2 || pass * warm < WARM_FAULTS); pass++) {
    touchRead(mem, 0, warm);
    region.dontneed(0, Math.min(npages, warm + 64) * PS);
  }
  const t = await startTouchers(region.start, len, npages);
  sendMessage(peer.conn, new TextEncoder().encode("S"));
  expectByte(peer.conn, "A", "waiting for A");
  const timer = new Timer();
  timer.start();
  runTouchers(t.ctrl);
  timer.stop();
  const tu = timer.usage(1);
  sendRecord(peer.conn, "E", timer.seconds, tu.userUsPerPage, tu.sysUsPerPage);
  const [faults, hUser, hSys] = recvRecord(peer.conn, "H");
  await t.finished;
  for (const w of t.workers) w.terminate();
  verify(name, mem, src);
  libc.close(peer.conn);
  const code = await peer.exited;
  peer.close();
  if (code !== 0) fail(`${name}: the C handler exited with ${code}`);
  uffd.close();
  region.close();
  const r = (x: number): number => Number((x / npages).toFixed(4));
  report(name, npages, timer.seconds, {
    handler: "c",
    toucher: libc.runtime,
    faults,
    warmup: warm,
    cpuUsPerPage: r(tu.cpuUsPerPage + hUser + hSys),
    userUsPerPage: r(tu.userUsPerPage + hUser),
    sysUsPerPage: r(tu.sysUsPerPage + hSys),
    handlerCpuUsPerPage: r(hUser + hSys),
    toucherCpuUsPerPage: r(tu.cpuUsPerPage),
    handlerUserUsPerPage: r(hUser),
    handlerSysUsPerPage: r(hSys),
    cpu: timer.cpu(npages),
  });
}

async function wpRoundtrip(name: string, npages: number, src: Uint8Array): Promise<void> {
  const len = npages * PS;
  const warm = warmupPages(npages);
  const uffd = Userfaultfd.open({ nonBlocking: true });
  const region = Mapping.anonymous(len);
  const mem = region.bytes();
  mem.set(src); // present pages
  uffd.register(region, { wp: true });
  uffd.writeprotect({ start: region.start, len, wp: true });
  const ctrl = new Int32Array(new SharedArrayBuffer(16));
  const w = new Worker(new URL("./ts_workers.ts", import.meta.url), { type: "module" });
  const finished = new Promise((res, rej) => {
    w.onmessage = (e: MessageEvent<{ error?: string }>) =>
      e.data.error ? rej(new Error(e.data.error)) : res(e.data);
    w.onerror = (e: ErrorEvent) => rej(new Error(e.message));
  });
  const init: WpInit = {
    kind: "wp",
    fd: uffd.fd,
    start: region.start,
    len,
    faults: warm + npages,
    ctrl: ctrl.buffer as SharedArrayBuffer,
  };
  w.postMessage(init);
  while (Atomics.load(ctrl, READY) < 1) await new Promise((r) => setTimeout(r, 1));
  // Warm-up: write (and so un-protect) the first pages, then protect them again.
  for (let p = 0; p < warm; p++) mem[p * PS] = p & 255;
  if (warm > 0) uffd.writeprotect({ start: region.start, len: warm * PS, wp: true });
  const timer = new Timer();
  timer.start();
  for (let p = 0; p < npages; p++) mem[p * PS] = p & 255;
  timer.stop();
  await finished;
  w.terminate();
  const expect = src.slice();
  for (let p = 0; p < npages; p++) expect[p * PS] = p & 255;
  verify(name, mem, expect);
  uffd.close();
  region.close();
  report(name, npages, timer.seconds, {
    faults: Atomics.load(ctrl, DONE) - warm,
    warmup: warm,
    ...timer.usage(npages),
    cpu: timer.cpu(npages),
  });
}

function zeroFill(name: string, npages: number): void {
  const nw = warmupPages(npages);
  if (nw > 0) {
    const warm = Mapping.anonymous(nw * PS); // warm the loop on other memory
    const wm = warm.bytes();
    for (let p = 0; p < nw; p++) wm[p * PS] = p & 255;
    warm.close();
  }
  const m = Mapping.anonymous(npages * PS);
  const mem = m.bytes();
  const timer = new Timer();
  timer.start();
  for (let p = 0; p < npages; p++) mem[p * PS] = p & 255;
  timer.stop();
  for (let p = 0; p < npages; p++) {
    if (mem[p * PS] !== (p & 255) || mem[p * PS + 1] !== 0) fail(`${name}: wrong content at page ${p}`);
  }
  m.close();
  report(name, npages, timer.seconds, { ...timer.usage(npages), cpu: timer.cpu(npages) });
}

function memcpy4k(name: string, npages: number, src: Uint8Array): void {
  const m = Mapping.anonymous(npages * PS);
  const mem = m.bytes();
  mem.fill(1); // populate
  const copy = (): void => {
    for (let p = 0; p < npages; p++) mem.set(src.subarray(p * PS, (p + 1) * PS), p * PS);
  };
  copy(); // warm-up pass
  mem.fill(1);
  const timer = new Timer();
  timer.start();
  copy();
  timer.stop();
  verify(name, mem, src);
  m.close();
  report(name, npages, timer.seconds, { ...timer.usage(npages), cpu: timer.cpu(npages) });
}

/**
 * ~targetFaults faults through one server: touch every page, drop them all with
 * MADV_DONTNEED (a REMOVE event; onRemove "source" serves the source again), repeat.
 */
async function heap(
  npages: number,
  src: Uint8Array,
  data: Uint8Array,
  targetFaults: number,
): Promise<void> {
  const server = await FaultServer.start({
    source: { kind: "bytes", data },
    readahead: 1,
    onRemove: "source",
    closeTimeoutMs: CLOSE_TIMEOUT_MS,
  });
  const mem = server.bytes();
  const passes = Math.ceil(targetFaults / npages);
  const s0 = server.stats;
  const timer = new Timer();
  timer.start();
  let acc = 0;
  for (let i = 0; i < passes; i++) {
    if (i > 0) server.mapping.dontneed();
    acc += touchRead(mem, 0, npages);
  }
  timer.stop();
  verify("heap", mem, src);
  const st = server.stats;
  if (st.faults < passes * npages) {
    fail(`heap: ${st.faults} faults, expected ${passes * npages} (acc ${acc})`);
  }
  const closeMs = closeTimed(server);
  const after = server.stats; // heapNow is sampled again when the Worker stops
  report("heap", passes * npages, timer.seconds, {
    ...statsOf(st, s0),
    passes,
    removed: after.removed,
    heapStart: after.heapStart,
    heapBeforeClose: st.heapNow,
    heapNow: after.heapNow,
    heapGrowth: after.heapNow - after.heapStart,
    closeMs,
  });
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const flag = (k: string): number | undefined => {
    const a = args.find((x) => x.startsWith(`--${k}=`));
    return a === undefined ? undefined : Number(a.slice(k.length + 3));
  };
  const [name, pagesArg] = args.filter((a) => !a.startsWith("--"));
  warmup = flag("warmup") ?? -1;
  // remote-threads-4's handler: the FaultServer (default) or the minimal loop (diagnostic).
  const handlerKind = args.find((a) => a.startsWith("--handler="))?.slice(10) ?? "server";
  if (handlerKind !== "server" && handlerKind !== "min") fail("--handler must be server or min");
  if (!name || (!(SCENARIOS as readonly string[]).includes(name) && name !== "heap")) {
    console.error(
      `usage: ts_scenarios.ts <${SCENARIOS.join("|")}|heap> [pages] [--warmup=pages] [--faults=heap faults]`,
    );
    process.exit(1);
  }
  const npages = pagesArg ? Number(pagesArg) : 16384;
  if (!Number.isInteger(npages) || npages < 16 || npages % 16 !== 0) fail("pages must be a multiple of 16");
  const len = npages * PS;
  // Page-aligned, like the C handler's mmap'd source (Deno's SharedArrayBuffers start 16 bytes in).
  const src = alignedSharedBytes(len);
  const data = src; // the source: a view on shared memory
  fillPattern(words(src));

  switch (name) {
    case "seq-copy-4k":
      return await serverScenario(
        name,
        npages,
        src,
        { source: { kind: "bytes", data }, readahead: 1 },
        sequential(npages),
      );
    case "rand-copy-4k": {
      const order = permutation(npages);
      return await serverScenario(
        name,
        npages,
        src,
        { source: { kind: "bytes", data }, readahead: 1 },
        (server, timer) => {
          const mem = server.bytes();
          let acc = 0;
          timer.start();
          for (let i = 0; i < npages; i++) acc += mem[order[i] * PS];
          timer.stop();
          if (acc < 0) fail("unreachable");
        },
      );
    }
    case "seq-copy-64k":
      return await serverScenario(
        name,
        npages,
        src,
        { source: { kind: "bytes", data }, readahead: 16 },
        sequential(npages),
      );
    case "seq-adaptive":
      return await serverScenario(
        name,
        npages,
        src,
        { source: { kind: "bytes", data }, readahead: "adaptive" },
        sequential(npages),
      );
    case "move":
      return await serverScenario(
        name,
        npages,
        src,
        { source: { kind: "bytes", data }, placement: "move", readahead: 1 },
        sequential(npages),
      );
    case "continue": {
      const shm = Mapping.memfd(len);
      shm.bytes().set(src); // populate the page cache out of band
      await serverScenario(
        name,
        npages,
        src,
        { source: { kind: "memfd", mapping: shm } },
        sequential(npages),
      );
      shm.close();
      return;
    }
    case "zeropage":
      return await serverScenario(
        name,
        npages,
        src,
        { source: { kind: "zero", length: len } },
        sequential(npages),
        new Uint8Array(len),
      );
    case "wp-roundtrip":
      return await wpRoundtrip(name, npages, src);
    case "threads-4":
      return await threads4(name, npages, src, data);
    case "remote-threads-4":
      return await remoteThreads4(name, npages, data, handlerKind);
    case "remote-min-4":
      return await remoteThreads4(name, npages, data, "min");
    case "remote-workers-4":
      return await remoteWorkers4(name, npages, src);
    case "zero-fill":
      return zeroFill(name, npages);
    case "memcpy-4k":
      return memcpy4k(name, npages, src);
    case "heap":
      return await heap(npages, src, data, flag("faults") ?? 1_000_000);
  }
}

await main();
// A Worker left blocked in read() keeps the process alive: leave explicitly.
process.exit(0);
