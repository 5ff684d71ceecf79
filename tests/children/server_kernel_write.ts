// Hands served memory that no thread has touched to write(2) (fs.writeFileSync) and prints what
// happened as one JSON line. Run by tests/server.test.ts as root and as uid 65534 (setpriv):
// argv[2] is the output file, argv[3] the userModeOnly option ("default", "true" or "false").
import { readFileSync, writeFileSync } from "node:fs";
import process from "node:process";
import { FaultServer, pageSize, UffdError } from "../../mod.ts";

const [out, mode = "default"] = process.argv.slice(2);
const pages = 64;
const data = new SharedArrayBuffer(pages * pageSize);
const src = new Uint8Array(data);
for (let i = 0; i < src.length; i++) src[i] = (i * 7 + (i >> 12)) & 0xff;
const userModeOnly = mode === "default" ? undefined : mode === "true";
let server: FaultServer;
try {
  server = await FaultServer.start({ source: { kind: "bytes", data }, userModeOnly });
} catch (e) {
  if (!(e instanceof UffdError)) throw e;
  console.log(JSON.stringify({ started: false, code: e.code, message: e.message }));
  process.exit(0);
}
const result: Record<string, unknown> = { started: true, kernelFaults: server.kernelFaults };
try {
  writeFileSync(out, server.bytes()); // the kernel reads every page: each one faults in kernel mode
  const back = readFileSync(out);
  result.written = true;
  result.same = back.length === src.length && back.every((b, i) => b === src[i]);
} catch (e) {
  result.written = false;
  result.code = (e as { code?: string }).code;
}
await server.close();
result.faults = server.stats.faults;
console.log(JSON.stringify(result));
