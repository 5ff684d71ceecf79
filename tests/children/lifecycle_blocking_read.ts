// A blocking read(2) through the library: a descriptor opened with { nonBlocking: false }; the
// test thread enters readEvent() (then readEvents()) before the Worker has faulted, and the call
// returns the Worker's page fault once it happens. Run in a child process by
// tests/lifecycle.test.ts, so that a read that never returns is killed here, not in the runner.
// Prints one JSON line.
import { EventBuffer, Mapping, pageSize, type UffdEvent, Userfaultfd } from "../../mod.ts";
import { LifecycleWorker, settle } from "../helpers/lifecycle_calls.ts";

/** How long the Worker waits after being let go before it faults. */
const DELAY_MS = 200;

/** What the test checks of one blocking read. */
function summary(ev: UffdEvent | undefined, base: number, waited: number): Record<string, unknown> {
  if (!ev || ev.type !== "pagefault") return { event: ev ?? null };
  return { type: ev.type, kind: ev.kind, offset: ev.address - base, waitedForFault: waited >= DELAY_MS - 50 };
}

const uffd = Userfaultfd.open({ nonBlocking: false });
const mem = Mapping.anonymous(2 * pageSize);
const worker = new LifecycleWorker();
const pending: Promise<unknown>[] = [];
try {
  uffd.register(mem);
  await worker.ping();

  // readEvent(): one blocking read(2) of one message
  const a = worker.armedRead(mem.page(1), DELAY_MS);
  pending.push(a.done);
  await a.armed();
  let t0 = performance.now();
  a.fire();
  const ev = uffd.readEvent(); // blocks until the Worker's fault is queued
  const first = summary(ev, mem.start, performance.now() - t0);
  uffd.copy({ start: mem.page(1), len: pageSize, src: new Uint8Array(pageSize).fill(9) });
  first.value = (await a.done).ret;

  // readEvents(buffer): one blocking read(2) into a batch buffer
  const b = worker.armedRead(mem.page(0), DELAY_MS);
  pending.push(b.done);
  await b.armed();
  const buf = new EventBuffer(4);
  t0 = performance.now();
  b.fire();
  const n = uffd.readEvents(buf);
  const second: Record<string, unknown> = {
    count: n,
    ...summary(n > 0 ? buf.event(0) : undefined, mem.start, performance.now() - t0),
  };
  uffd.copy({ start: mem.page(0), len: pageSize, src: new Uint8Array(pageSize).fill(4) });
  second.value = (await b.done).ret;

  console.log(JSON.stringify({ nonBlocking: uffd.nonBlocking, first, second }));
} finally {
  uffd.close(); // wakes the Worker should it still wait on a fault
  await settle(pending);
  worker.close();
  mem.close();
}
