// Maps the file named on the command line with Mapping.file() and prints what happened as one
// JSON line. Run by tests/errors.test.ts as uid 65534 (setpriv) to reach open(2)'s EACCES.
import process from "node:process";
import { Mapping, UffdError } from "../../mod.ts";

try {
  using m = Mapping.file(process.argv[2]);
  console.log(JSON.stringify({ ok: true, length: m.length }));
} catch (e) {
  if (!(e instanceof UffdError)) throw e;
  console.log(JSON.stringify({ ok: false, op: e.op, code: e.code, source: e.source, message: e.message }));
}
