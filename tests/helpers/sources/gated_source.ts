// A page source for tests/mutants_loop.test.ts: page k of the source holds byte k + 1. Its calls for
// one window (byte offset and length, set by the test) stop at a gate until the test opens it, so
// the test can act while the server is inside that placement (raise an event, place the page behind
// the server's back, end the served process), and then fail when the test asks so.
// ctl (Int32Array over options.ctl): [0] calls that reached the gate, [1] the gate is open (1),
// [2] gated offset, [3] gated length, [4] a gated call throws (1), [5] all calls.
let ctl: Int32Array;

export function init(options: { ctl: SharedArrayBuffer }): void {
  ctl = new Int32Array(options.ctl);
}

export function fill(offset: number, dest: Uint8Array): void {
  Atomics.add(ctl, 5, 1);
  if (offset === ctl[2] && dest.length === ctl[3]) {
    Atomics.add(ctl, 0, 1);
    Atomics.notify(ctl, 0);
    const end = Date.now() + 10000; // never hold the serving thread forever
    while (Atomics.load(ctl, 1) === 0 && Date.now() < end) Atomics.wait(ctl, 1, 0, 100);
    if (ctl[4] === 1) throw new Error(`the gated window at offset ${offset} fails`);
  }
  const ps = 4096;
  for (let k = 0; k * ps < dest.length; k++) dest.fill((offset / ps + k + 1) & 0xff, k * ps, (k + 1) * ps);
}
