// UFFDIO_API with UFFD_FEATURE_EVENT_FORK needs CAP_SYS_PTRACE. Run by tests/lifecycle.test.ts,
// once under setpriv (CAP_SYS_PTRACE dropped) and once as is; prints one JSON line:
//   ptrace   whether this process has CAP_SYS_PTRACE in its effective set (/proc/self/status)
//   open     Userfaultfd.open({ features: ["EVENT_FORK"] }): { ok } or the UffdError's fields
//   raw      the kernel's errno for a raw UFFDIO_API asking for EVENT_FORK (0: it succeeded)
//   after    on that same descriptor after a failed raw handshake, the library's handshake with
//            THREAD_ID: the enabled features, or the error code
import { ioctl, rawIoctl, UffdError, Userfaultfd } from "../../mod.ts";
import { readTextFile } from "../../src/memory.ts";
import { uffdio_api } from "../../src/structs.ts";

const CAP_SYS_PTRACE = 19;
const UFFD_FEATURE_EVENT_FORK = 1 << 1;

/** The UffdError's identifying fields, or rethrow. */
function describeError(e: unknown): Record<string, unknown> {
  if (!(e instanceof UffdError)) throw e;
  return { ok: false, op: e.op, code: e.code, source: e.source };
}

const capEff = readTextFile("/proc/self/status")?.match(/^CapEff:\s+([0-9a-f]+)/m)?.[1] ?? "0";
const ptrace = (parseInt(capEff.slice(-8), 16) & (1 << CAP_SYS_PTRACE)) !== 0;

let open: Record<string, unknown>;
try {
  using u = Userfaultfd.open({ features: ["EVENT_FORK"] });
  open = { ok: true, features: u.features };
} catch (e) {
  open = describeError(e);
}

let raw: number;
let after: unknown;
{
  using u = Userfaultfd.open({ handshake: false });
  const r = rawIoctl(
    u.fd,
    ioctl.UFFDIO_API,
    uffdio_api().set("api", 0xaa).set("features", UFFD_FEATURE_EVENT_FORK).bytes,
  );
  raw = r.errno;
  if (raw !== 0) {
    try {
      after = u.api(["THREAD_ID"]).features;
    } catch (e) {
      after = describeError(e).code;
    }
  }
}

console.log(JSON.stringify({ ptrace, open, raw, after }));
