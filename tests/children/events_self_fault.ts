// The thread that iterates events() touches memory of the descriptor it serves, or of another
// one served elsewhere. argv[2]:
//   self   - a THREAD_ID descriptor: the library must abort with an explanation (not hang)
//   plain  - no THREAD_ID: the library cannot tell; the child hangs (the test's deadline ends it)
//   other  - this thread waits 600 ms on a FaultServer's page (another descriptor) while a Worker's
//            fault on this descriptor is pending: no abort, the Worker's fault is served after
// Prints "touching", then, when it survives, one JSON line.
import process from "node:process";
import { FaultServer, Mapping, pageSize, Userfaultfd } from "../../mod.ts";
import { Toucher } from "../helpers/toucher.ts";

const mode = process.argv[2];
const uffd = Userfaultfd.open({ features: mode === "plain" ? [] : ["THREAD_ID"] });
const mem = Mapping.anonymous(4 * pageSize);
uffd.register(mem);
const served: number[] = [];
const loop = (async () => {
  for await (const ev of uffd.events({ selfFaultMs: 100 })) {
    if (ev.type !== "pagefault") continue;
    served.push(ev.threadId);
    uffd.copy({ start: ev.address, len: pageSize, src: new Uint8Array(pageSize).fill(7) });
  }
})();
await new Promise((r) => setTimeout(r, 100)); // the iterator waits in its Worker

if (mode === "other") {
  const slow = new URL("../helpers/sources/slow_source.ts", import.meta.url);
  const server = await FaultServer.start({
    source: { kind: "module", url: slow, length: pageSize, options: { delayMs: 600 } },
  });
  const toucher = new Toucher();
  using plain = Mapping.anonymous(pageSize);
  await toucher.read(plain.start); // the Worker is up (a touch of unregistered memory)
  console.log("touching");
  // the Worker faults on this descriptor while this thread blocks ~600 ms on the server's: the
  // watcher finds this thread in a userfault and reads the pending event, which is not its own
  const touched = toucher.read(mem.page(1));
  const first = server.bytes()[17];
  const worker = await touched;
  console.log(JSON.stringify({ first, worker: worker.first, served: served.length }));
  toucher.close();
  await server.close();
} else {
  console.log("touching");
  const b = mem.bytes()[0]; // the iterating thread faults on its own descriptor
  console.log(JSON.stringify({ survived: b }));
}
uffd.close();
await loop;
mem.close();
