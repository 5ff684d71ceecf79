// Opens a userfaultfd as asked on the command line and prints what happened as one JSON line.
// Run by tests/open.test.ts under setpriv (capabilities dropped) to reach the EPERM paths.
// argv: <via: auto|syscall|device> <userModeOnly: 0|1>
import process from "node:process";
import { Mapping, pageSize, UffdError, Userfaultfd } from "../../mod.ts";

const [via, umo] = process.argv.slice(2);
try {
  using uffd = Userfaultfd.open({ via: via as "auto" | "syscall" | "device", userModeOnly: umo === "1" });
  using mem = Mapping.anonymous(pageSize);
  uffd.register(mem);
  const n = uffd.zeropage({ start: mem.start, len: pageSize });
  console.log(JSON.stringify({ ok: true, zeroed: n }));
} catch (e) {
  if (!(e instanceof UffdError)) throw e;
  console.log(JSON.stringify({ ok: false, op: e.op, code: e.code, source: e.source, message: e.message }));
}
