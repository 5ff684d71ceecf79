// The soak's failing page source (a FaultServer `module` source): page p holds soakWord(salt, p, i)
// at word i. Per page, `plan` says how it fails: 0 never, 1 it throws on its first call of a pass
// (retried by the server), 2 it ends its thread with process.exit() once in the soak round (the
// standby takes over), 3 it always throws (the server poisons it after its retries).
import process from "node:process";

/** Word `i` of page `p` of the pattern `salt`. */
export function soakWord(salt: number, p: number, i: number): number {
  return (Math.imul(p + 1, 2654435761) ^ Math.imul(i + 1, 40503) ^ Math.imul(salt, 0x27d4eb2d)) >>> 0;
}

/** Fills page `p` of `salt` into `w` at word `at` (a page is 1024 words). */
export function fillPage(w: Uint32Array, at: number, salt: number, p: number): void {
  for (let i = 0; i < 1024; i++) w[at + i] = soakWord(salt, p, i);
}

export const PLAN_OK = 0;
export const PLAN_THROW_ONCE = 1;
export const PLAN_KILL_ONCE = 2;
export const PLAN_ALWAYS = 3;

interface Options {
  salt: number;
  plan: Uint8Array;
  /** Calls this pass per page (the round resets it each pass). */
  calls: Int32Array;
  /** Set once a page has killed its thread. */
  killed: Int32Array;
}

let o: Options;

export function init(options: Options): void {
  o = options;
}

export function fill(offset: number, dest: Uint8Array): void {
  const first = offset / 4096;
  const n = dest.length / 4096;
  const w = new Uint32Array(dest.buffer, dest.byteOffset, dest.length / 4);
  for (let k = 0; k < n; k++) {
    const p = first + k;
    const plan = o.plan[p];
    const call = Atomics.add(o.calls, p, 1);
    if (plan === PLAN_ALWAYS) throw new Error(`soak source: page ${p} always fails`);
    if (plan === PLAN_THROW_ONCE && call === 0) throw new Error(`soak source: page ${p} fails once`);
    if (plan === PLAN_KILL_ONCE && Atomics.compareExchange(o.killed, p, 0, 1) === 0) process.exit(3);
    fillPage(w, k * 1024, o.salt, p);
  }
}
