/**
 * Entry of the fault server's threads (`node:worker_threads`, which both runtimes
 * provide and which can be unref'd so a forgotten server never keeps the process
 * alive). Each thread opens libc itself (through ffi/).
 *
 * - `primary` loads the custom source module if any and serves faults until stopped.
 * - `standby` waits on a pidfd of the serving thread (PIDFD_THREAD) and the stop
 *   descriptor. If the serving thread ends while the server is still running (a
 *   source called `process.exit()`; a loop that throws marks the server failed
 *   instead, and is not taken over), it becomes the serving thread:
 *   it asks the main thread for a new standby (waiting up to STANDBY_WAIT_MS for it to
 *   watch), wakes the whole region so faults the dead thread had read are raised again,
 *   and serves in its place. The page the dead thread's source was filling counts as a
 *   failed attempt of the failure policy (no retry when no new standby came: the main
 *   thread starts it, and cannot while it is itself blocked on a fault). A thread ending
 *   again while none watches is not recovered: faulters then wait until close().
 * @module
 */
import { type MessagePort, parentPort, workerData } from "node:worker_threads";
import { type FillFunction, heapUsedOf, serve } from "./loop.ts";
import { fetchLoop } from "./fetcher.ts";
import { CTRL, REGION_WORDS, type ServerInit, STAT, STATE } from "./layout.ts";
import { libc } from "../../ffi/mod.ts";
import { ioctl } from "../abi.ts";
import { POLLIN } from "../eventfd.ts";

const NR_gettid = 186;
const NR_pidfd_open = 434;
const PIDFD_THREAD = 0o200; // O_EXCL
const ESRCH = 3;
/** How long a thread taking over waits for its own standby before serving without one. */
const STANDBY_WAIT_MS = 2000;

interface SourceModule {
  fill?: FillFunction;
  init?: (options: unknown) => void | Promise<void>;
  default?: { fill?: FillFunction; init?: (options: unknown) => void | Promise<void> };
}

const data = workerData as {
  role: "primary" | "standby" | "fetcher";
  init?: ServerInit;
  /** url source: the channel to the fetcher thread. */
  port?: MessagePort;
  /** The fetcher: one channel per serving thread. */
  ports?: MessagePort[];
};
let fetchPort = data.port;
const role = data.role;
const post = (m: unknown): void => parentPort?.postMessage(m);
// A warm thread (FaultServer.warm) starts without a server: it loads its modules, then waits
// for the init message of the server that takes it.
if (!data.init && libc.runtime === "node") post({ type: "warm" }); // loaded (see endThread in fault_server.ts)
const init: ServerInit = data.init ?? await new Promise<ServerInit>((resolve) => {
  const onMessage = (
    m: { type?: string; init?: ServerInit; port?: MessagePort; ports?: MessagePort[] },
  ): void => {
    if (m?.type !== "init" || !m.init) return;
    parentPort?.off("message", onMessage);
    fetchPort = m.port;
    if (m.ports) data.ports = m.ports;
    resolve(m.init);
  };
  parentPort?.on("message", onMessage);
});
const ctrl = new Int32Array(init.ctrl);

// A custom source must not kill the server by accident: close() throws, and uncaught
// errors and rejections are swallowed (the failing fill is handled by the policy).
const g = globalThis as unknown as {
  close?: () => void;
  addEventListener?: (t: string, f: (e: Event) => void) => void;
};
g.close = () => {
  throw new Error("a page source called close() on the fault server's thread");
};
g.addEventListener?.("error", (e: Event) => e.preventDefault());
g.addEventListener?.("unhandledrejection", (e: Event) => e.preventDefault());

async function loadSource(): Promise<FillFunction | undefined> {
  if (init.source.kind !== "module") return undefined;
  const mod = (await import(init.source.url)) as SourceModule;
  const f = mod.fill ?? mod.default?.fill;
  if (typeof f !== "function") {
    throw new TypeError(`${init.source.url} exports no fill(offset, dest) function`);
  }
  await (mod.init ?? mod.default?.init)?.(init.source.options);
  return f;
}

