// Child process of the poison port (tests/selftests_signals.test.ts): a Worker touches the
// listed pages in order, this thread resolves odd pages with a zero-filled COPY and poisons
// even ones; touching a poisoned page kills the process with SIGBUS, which the parent asserts.
// (uffd_poison_test catches each SIGBUS with siglongjmp; JavaScript cannot, so one run ends at
// the first poisoned page.)
// Usage: selftest_poison.ts <mem type: anon|shmem|shmem-private|hugetlb|hugetlb-private> <pages> <i,j,...>
import { writeSync } from "node:fs";
import process from "node:process";
import { Mapping, Userfaultfd } from "../../mod.ts";
import { Toucher, within } from "../helpers/toucher.ts";
import { allocArea, findByteMismatch, type MemType } from "../helpers/selftest_common.ts";

const [mt, nArg, list] = process.argv.slice(2) as [MemType, string, string];
const say = (line: string) => writeSync(1, line + "\n");
const n = Number(nArg);
const area = allocArea(mt, n, false);
const ps = area.ps;
using zero = Mapping.anonymous(ps); // memset(area_src, 0)
using uffd = Userfaultfd.open({ features: ["POISON"], nonBlocking: true });
const reg = uffd.register(area.dst, { missing: true });
say(`ioctls=${reg.ioctls.join(",")}`);
const toucher = new Toucher();
try {
  for (const k of list.split(",").map(Number)) {
    const touch = toucher.read(area.dst.page(k), ps);
    const ev = uffd.readEvent({ timeout: 2000 });
    if (!ev || ev.type !== "pagefault") {
      say(`error=no fault for page ${k}: ${JSON.stringify(ev)}`);
      process.exit(3);
    }
    say(
      `fault=${k} kind=${ev.kind} write=${ev.write ? 1 : 0} address_ok=${
        ev.address === area.dst.page(k) ? 1 : 0
      }`,
    );
    if (k % 2 === 1) {
      say(`copied=${k} bytes=${uffd.copy({ start: ev.address, len: ps, src: zero.start })}`);
      await within(touch, 5000, `read of page ${k}`);
      say(`zero=${k} ok=${findByteMismatch(area.dst.bytes(), k, ps, 0) === -1 ? 1 : 0}`);
    } else {
      // DONTWAKE, so the byte count is printed before the woken reader dies; then WAKE.
      say(`poisoned=${k} updated=${uffd.poison({ start: ev.address, len: ps, dontwake: true })}`);
      uffd.wake({ start: ev.address, len: ps });
      await within(touch, 5000, `read of poisoned page ${k}`);
      say(`survived=${k}`);
      process.exit(4);
    }
  }
  say("done=1");
} finally {
  toucher.close();
}
process.exit(0);
