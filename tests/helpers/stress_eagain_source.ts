// A page source for the POISON-after-EAGAIN regression (tests/soak.test.ts): page 3 always fails,
// but first it has the advisor Worker start a madvise(DONTNEED) on the served range, whose REMOVE
// event is still unread when the server poisons the page (so POISON answers EAGAIN).
let flag: Int32Array;

export function init(options: { flag: Int32Array }): void {
  flag = options.flag;
}

export function fill(offset: number, dest: Uint8Array): void {
  const page = offset >> 12;
  if (page === 3) {
    Atomics.store(flag, 0, 1);
    Atomics.notify(flag, 0);
    Atomics.wait(flag, 1, 0, 200); // the advisor is now inside madvise, waiting for its REMOVE to be read
    throw new Error("page 3 always fails");
  }
  dest.fill(page + 1);
}
