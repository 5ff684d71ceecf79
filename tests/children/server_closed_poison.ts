// Child: a caller-owned mapping served lazily; after close() the never-placed pages are
// poisoned, so touching one raises SIGBUS instead of reading zeros.
import { FaultServer, Mapping, pageSize } from "../../mod.ts";

const mapping = Mapping.anonymous(4 * pageSize);
const data = new SharedArrayBuffer(4 * pageSize);
new Uint8Array(data).fill(7);
const server = await FaultServer.start({ source: { kind: "bytes", data }, mapping });
console.log(`page0=${mapping.bytes()[0]}`);
server.close();
console.log(`closed; page0 still ${mapping.bytes()[0]}`);
console.log("touching page 2");
console.log(`page2=${mapping.bytes()[2 * pageSize]}`);
console.log("survived");
