// UFFDIO_POISON in a child process (touching a poisoned page raises SIGBUS, which ends it).
//   direct: poison page 1 of a registered range, read page 0 (ZEROPAGE), then touch page 1
//   fault:  a Worker faults on page 0; poison it with DONTWAKE (the Worker stays blocked), then
//           WAKE: the Worker retries the access and the process dies of SIGBUS
import process from "node:process";
import { readTextFile } from "../../src/memory.ts";
import { Mapping, pageSize, Userfaultfd } from "../../mod.ts";
import { Toucher } from "../helpers/toucher.ts";

const mode = process.argv[2] ?? "direct";
const uffd = Userfaultfd.open({ features: ["POISON"], nonBlocking: mode === "fault" });
const mem = Mapping.anonymous(2 * pageSize);
uffd.register(mem);
if (mode === "direct") {
  console.log(`poisoned ${uffd.poison({ start: mem.page(1), len: pageSize })}`);
  uffd.zeropage({ start: mem.start, len: pageSize });
  console.log(`clean page ${mem.bytes()[0]}`);
  console.log(`touching ${mem.bytes()[pageSize]}`);
} else {
  const t = new Toucher();
  void t.read(mem.start);
  const ev = uffd.readEvent({ timeout: 10000 });
  if (!ev) throw new Error("no fault");
  console.log(`poisoned ${uffd.poison({ start: mem.start, len: pageSize, dontwake: true })}`);
  await new Promise((r) => setTimeout(r, 50));
  const total = readTextFile(`/proc/self/fdinfo/${uffd.fd}`)?.match(/^total:\s+(\d+)/m)?.[1];
  console.log(`blocked ${total}`);
  uffd.wake({ start: mem.start, len: pageSize });
  await new Promise((r) => setTimeout(r, 5000));
}
console.log("survived");