/** Blocks until the serving thread ends (true) or the server is stopped (false). */
function awaitPrimaryExit(): boolean {
  while (Atomics.load(ctrl, CTRL.tid) === 0) {
    if (Atomics.load(ctrl, CTRL.state) >= STATE.stopped) return false;
    Atomics.wait(ctrl, CTRL.tid, 0, 100);
  }
  const pidfd = libc.syscall(NR_pidfd_open, Atomics.load(ctrl, CTRL.tid), PIDFD_THREAD);
  if (pidfd < 0) {
    // ESRCH: the serving thread has already ended. Otherwise no PIDFD_THREAD (Linux < 6.9): no standby.
    return libc.errno() === ESRCH && Atomics.load(ctrl, CTRL.state) === STATE.running;
  }
  Atomics.add(ctrl, CTRL.watching, 1);
  Atomics.notify(ctrl, CTRL.watching);
  const fds = new Int32Array([pidfd, POLLIN, init.stopFd, POLLIN]);
  const revents = new Uint16Array(fds.buffer);
  for (;;) {
    const r = libc.poll(fds, 2, -1);
    if (r < 0 && libc.errno() === 4) continue;
    libc.close(pidfd);
    if (r < 0 || revents[7] !== 0) return false;
    return Atomics.load(ctrl, CTRL.state) === STATE.running;
  }
}

/** Serves in place of a serving thread that ended while the server was running. */
async function takeOver(): Promise<void> {
  const stats = new Float64Array(init.stats);
  stats[STAT.takeovers]++;
  // This thread serves now: a new standby (asked of the main thread) watches it.
  const watching = Atomics.load(ctrl, CTRL.watching);
  Atomics.store(ctrl, CTRL.tid, libc.syscall(NR_gettid));
  post({ type: "takeover" });
  const until = Date.now() + STANDBY_WAIT_MS;
  const stop = new Int32Array([init.stopFd, POLLIN]);
  while (Atomics.load(ctrl, CTRL.watching) === watching && Date.now() < until) {
    if (libc.poll(stop, 1, 20) > 0) break; // close() was called: serve what is queued and stop
  }
  const guarded = Atomics.load(ctrl, CTRL.watching) !== watching;
  const fill = await loadSource();
  // Faults the dead thread read but never resolved: wake every region so they fault again.
  const regions = new Float64Array(init.regions);
  const range = new Uint32Array(4);
  for (let r = 0; r < regions.length; r += REGION_WORDS) {
    const start = regions[r];
    const len = regions[r + 1];
    range[0] = start % 4294967296;
    range[1] = Math.floor(start / 4294967296);
    range[2] = len % 4294967296;
    range[3] = Math.floor(len / 4294967296);
    libc.ioctl(init.fd, ioctl.UFFDIO_WAKE, new Uint8Array(range.buffer));
  }
  await serve(init, fill, guarded, fetchPort);
  post({ type: "stopped" });
}

try {
  if (role === "fetcher") {
    if (init.source.kind !== "url") throw new Error("a fetcher thread without a url source");
    fetchLoop(init.source, new Float64Array(init.stats), ctrl, new Uint8Array(init.error), data.ports ?? []);
    post({ type: "ready" });
  } else if (role === "primary") {
    Atomics.store(ctrl, CTRL.tid, libc.syscall(NR_gettid));
    Atomics.notify(ctrl, CTRL.tid);
    const fill = await loadSource();
    // The heap counters hold this thread's heap from the moment the server is ready.
    const mem = heapUsedOf();
    const stats = new Float64Array(init.stats);
    stats[STAT.heapStart] = stats[STAT.heapNow] = mem ? mem().heapUsed : 0;
    post({ type: "ready" });
    await serve(init, fill, true, fetchPort);
    post({ type: "stopped" });
  } else {
    post({ type: "standby" }); // the main thread unrefs on any message (Bun re-refs a late-starting thread)
    if (awaitPrimaryExit()) await takeOver();
  }
} catch (err) {
  if (role === "primary" || Atomics.load(ctrl, CTRL.state) === STATE.running) {
    // Serving has ended: let close() see it at once instead of waiting out its timeout.
    Atomics.store(ctrl, CTRL.state, STATE.failed);
    Atomics.notify(ctrl, CTRL.state);
  }
  post({ type: "error", message: err instanceof Error ? err.message : String(err) });
}
