// Child process of the sigbus/sigbus-wp ports (tests/selftests_signals.test.ts). A SIGBUS from
// UFFD_FEATURE_SIGBUS kills a JavaScript process (no siglongjmp), so each fault that the
// kernel test catches and survives is one run of this script, asserted by the parent.
// Usage: selftest_sigbus.ts <mem type: anon|shmem|shmem-private|hugetlb|hugetlb-private> 0|1 missing|copy|unprotect|released
import { writeSync } from "node:fs";
import process from "node:process";
import { type FeatureName, Mapping, Userfaultfd } from "../../mod.ts";
import {
  allocArea,
  fillPattern,
  findPatternMismatch,
  type MemType,
  releasePages,
} from "../helpers/selftest_common.ts";

const [mt, wpArg, step] = process.argv.slice(2) as [MemType, string, string];
const wp = wpArg === "1";
const say = (line: string) => writeSync(1, line + "\n");

const features: FeatureName[] = ["SIGBUS", "EVENT_FORK"];
if (wp) features.push("PAGEFAULT_FLAG_WP", "WP_HUGETLBFS_SHMEM");
const area = allocArea(mt, 2, false);
const ps = area.ps;
const src = Mapping.anonymous(2 * ps);
fillPattern(src.bytes(), 0, ps);
const uffd = Userfaultfd.open({ features, nonBlocking: true });
uffd.register(area.dst, { missing: true, wp });
say("registered=1");
const view = new Uint8Array(area.dst.bytes().buffer, area.dst.bytes().byteOffset, ps);

function copyPage(): void {
  say(`copied=${uffd.copy({ start: area.dst.start, len: ps, src: src.start, wp })}`);
  say(`read_ok=${findPatternMismatch(area.dst.bytes(), 0, ps) === -1 ? 1 : 0}`);
}

switch (step) {
  case "missing":
    // A missing page: SIGBUS instead of a userfault.
    say("touch=1");
    say(`value=${Atomics.load(view, 0)}`);
    break;
  case "copy":
    copyPage();
    // Writing the value back: a wp fault, so SIGBUS with -wp; fine without.
    say("write=1");
    Atomics.store(view, 0, Atomics.load(view, 0));
    say("write_ok=1");
    break;
  case "unprotect":
    copyPage();
    uffd.writeprotect({ start: area.dst.start, len: ps, wp: false });
    say("write=1");
    Atomics.store(view, 0, 0x77);
    say(`write_ok=${Atomics.load(view, 0) === 0x77 ? 1 : 0}`);
    break;
  case "released":
    // The robustness half (signal_test 2): released pages fault again, and SIGBUS again.
    copyPage();
    releasePages(mt, area.dst);
    say("released=1");
    say(`value=${Atomics.load(view, 0)}`);
    break;
  default:
    say(`error=unknown step ${step}`);
    process.exit(2);
}
// No userfault is ever queued in SIGBUS mode.
say(`events=${uffd.readEvent({ timeout: 0 }) === undefined ? 0 : 1}`);
say("survived=1");
uffd.close();
area.close();
src.close();
