// Close-on-exec across exec(2) without the runtime's spawn (Bun closes every descriptor in the
// processes it spawns, which would hide the difference): opens one userfaultfd with the default
// closeOnExec and one with closeOnExec: false, then replaces this very process with `sh` through
// a raw execve(2). sh prints, one per line:
//   pid <same|other>          whether sh runs in this process (the exec kept the pid)
//   cloexec <fd> <readlink>   what the close-on-exec descriptor's number is in sh
//   inherited <fd> <readlink> the same for the closeOnExec: false one
// Run by tests/lifecycle.test.ts. Prints "execve failed: <errno>" if the exec itself fails.
import { libc } from "../../ffi/mod.ts";
import { Userfaultfd } from "../../mod.ts";
import { cstring } from "../../src/memory.ts";

const NR_execve = 59;
const NR_getpid = 39;
const NR_fcntl = 72;
const F_SETFD = 2;

const cloexec = Userfaultfd.open();
const inherited = Userfaultfd.open({ closeOnExec: false });
const script = 'if [ "$$" = "$1" ]; then echo "pid same"; else echo "pid other"; fi; ' +
  'echo "cloexec $2 $(readlink /proc/$$/fd/$2)"; echo "inherited $3 $(readlink /proc/$$/fd/$3)"';
const path = cstring("/bin/sh");
const args = [
  "sh",
  "-c",
  script,
  "sh", // $0
  String(libc.syscall(NR_getpid)), // $1
  String(cloexec.fd), // $2
  String(inherited.fd), // $3
].map(cstring);
const argv = new BigUint64Array([...args.map((s) => BigInt(libc.addressOf(s))), 0n]);
const env = [cstring("PATH=/usr/bin:/bin")];
const envp = new BigUint64Array([BigInt(libc.addressOf(env[0])), 0n]);
// Node marks its stdin, stdout and stderr close-on-exec: clear that, or sh could not print.
for (const fd of [0, 1, 2]) libc.syscall(NR_fcntl, fd, F_SETFD, 0);
libc.syscall(NR_execve, libc.addressOf(path), libc.addressOf(argv), libc.addressOf(envp));
// only reached when execve failed
console.log(`execve failed: ${libc.errno()}`);
void [path, args, env];
cloexec.close();
inherited.close();
