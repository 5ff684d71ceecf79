// Child: a source failing for page 3 under the default policy (retry, then poison).
// Page 0 reads fine; touching page 3 must kill this process with SIGBUS.
import { FaultServer } from "../../mod.ts";

const server = await FaultServer.start({
  source: {
    kind: "module",
    url: new URL("../helpers/sources/failing_source.ts", import.meta.url).href,
    length: 8 * 4096,
  },
});
const mem = server.bytes();
console.log(`page0=${mem[0]}`);
console.log(`touching page 3`);
console.log(`page3=${mem[3 * 4096]}`);
console.log("survived");
server.close();
