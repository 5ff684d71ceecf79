// userfaultfd(2) EMFILE in a child process: lower RLIMIT_NOFILE to 0 with prlimit64, try to open
// a uffd via the syscall and via /dev/userfaultfd, restore the limit, print the codes as JSON.
import { libc } from "../../ffi/mod.ts";
import { UffdError, Userfaultfd } from "../../mod.ts";

const NR_prlimit64 = 302;
const RLIMIT_NOFILE = 7;
const old = new BigUint64Array(2);
const zero = new BigUint64Array(2);

function codeOf(f: () => unknown): string {
  try {
    (f() as Userfaultfd).close();
    return "OK";
  } catch (e) {
    return e instanceof UffdError ? e.code : String(e);
  }
}

if (libc.syscall(NR_prlimit64, 0, RLIMIT_NOFILE, 0, libc.addressOf(old)) !== 0) {
  throw new Error("prlimit64 get");
}
zero[1] = old[1]; // keep the hard limit, soft limit 0
let syscall = "", device = "", source = "";
if (libc.syscall(NR_prlimit64, 0, RLIMIT_NOFILE, libc.addressOf(zero), 0) !== 0) {
  throw new Error("prlimit64 set");
}
try {
  syscall = codeOf(() => Userfaultfd.open({ via: "syscall" }));
  device = codeOf(() => Userfaultfd.open({ via: "device" }));
  try {
    Userfaultfd.open({ via: "syscall" });
  } catch (e) {
    source = (e as UffdError).source;
  }
} finally {
  libc.syscall(NR_prlimit64, 0, RLIMIT_NOFILE, libc.addressOf(old), 0);
}
const after = Userfaultfd.open();
after.close();
console.log(JSON.stringify({ syscall, device, source, afterRestore: true }));
