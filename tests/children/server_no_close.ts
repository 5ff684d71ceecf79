// Child: starts a fault server, reads some pages, and ends without close(). The process
// must exit on its own (the server's threads are unref'd), with status 0.
import { FaultServer, pageSize } from "../../mod.ts";

const data = new SharedArrayBuffer(64 * pageSize);
new Uint8Array(data).fill(3);
const server = await FaultServer.start({ source: { kind: "bytes", data } });
let sum = 0;
for (let p = 0; p < 64; p += 2) sum += server.bytes()[p * pageSize];
console.log(`sum=${sum} faults=${server.stats.faults}`);
