// A custom page source that ends its thread with process.exit() the first time it is
// asked for page 3 (a shared flag makes it crash only once), like a source with a fatal bug.
import process from "node:process";

let crashed: Int32Array | undefined;

export function init(options: { crashed: Int32Array }): void {
  crashed = options.crashed;
}

export function fill(offset: number, dest: Uint8Array): void {
  const page = offset >> 12;
  if (page === 3 && crashed && Atomics.compareExchange(crashed, 0, 0, 1) === 0) process.exit(7);
  dest.fill(page + 1);
}
