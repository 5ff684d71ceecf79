// Touches the pages of a fault server one by one on this (main) thread and checks, right after
// each touch returns, that server.stats already counts that page: the counters are updated
// before the faulter is woken. Prints one JSON line. Run by tests/server.test.ts with a deadline.
import { FaultServer, pageSize } from "../../mod.ts";

const pages = 1024;
const data = new SharedArrayBuffer(pages * pageSize);
new Uint8Array(data).fill(5);
const server = await FaultServer.start({ source: { kind: "bytes", data }, readahead: 1 });
const mem = server.bytes();
let behind = 0;
let firstBehind = "";
let sum = 0;
for (let i = 0; i < pages; i++) {
  sum += mem[i * pageSize];
  const s = server.stats;
  if (s.pages < i + 1 || s.bytes < (i + 1) * pageSize || s.faults < i + 1) {
    if (behind++ === 0) {
      firstBehind = `after page ${i}: faults ${s.faults}, pages ${s.pages}, bytes ${s.bytes}`;
    }
  }
}
const before = server.stats;
await server.close();
const after = server.stats;
console.log(JSON.stringify({
  sum,
  behind,
  firstBehind,
  pages: before.pages,
  closedPages: after.pages,
  bytes: after.bytes,
}));
