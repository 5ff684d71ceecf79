// The POISON-after-EAGAIN regression, in a process of its own: touching page 3 must end it by
// SIGBUS (poisoned by policy) once the pending REMOVE event is read, never hang in a loop of
// faults and wakes (the server used to count the page unserved and wake it forever).
import { FaultServer, Mapping, pageSize } from "../../mod.ts";
import { libc } from "../../ffi/mod.ts";

const flag = new Int32Array(new SharedArrayBuffer(8));
using mapping = Mapping.anonymous(8 * pageSize);
const server = await FaultServer.start({
  source: {
    kind: "module",
    url: new URL("./stress_eagain_source.ts", import.meta.url).href,
    length: 8 * pageSize,
    options: { flag },
  },
  mapping,
  onError: { retries: 0, then: "poison" },
});
const view = mapping.bytes();
const say = (s: string): void => {
  const b = new TextEncoder().encode(s + "\n");
  libc.write(1, b, b.length);
};
say(`page0=${view[0]}`);
// The advisor: waits for the source's signal, then drops page 6 (a REMOVE event the server must read).
const advisor = new Worker(new URL("./stress_eagain_advisor.ts", import.meta.url), { type: "module" });
advisor.postMessage({ flag: flag.buffer, addr: mapping.start + 6 * pageSize });
say("touching page 3");
say(`page3=${view[3 * pageSize]}`); // SIGBUS here
say("survived");
server.close();
advisor.terminate();
