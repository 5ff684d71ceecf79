// A custom page source with a fatal bug: it ends its thread with process.exit() every
// time it is asked for one of the pages in `options.deadly`; other pages hold page + 1.
import process from "node:process";

let deadly: number[] = [];

export function init(options: { deadly: number[] }): void {
  deadly = options.deadly;
}

export function fill(offset: number, dest: Uint8Array): void {
  const page = offset >> 12;
  if (deadly.includes(page)) process.exit(9);
  dest.fill(page + 1);
}
