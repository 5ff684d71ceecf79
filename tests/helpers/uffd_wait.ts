// Waiting on a userfaultfd in tests without ever hanging: the fault counts of its fdinfo,
// waiting until faults are queued, and reading the next event with a timeout.
import type { UffdEvent, Userfaultfd } from "../../mod.ts";
import { readTextFile } from "../../src/memory.ts";

/** Resolves after `ms` milliseconds. */
export const sleep = (ms: number): Promise<void> => new Promise<void>((r) => setTimeout(r, ms));

/** `pending:` (faults queued, not yet read) and `total:` (faults still blocked) of a uffd or descriptor. */
export function waiters(uffd: Userfaultfd | number): { pending: number; total: number } {
  const fd = typeof uffd === "number" ? uffd : uffd.fd;
  const text = readTextFile(`/proc/self/fdinfo/${fd}`) ?? "";
  return {
    pending: Number(text.match(/^pending:\s+(\d+)/m)?.[1] ?? -1),
    total: Number(text.match(/^total:\s+(\d+)/m)?.[1] ?? -1),
  };
}

/** Waits (without blocking the event loop) until `n` faults are queued on `uffd`. */
export async function untilPending(uffd: Userfaultfd | number, n: number, ms = 10000): Promise<void> {
  const end = Date.now() + ms;
  while (waiters(uffd).pending < n) {
    if (Date.now() > end) throw new Error(`fewer than ${n} faults queued after ${ms} ms`);
    await sleep(5);
  }
}

/** Reads the next event, failing instead of hanging (the uffd must be non-blocking). */
export function nextEvent(uffd: Userfaultfd): UffdEvent {
  const ev = uffd.readEvent({ timeout: 10000 });
  if (!ev) throw new Error("no event within 10 s");
  return ev;
}

/** Waits (without blocking the event loop) until `cond()` holds; throws after `ms`. */
export async function until(cond: () => boolean, what: string, ms = 10000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(5);
  }
}
