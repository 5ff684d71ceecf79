// Every error case of userfaultfd(2) and ioctl_userfaultfd(2) (man-pages 6.03) that Linux 6.18
// can produce here, asserted by errno name (`e.code`). Where the library rejects an input before
// the syscall (alignment, length, ranges outside library mappings, unknown option keys, a closed
// descriptor, no handshake yet), the test also sends the same input to the kernel with rawIoctl
// and the struct codecs and asserts the kernel answers with the same errno.
//
// Not producible here, and why:
// - userfaultfd(2) ENFILE: needs the system-wide file limit (fs.file-max) exhausted; this machine
//   is shared, so lowering it would break other processes.
// - userfaultfd(2) ENOMEM, UFFDIO_CONTINUE ENOMEM: kernel allocation failures; no fault injection
//   (failslab) is available and exhausting memory would hit the other agents.
// - userfaultfd(2) EPERM: we run as root with CAP_SYS_PTRACE. tests/open.test.ts produces the real
//   EPERM in a child without CAP_SYS_PTRACE (setpriv); here only the message is checked.
// - UFFDIO_COPY ENOSPC: returned only by Linux 4.11-4.13; 6.18 answers ESRCH instead.
// - UFFDIO_COPY / UFFDIO_ZEROPAGE ESRCH (the faulting process exited): needs a uffd of another
//   process; produced in tests/fdpass.test.ts with the C fixture, which sends its uffd and exits.
// - UFFDIO_CONTINUE ESRCH: same kernel check (mmget_not_zero) as COPY/ZEROPAGE, not repeated.
// - UFFDIO_WRITEPROTECT EFAULT "generic fault during processing": no user-reachable input makes
//   the page-table walk fail; the argp EFAULT of the same ioctl is produced below.
// - UFFDIO_COPY / UFFDIO_CONTINUE ENOENT "layout changed during the operation": a race inside one
//   ioctl; the same check (no registered VMA at dst) is produced deterministically below.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { libc } from "../ffi/mod.ts";
import {
  ERRNO,
  FaultServer,
  ioctl,
  Mapping,
  PagemapScanner,
  pageSize,
  rawIoctl,
  UffdError,
  Userfaultfd,
} from "../mod.ts";
import {
  type U64Struct,
  uffdio_api,
  uffdio_continue,
  uffdio_copy,
  uffdio_move,
  uffdio_poison,
  uffdio_range,
  uffdio_register,
  uffdio_writeprotect,
  uffdio_zeropage,
} from "../src/structs.ts";
import { runChild } from "./helpers/child.ts";
import { within } from "./helpers/toucher.ts";
import { LibcWorker } from "./children/ops_libc.ts";
import { nobodySkipReason, worldReadableTree } from "./helpers/world_readable.ts";

const E = {
  EPERM: 1,
  ENOENT: 2,
  EBADF: 9,
  EAGAIN: 11,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  EINVAL: 22,
  ENOTTY: 25,
};
const name = (errno: number) => Object.entries(E).find(([, v]) => v === errno)?.[0] ?? `E${errno}`;

/** Asserts `f` throws a UffdError with this code (and source, when given); returns it. */
function throwsCode(f: () => unknown, code: string, source?: "kernel" | "library"): UffdError {
  let err: UffdError | undefined;
  assert.throws(f, (e: unknown) => {
    assert.ok(e instanceof UffdError, `expected UffdError, got ${e}`);
    assert.equal(e.code, code, e.message);
    if (source) assert.equal(e.source, source, e.message);
    err = e;
    return true;
  });
  return err!;
}

/** The kernel's errno name for a raw ioctl (or "OK"). */
function kernel(fd: number, req: number, s: { bytes: Uint8Array }): string {
  const r = rawIoctl(fd, req, s.bytes);
  return r.result === 0 ? "OK" : name(r.errno);
}

/** An address range with no mapping at all. */
function hole(len = pageSize): number {
  const m = Mapping.anonymous(len);
  const a = m.start;
  m.close();
  return a;
}

/** A struct-sized view over PROT_NONE memory: the kernel cannot read or write it (EFAULT). */
function unreadable(m: Mapping, size: number): Uint8Array {
  return m.bytes().subarray(0, size);
}

/** The range ioctls, each as a library call and as a raw struct for the same input. */
interface RangeOp {
  op: string;
  req: number;
  raw(start: number, len: number, mode?: number): U64Struct<string>;
  lib(u: Userfaultfd, start: number, len: number, extra?: Record<string, unknown>): unknown;
  /** What the kernel answers for a range with no mapping. */
  noMapping: string;
  /** A mode bit the kernel does not know (undefined: the ioctl has no mode). */
  badMode?: number;
  /** How big the struct is (for the EFAULT view). */
  size: number;
}

function rangeOps(srcAddr: number): RangeOp[] {
  return [
    {
      op: "UFFDIO_REGISTER",
      req: ioctl.UFFDIO_REGISTER,
      raw: (s, l, m = 1) => uffdio_register().set("start", s).set("len", l).set("mode", m),
      lib: (u, s, l, x) => u.register({ start: s, len: l }, { missing: true, ...x }),
      noMapping: "EINVAL",
      badMode: 8,
      size: 32,
    },
    {
      op: "UFFDIO_UNREGISTER",
      req: ioctl.UFFDIO_UNREGISTER,
      raw: (s, l) => uffdio_range().set("start", s).set("len", l),
      lib: (u, s, l) => u.unregister({ start: s, len: l }),
      noMapping: "EINVAL",
      size: 16,
    },
    {
      op: "UFFDIO_WAKE",
      req: ioctl.UFFDIO_WAKE,
      raw: (s, l) => uffdio_range().set("start", s).set("len", l),
      lib: (u, s, l) => u.wake({ start: s, len: l }),
      noMapping: "OK", // the kernel wakes nobody and succeeds; the library is stricter
      size: 16,
    },
    {
      op: "UFFDIO_COPY",
      req: ioctl.UFFDIO_COPY,
      raw: (s, l, m = 0) => uffdio_copy().set("dst", s).set("src", srcAddr).set("len", l).set("mode", m),
      lib: (u, s, l, x) => u.copy({ start: s, len: l, src: srcAddr, ...x }),
      noMapping: "ENOENT",
      badMode: 4,
      size: 40,
    },
    {
      op: "UFFDIO_ZEROPAGE",
      req: ioctl.UFFDIO_ZEROPAGE,
      raw: (s, l, m = 0) => uffdio_zeropage().set("start", s).set("len", l).set("mode", m),
      lib: (u, s, l, x) => u.zeropage({ start: s, len: l, ...x }),
      noMapping: "ENOENT",
      badMode: 2,
      size: 32,
    },
    {
      op: "UFFDIO_WRITEPROTECT",
      req: ioctl.UFFDIO_WRITEPROTECT,
      raw: (s, l, m = 1) => uffdio_writeprotect().set("start", s).set("len", l).set("mode", m),
      lib: (u, s, l, x) => u.writeprotect({ start: s, len: l, wp: true, ...x }),
      noMapping: "ENOENT",
      badMode: 4,
      size: 24,
    },
    {
      op: "UFFDIO_CONTINUE",
      req: ioctl.UFFDIO_CONTINUE,
      raw: (s, l, m = 0) => uffdio_continue().set("start", s).set("len", l).set("mode", m),
      lib: (u, s, l, x) => u.continue({ start: s, len: l, ...x }),
      noMapping: "ENOENT",
      badMode: 4,
      size: 32,
    },
    {
      op: "UFFDIO_POISON",
      req: ioctl.UFFDIO_POISON,
      raw: (s, l, m = 0) => uffdio_poison().set("start", s).set("len", l).set("mode", m),
      lib: (u, s, l, x) => u.poison({ start: s, len: l, ...x }),
      noMapping: "ENOENT",
      badMode: 2,
      size: 32,
    },
    {
      op: "UFFDIO_MOVE",
      req: ioctl.UFFDIO_MOVE,
      raw: (s, l, m = 0) => uffdio_move().set("dst", s).set("src", srcAddr).set("len", l).set("mode", m),
      lib: (u, s, l, x) => u.move({ start: s, len: l, src: srcAddr, ...x }),
      noMapping: "ENOENT",
      badMode: 4,
      size: 40,
    },
  ];
}

describe("library checks match the kernel's errno", () => {
  const features = ["POISON", "MOVE"] as const;

  it("misaligned start, misaligned length, zero length: EINVAL from both", () => {
    using uffd = Userfaultfd.open({ features: [...features] });
    using mem = Mapping.anonymous(4 * pageSize);
    using src = Mapping.anonymous(4 * pageSize);
    uffd.register(mem, { missing: true, wp: true });
    for (const o of rangeOps(src.start)) {
      for (
        const [what, s, l] of [
          ["misaligned start", mem.start + 1, pageSize],
          ["misaligned length", mem.start, pageSize + 1],
          ["zero length", mem.start, 0],
        ] as const
      ) {
        const e = throwsCode(() => o.lib(uffd, s, l), "EINVAL", "library");
        assert.equal(e.op, o.op);
        assert.equal(kernel(uffd.fd, o.req, o.raw(s, l)), "EINVAL", `${o.op} ${what}: kernel`);
      }
    }
  });

  it("a range with no mapping: the library gives the kernel's errno (ENOENT or EINVAL)", () => {
    using uffd = Userfaultfd.open({ features: [...features] });
    using src = Mapping.anonymous(pageSize);
    const nowhere = hole(2 * pageSize);
    for (const o of rangeOps(src.start)) {
      const k = kernel(uffd.fd, o.req, o.raw(nowhere, pageSize));
      assert.equal(k, o.noMapping, `${o.op}: kernel`);
      // WAKE: the kernel succeeds (nobody to wake); the library refuses a range it cannot vouch for
      throwsCode(() => o.lib(uffd, nowhere, pageSize), k === "OK" ? "EINVAL" : k, "library");
    }
  });

  it("unknown option keys (library) and unknown mode bits (kernel): EINVAL", () => {
    using uffd = Userfaultfd.open({ features: [...features] });
    using mem = Mapping.anonymous(4 * pageSize);
    using src = Mapping.anonymous(4 * pageSize);
    uffd.register(mem, { missing: true, wp: true });
    for (const o of rangeOps(src.start)) {
      if (o.badMode === undefined) continue;
      throwsCode(() => o.lib(uffd, mem.start, pageSize, { bogus: true }), "EINVAL", "library");
      assert.equal(kernel(uffd.fd, o.req, o.raw(mem.start, pageSize, o.badMode)), "EINVAL", o.op);
    }
    // REGISTER with mode 0 (no mode at all) is EINVAL; the library turns {} into MISSING but
    // refuses modes that are all false, as the kernel would
    assert.equal(
      kernel(uffd.fd, ioctl.UFFDIO_REGISTER, uffdio_register().set("start", mem.start).set("len", pageSize)),
      "EINVAL",
    );
    throwsCode(() => uffd.register(src, { missing: false, wp: false, minor: false }), "EINVAL", "library");
  });

  it("every operation before the UFFDIO_API handshake: EINVAL from both", () => {
    using uffd = Userfaultfd.open({ handshake: false });
    using mem = Mapping.anonymous(pageSize);
    using src = Mapping.anonymous(pageSize);
    for (const o of rangeOps(src.start)) {
      throwsCode(() => o.lib(uffd, mem.start, pageSize), "EINVAL", "library");
      assert.equal(kernel(uffd.fd, o.req, o.raw(mem.start, pageSize)), "EINVAL", o.op);
    }
  });

  it("a closed descriptor: EBADF from both", () => {
    using mem = Mapping.anonymous(pageSize);
    using src = Mapping.anonymous(pageSize);
    const uffd = Userfaultfd.open({ features: [...features] });
    const fd = uffd.fd;
    uffd.close();
    assert.ok(libc.syscall(72, fd, 1) < 0, "the number is free (fcntl F_GETFD fails)");
    for (const o of rangeOps(src.start)) {
      throwsCode(() => o.lib(uffd, mem.start, pageSize), "EBADF", "library");
      assert.equal(kernel(fd, o.req, o.raw(mem.start, pageSize)), "EBADF", o.op);
    }
    throwsCode(() => uffd.api(), "EBADF", "library");
    assert.equal(kernel(fd, ioctl.UFFDIO_API, uffdio_api().set("api", 0xaa)), "EBADF");
  });

  it("a feature the descriptor was not opened with: the library refuses POISON/MOVE (the kernel would not)", () => {
    using uffd = Userfaultfd.open();
    using mem = Mapping.anonymous(2 * pageSize);
    using src = Mapping.anonymous(pageSize);
    uffd.register(mem);
    const e = throwsCode(() => uffd.poison({ start: mem.start, len: pageSize }), "EINVAL", "library");
    assert.match(e.message, /POISON/);
    throwsCode(() => uffd.move({ start: mem.start, src: src.start, len: pageSize }), "EINVAL", "library");
    // Linux 6.18 does not require the feature bits for these two ioctls: both succeed raw
    assert.equal(
      kernel(uffd.fd, ioctl.UFFDIO_POISON, uffdio_poison().set("start", mem.start).set("len", pageSize)),
      "OK",
    );
  });
});

describe("userfaultfd(2) and read(2) errors", () => {
  it("EINVAL: unsupported flags", () => {
    assert.equal(libc.syscall(323, 0x10), -1);
    assert.equal(libc.errno(), E.EINVAL);
    assert.equal(libc.syscall(323, 0x4000_0000), -1);
    assert.equal(libc.errno(), E.EINVAL);
  });

  it("EMFILE: the per-process descriptor limit is reached (child process, RLIMIT_NOFILE lowered)", {
    timeout: 30000,
  }, () => {
    const r = runChild(fileURLToPath(new URL("./children/ops_emfile.ts", import.meta.url)));
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout.trim().split("\n").pop()!);
    assert.deepEqual(out, { syscall: "EMFILE", device: "EMFILE", source: "kernel", afterRestore: true });
  });

  it("EPERM: the message says what to do (real EPERM: tests/open.test.ts)", () => {
    const e = new UffdError("open", 1);
    assert.equal(e.code, "EPERM");
    assert.equal(e.source, "kernel");
    assert.match(e.message, /vm\.unprivileged_userfaultfd=1/);
    assert.match(e.message, /CAP_SYS_PTRACE/);
    assert.match(e.message, /\/dev\/userfaultfd/);
    assert.match(e.message, /userModeOnly: true/);
  });

  it("read(2) EINVAL: before the UFFDIO_API handshake", () => {
    using uffd = Userfaultfd.open({ handshake: false });
    throwsCode(() => uffd.readEvent(), "EINVAL", "kernel");
  });

  it("read(2) EINVAL: a buffer smaller than struct uffd_msg", () => {
    using uffd = Userfaultfd.open({ nonBlocking: true });
    assert.equal(libc.read(uffd.fd, new Uint8Array(16), 16), -1);
    assert.equal(libc.errno(), E.EINVAL);
    // 32 bytes is enough: nothing pending on a non-blocking descriptor is EAGAIN instead
    assert.equal(libc.read(uffd.fd, new Uint8Array(32), 32), -1);
    assert.equal(libc.errno(), E.EAGAIN);
  });
});

describe("ioctl_userfaultfd(2) errors", () => {
  it("UFFDIO_API EINVAL: a second handshake; an unsupported API version; unknown feature bits (struct zeroed)", () => {
    using uffd = Userfaultfd.open({ handshake: false });
    const badApi = uffdio_api().set("api", 0xab).set("features", 0).set("ioctls", 77);
    assert.equal(kernel(uffd.fd, ioctl.UFFDIO_API, badApi), "EINVAL");
    assert.deepEqual([...badApi.words], [0, 0, 0, 0, 0, 0], "the kernel zeroes the struct");
    const badFeature = uffdio_api().set("api", 0xaa).set("features", 2 ** 40).set("ioctls", 77);
    assert.equal(kernel(uffd.fd, ioctl.UFFDIO_API, badFeature), "EINVAL");
    assert.deepEqual([...badFeature.words], [0, 0, 0, 0, 0, 0]);
    // neither failure used up the handshake
    uffd.api(["THREAD_ID"]);
    throwsCode(() => uffd.api(), "EINVAL", "library");
    assert.equal(kernel(uffd.fd, ioctl.UFFDIO_API, uffdio_api().set("api", 0xaa)), "EINVAL");
  });

  it("EFAULT: argp points at memory the kernel cannot access, for every ioctl", () => {
    using uffd = Userfaultfd.open({ features: ["POISON", "MOVE"] });
    using none = Mapping.anonymous(pageSize);
    none.protect(0); // PROT_NONE
    assert.equal(kernel(uffd.fd, ioctl.UFFDIO_API, { bytes: unreadable(none, 24) }), "EFAULT");
    for (const o of rangeOps(0)) {
      assert.equal(kernel(uffd.fd, o.req, { bytes: unreadable(none, o.size) }), "EFAULT", o.op);
    }
    // and UFFDIO_API before the handshake
    using fresh = Userfaultfd.open({ handshake: false });
    assert.equal(kernel(fresh.fd, ioctl.UFFDIO_API, { bytes: unreadable(none, 24) }), "EFAULT");
  });

  it("unknown ioctl: EINVAL on a userfaultfd; a userfaultfd ioctl on another file: ENOTTY", () => {
    using uffd = Userfaultfd.open();
    using shm = Mapping.memfd(pageSize);
    const s = uffdio_api();
    assert.equal(kernel(uffd.fd, 0xC018AA3E, s), "EINVAL"); // _UFFDIO nr 0x3e: none
    assert.equal(kernel(uffd.fd, 0x1234, s), "EINVAL");
    assert.equal(kernel(shm.fd, ioctl.UFFDIO_API, s), "ENOTTY");
  });

  it("UFFDIO_REGISTER EBUSY: the range is registered with another userfaultfd", () => {
    using a = Userfaultfd.open();
    using b = Userfaultfd.open();
    using mem = Mapping.anonymous(2 * pageSize);
    a.register({ start: mem.page(1), len: pageSize });
    const e = throwsCode(() => b.register(mem), "EBUSY", "kernel");
    assert.match(e.message, /another userfaultfd/);
    b.register({ start: mem.start, len: pageSize }); // the part a does not hold is fine
  });

  it("UFFDIO_REGISTER / UNREGISTER EINVAL: an incompatible mapping; a range past TASK_SIZE", () => {
    using uffd = Userfaultfd.open();
    using file = Mapping.file(fileURLToPath(import.meta.url)); // private file mapping: not anon/shmem/hugetlb
    using anon = Mapping.anonymous(pageSize);
    throwsCode(() => uffd.register(file), "EINVAL", "kernel");
    throwsCode(() => uffd.unregister(file), "EINVAL", "kernel");
    throwsCode(() => uffd.register(anon, { minor: true }), "EINVAL", "kernel"); // MINOR needs shmem/hugetlb
    const past = uffdio_register().set("start", 2 ** 47).set("len", pageSize).set("mode", 1);
    assert.equal(kernel(uffd.fd, ioctl.UFFDIO_REGISTER, past), "EINVAL");
    assert.equal(
      kernel(uffd.fd, ioctl.UFFDIO_WAKE, uffdio_range().set("start", anon.start).set("len", 2 ** 47)),
      "EINVAL",
    );
  });

  it("UFFDIO_COPY EINVAL: src + len wraps around; dst past TASK_SIZE", () => {
    using uffd = Userfaultfd.open();
    using mem = Mapping.anonymous(pageSize);
    uffd.register(mem);
    const wrap = uffdio_copy().set("dst", mem.start).set("len", pageSize);
    wrap.words[2] = 0xfffff000; // src = 0xfffffffffffff000
    wrap.words[3] = 0xffffffff;
    assert.equal(kernel(uffd.fd, ioctl.UFFDIO_COPY, wrap), "EINVAL");
    const past = uffdio_copy().set("dst", 2 ** 47).set("src", mem.start).set("len", pageSize);
    assert.equal(kernel(uffd.fd, ioctl.UFFDIO_COPY, past), "EINVAL");
  });

  it("UFFDIO_COPY / ZEROPAGE / CONTINUE / POISON / WRITEPROTECT ENOENT, MOVE EINVAL: the range is mapped but not registered", () => {
    using uffd = Userfaultfd.open({ features: ["POISON", "MOVE"] });
    using mem = Mapping.anonymous(pageSize);
    using src = Mapping.anonymous(pageSize);
    src.bytes()[0] = 1;
    // the descriptor knows what it registered: refused before the syscall, with the kernel's errno
    for (const o of rangeOps(src.start)) {
      if (["UFFDIO_REGISTER", "UFFDIO_UNREGISTER", "UFFDIO_WAKE"].includes(o.op)) continue;
      const k = kernel(uffd.fd, o.req, o.raw(mem.start, pageSize));
      assert.equal(k, o.op === "UFFDIO_MOVE" ? "EINVAL" : "ENOENT", `${o.op}: kernel`);
      const e = throwsCode(() => o.lib(uffd, mem.start, pageSize), k, "library");
      assert.match(e.message, /not registered with this userfaultfd/, o.op);
    }
    // WAKE and UNREGISTER of a range never registered succeed in the kernel: the library lets them
    uffd.wake(mem);
    uffd.unregister(mem);
  });

  it("UFFDIO_WRITEPROTECT ENOENT: registered without MODE_WP; EINVAL: WP together with DONTWAKE", () => {
    using uffd = Userfaultfd.open();
    using mem = Mapping.anonymous(pageSize);
    uffd.register(mem, { missing: true });
    const e = throwsCode(
      () => uffd.writeprotect({ start: mem.start, len: pageSize, wp: true }),
      "ENOENT",
      "library",
    );
    assert.match(e.message, /without wp mode/);
    const raw = uffdio_writeprotect().set("start", mem.start).set("len", pageSize).set("mode", 1);
    assert.equal(kernel(uffd.fd, ioctl.UFFDIO_WRITEPROTECT, raw), "ENOENT");
    uffd.unregister(mem);
    uffd.register(mem, { missing: true, wp: true });
    throwsCode(
      () => uffd.writeprotect({ start: mem.start, len: pageSize, wp: true, dontwake: true }),
      "EINVAL",
      "kernel",
    );
    uffd.writeprotect({ start: mem.start, len: pageSize, wp: false, dontwake: true }); // allowed without WP
  });

  it("EEXIST: COPY, ZEROPAGE, CONTINUE and MOVE onto a page that is already there", () => {
    using uffd = Userfaultfd.open({ features: ["MINOR_SHMEM", "MOVE"] });
    using mem = Mapping.anonymous(pageSize);
    using src = Mapping.anonymous(pageSize);
    using shm = Mapping.memfd(pageSize);
    using alias = shm.alias();
    uffd.register(mem);
    uffd.zeropage(mem);
    src.bytes()[0] = 1;
    assert.equal(
      throwsCode(() => uffd.copy({ start: mem.start, len: pageSize, src: src.start }), "EEXIST").result,
      -17,
    );
    assert.equal(throwsCode(() => uffd.zeropage({ start: mem.start, len: pageSize }), "EEXIST").result, -17);
    assert.equal(
      throwsCode(() => uffd.move({ start: mem.start, len: pageSize, src: src.start }), "EEXIST").result,
      -17,
    );
    alias.bytes()[0] = 5;
    uffd.register(shm, { minor: true });
    assert.equal(uffd.continue({ start: shm.start, len: pageSize }), pageSize);
    assert.equal(throwsCode(() => uffd.continue({ start: shm.start, len: pageSize }), "EEXIST").result, -17);
  });

  it("EAGAIN: COPY, ZEROPAGE and CONTINUE that stop part way report the bytes done", () => {
    using uffd = Userfaultfd.open({ features: ["MINOR_SHMEM"] });
    using mem = Mapping.anonymous(2 * pageSize);
    using shm = Mapping.memfd(2 * pageSize);
    using alias = shm.alias();
    uffd.register(mem);
    uffd.zeropage({ start: mem.page(1), len: pageSize });
    const c = throwsCode(
      () => uffd.copy({ start: mem.start, len: 2 * pageSize, src: new Uint8Array(2 * pageSize) }),
      "EAGAIN",
      "kernel",
    );
    assert.deepEqual([c.result, c.done], [pageSize, pageSize]);
    uffd.unregister(mem);
    mem.dontneed();
    uffd.register(mem);
    uffd.zeropage({ start: mem.page(1), len: pageSize });
    const z = throwsCode(() => uffd.zeropage({ start: mem.start, len: 2 * pageSize }), "EAGAIN", "kernel");
    assert.deepEqual([z.result, z.done], [pageSize, pageSize]);
    alias.bytes().fill(1);
    uffd.register(shm, { minor: true });
    uffd.continue({ start: shm.page(1), len: pageSize });
    const k = throwsCode(() => uffd.continue({ start: shm.start, len: 2 * pageSize }), "EAGAIN", "kernel");
    assert.deepEqual([k.result, k.done], [pageSize, pageSize]);
  });

  it("EAGAIN: COPY and WRITEPROTECT while a REMOVE event is unread (the address space is changing)", {
    timeout: 20000,
  }, async () => {
    const w = new LibcWorker();
    const uffd = Userfaultfd.open({ features: ["EVENT_REMOVE"], nonBlocking: true });
    const mem = Mapping.anonymous(2 * pageSize);
    let advised: Promise<unknown> = Promise.resolve();
    try {
      uffd.register(mem, { missing: true, wp: true });
      uffd.zeropage({ start: mem.start, len: pageSize });
      advised = w.madvise(mem.start, pageSize, 4 /* MADV_DONTNEED: blocks until the event is read */);
      const pfd = new Int32Array([uffd.fd, 1]);
      assert.equal(libc.poll(pfd, 1, 10000), 1, "the REMOVE event is queued");
      const c = throwsCode(
        () => uffd.copy({ start: mem.page(1), len: pageSize, src: new Uint8Array(pageSize) }),
        "EAGAIN",
        "kernel",
      );
      assert.equal(c.result, -11);
      throwsCode(
        () => uffd.writeprotect({ start: mem.page(1), len: pageSize, wp: true }),
        "EAGAIN",
        "kernel",
      );
      assert.deepEqual(uffd.readEvent({ timeout: 5000 }), {
        type: "remove",
        start: mem.start,
        end: mem.page(1),
      });
      assert.deepEqual(await within(advised, 10000, "madvise"), { ret: 0, errno: 0 });
      assert.equal(uffd.copy({ start: mem.page(1), len: pageSize, src: new Uint8Array(pageSize) }), pageSize);
    } finally {
      uffd.close();
      await Promise.race([advised, new Promise((r) => setTimeout(r, 5000))]);
      w.close();
      mem.close();
    }
  });

  it("UFFDIO_CONTINUE EFAULT: no page in the page cache for the range", () => {
    using uffd = Userfaultfd.open({ features: ["MINOR_SHMEM"] });
    using shm = Mapping.memfd(pageSize);
    uffd.register(shm, { minor: true });
    assert.equal(
      throwsCode(() => uffd.continue({ start: shm.start, len: pageSize }), "EFAULT", "kernel").result,
      -14,
    );
  });

  it("UFFDIO_MOVE ENOENT: the source page is a hole (without allowSrcHoles)", () => {
    using uffd = Userfaultfd.open({ features: ["MOVE"] });
    using mem = Mapping.anonymous(pageSize);
    using src = Mapping.anonymous(pageSize);
    uffd.register(mem);
    assert.equal(
      throwsCode(() => uffd.move({ start: mem.start, len: pageSize, src: src.start }), "ENOENT", "kernel")
        .result,
      -2,
    );
    assert.equal(
      uffd.move({ start: mem.start, len: pageSize, src: src.start, allowSrcHoles: true }),
      pageSize,
    );
  });
});

describe("hints depend on the operation", () => {
  const kernelPerm = (op: string, code: string) => new UffdError(op, ERRNO[code]).hint;

  it("the same errno gets the hint of the operation that failed", () => {
    // ENOENT: a missing file, a range not registered, no device node, a wp range, a source hole
    const enoent = [
      "open /srv/x.img",
      "UFFDIO_COPY",
      "UFFDIO_WRITEPROTECT",
      "UFFDIO_MOVE",
      "open /dev/userfaultfd",
    ]
      .map((op) => kernelPerm(op, "ENOENT"));
    assert.equal(new Set(enoent).size, enoent.length, enoent.join("\n"));
    assert.match(enoent[0], /no such file/);
    assert.match(enoent[1], /not registered with this userfaultfd/);
    assert.match(enoent[2], /wp mode/);
    assert.match(enoent[3], /hole/);
    assert.match(kernelPerm("UFFDIO_MOVE", "EINVAL"), /not registered with this userfaultfd/);
    assert.match(enoent[4], /no \/dev\/userfaultfd/);
    // EINVAL: register's causes are the memory and the mode, not UFFDIO_API's
    const einval = ["UFFDIO_REGISTER", "UFFDIO_API", "UFFDIO_ZEROPAGE", "UFFDIO_WRITEPROTECT", "read"]
      .map((op) => kernelPerm(op, "EINVAL"));
    assert.equal(new Set(einval).size, einval.length, einval.join("\n"));
    assert.match(einval[0], /mode/);
    assert.match(einval[0], /private file mapping/);
    assert.doesNotMatch(einval[0], /UFFDIO_API|handshake/);
    assert.match(einval[1], /handshake/);
    assert.match(einval[2], /hugetlb/);
    assert.match(einval[3], /dontwake/);
    assert.match(einval[4], /handshake/);
    // EPERM / EACCES
    assert.match(kernelPerm("open", "EPERM"), /vm\.unprivileged_userfaultfd/);
    assert.match(kernelPerm("open /dev/userfaultfd", "EACCES"), /setfacl/);
    assert.match(kernelPerm("open /srv/x.img", "EACCES"), /permissions/);
    assert.doesNotMatch(kernelPerm("open /srv/x.img", "EACCES"), /userfaultfd/);
    assert.match(kernelPerm("UFFDIO_API", "EPERM"), /EVENT_FORK needs CAP_SYS_PTRACE/);
    assert.match(kernelPerm("UFFDIO_REGISTER", "EPERM"), /read-only file mapping/);
    // EEXIST: a resolver lost a race (wake); POISON marks missing pages only
    assert.match(kernelPerm("UFFDIO_COPY", "EEXIST"), /wake\(\)/);
    assert.match(kernelPerm("UFFDIO_POISON", "EEXIST"), /missing pages only/);
    // an operation without hints of its own gets the errno's meaning, never another operation's cause
    for (const code of Object.keys(ERRNO)) {
      const h = kernelPerm("sendmsg", code);
      assert.doesNotMatch(h, /mapping changed|UFFDIO|register|vm\.unprivileged/, `${code}: ${h}`);
    }
  });

  it("Mapping.file(): a missing file names the path with open(2)'s hint", () => {
    const path = "/nonexistent-uffd-dir/disk.img";
    const e = throwsCode(() => Mapping.file(path), "ENOENT", "kernel");
    assert.equal(e.op, `open ${path}`);
    assert.ok(e.message.includes(path), e.message);
    assert.match(e.hint, /no such file/);
    assert.doesNotMatch(e.message, /mapping changed|unmapped or remapped/);
    const notDir = throwsCode(() => Mapping.file(`${fileURLToPath(import.meta.url)}/x`), "ENOTDIR");
    assert.match(notDir.hint, /not a directory/);
    const dir = throwsCode(() => Mapping.file(fileURLToPath(new URL(".", import.meta.url))), "EISDIR");
    assert.match(dir.message, /tests\/? failed: EISDIR: the path is a directory/);
  });

  it("a FaultServer file source with a missing file names the path with open(2)'s hint", async () => {
    const path = "/nonexistent-uffd-dir/snapshot.mem";
    await assert.rejects(FaultServer.start({ source: { kind: "file", path } }), (e: unknown) => {
      assert.ok(e instanceof UffdError, String(e));
      assert.equal(e.code, "ENOENT");
      assert.ok(e.message.includes(path), e.message);
      assert.match(e.message, /no such file/);
      assert.doesNotMatch(e.message, /mapping changed|unmapped or remapped/);
      return true;
    });
  });

  const asNobody = nobodySkipReason();
  it("Mapping.file(): an unreadable file names the path with open(2)'s EACCES hint (uid 65534)", {
    skip: asNobody,
    timeout: 30000,
  }, () => {
    using tree = worldReadableTree(["tests/children/file_open_child.ts"]);
    const secret = tree.path("secret.img");
    writeFileSync(secret, new Uint8Array(pageSize), { mode: 0o600 });
    const r = tree.runAsNobody("tests/children/file_open_child.ts", [secret]);
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout.trim().split("\n").pop()!);
    assert.equal(out.ok, false, r.stdout);
    assert.equal(out.code, "EACCES");
    assert.equal(out.op, `open ${secret}`);
    assert.match(out.message, /may not read the file/);
    assert.doesNotMatch(out.message, /userfaultfd/);
  });

  it("kernel errors carry their operation's hint", () => {
    using uffd = Userfaultfd.open();
    using file = Mapping.file(fileURLToPath(import.meta.url));
    assert.match(throwsCode(() => uffd.register(file), "EINVAL", "kernel").hint, /private file mapping/);
    using fresh = Userfaultfd.open({ handshake: false });
    assert.match(throwsCode(() => fresh.readEvent(), "EINVAL", "kernel").hint, /handshake/);
  });
});

describe("the descriptor knows what it registered", () => {
  const copyRaw = (uffd: Userfaultfd, dst: number, src: number) =>
    kernel(uffd.fd, ioctl.UFFDIO_COPY, uffdio_copy().set("dst", dst).set("src", src).set("len", pageSize));

  it("unregister() of a part: copy() there is refused before the syscall, the rest still works", () => {
    using uffd = Userfaultfd.open();
    using mem = Mapping.anonymous(3 * pageSize);
    using src = Mapping.anonymous(pageSize);
    uffd.register(mem);
    uffd.unregister({ start: mem.page(1), len: pageSize });
    const e = throwsCode(
      () => uffd.copy({ start: mem.page(1), len: pageSize, src: src.start }),
      "ENOENT",
      "library",
    );
    assert.match(e.message, /dst 0x[0-9a-f]+\+4096 is not registered with this userfaultfd/);
    assert.equal(copyRaw(uffd, mem.page(1), src.start), "ENOENT", "the kernel agrees");
    // a range over the hole is refused too; the registered pages on both sides are served
    throwsCode(() => uffd.zeropage({ start: mem.start, len: 2 * pageSize }), "ENOENT", "library");
    assert.equal(uffd.copy({ start: mem.start, len: pageSize, src: src.start }), pageSize);
    assert.equal(uffd.zeropage({ start: mem.page(2), len: pageSize }), pageSize);
    uffd.register({ start: mem.page(1), len: pageSize });
    assert.equal(uffd.zeropage({ start: mem.page(1), len: pageSize }), pageSize);
  });

  it("copy()/continue() with wp: true on a range registered without wp: EINVAL from both", () => {
    using uffd = Userfaultfd.open();
    using mem = Mapping.anonymous(pageSize);
    using src = Mapping.anonymous(pageSize);
    uffd.register(mem, { missing: true });
    const e = throwsCode(
      () => uffd.copy({ start: mem.start, len: pageSize, src: src.start, wp: true }),
      "EINVAL",
      "library",
    );
    assert.match(e.message, /registered with \{ wp: true \}/);
    const raw = uffdio_copy().set("dst", mem.start).set("src", src.start).set("len", pageSize).set("mode", 2);
    assert.equal(kernel(uffd.fd, ioctl.UFFDIO_COPY, raw), "EINVAL");
  });

  it("a closed mapping's registration ends with it: new memory at the same address is not registered", () => {
    using uffd = Userfaultfd.open();
    using src = Mapping.anonymous(pageSize);
    const mem = Mapping.anonymous(pageSize);
    const addr = mem.start;
    uffd.register(mem);
    mem.close();
    // new memory at the very same address (MAP_FIXED), declared to the library
    assert.equal(libc.mmap(addr, pageSize, 3, 0x32, /* PRIVATE|ANONYMOUS|FIXED */ -1, 0), addr);
    using _again = Mapping.adopt(addr, pageSize);
    try {
      throwsCode(() => uffd.copy({ start: addr, len: pageSize, src: src.start }), "ENOENT", "library");
      assert.equal(copyRaw(uffd, addr, src.start), "ENOENT", "the kernel agrees");
    } finally {
      libc.munmap(addr, pageSize);
    }
  });

  it("a registered range whose mapping was replaced behind the library's back: the kernel's ENOENT says so", () => {
    using uffd = Userfaultfd.open();
    using mem = Mapping.anonymous(pageSize);
    using src = Mapping.anonymous(pageSize);
    uffd.register(mem);
    assert.equal(libc.mmap(mem.start, pageSize, 3, 0x32, -1, 0), mem.start); // raw MAP_FIXED: unregistered
    const e = throwsCode(
      () => uffd.copy({ start: mem.start, len: pageSize, src: src.start }),
      "ENOENT",
      "kernel",
    );
    assert.match(e.message, /registered with this userfaultfd, but its mapping changed/);
  });

  it("received, remote and EVENT_REMAP descriptors leave the check to the kernel, whose ENOENT says why", () => {
    using uffd = Userfaultfd.open();
    using mem = Mapping.anonymous(pageSize);
    using src = Mapping.anonymous(pageSize);
    using received = Userfaultfd.fromFd(libc.syscall(32, /* dup */ uffd.fd)); // registered elsewhere?
    using remote = Userfaultfd.fromFd(libc.syscall(32, uffd.fd), 0, { remote: true });
    using remap = Userfaultfd.open({ features: ["EVENT_REMAP"] }); // registrations move with mremap
    for (const u of [received, remote, remap]) {
      const e = throwsCode(
        () => u.copy({ start: mem.start, len: pageSize, src: src.start }),
        "ENOENT",
        "kernel",
      );
      assert.match(e.hint, /not registered with this userfaultfd/);
      assert.doesNotMatch(e.hint, /^the mapping changed/);
    }
    // the same descriptor registered through one wrapper is served through the other
    uffd.register(mem);
    assert.equal(received.copy({ start: mem.start, len: pageSize, src: src.start }), pageSize);
  });
});

describe("a closed Mapping", () => {
  const closedMsg = /was closed \(close\(\) ran, or its `using` block ended\)/;

  it("register, copy into it, zeropage, scan and bytes() say it was closed, not that the library never made it", () => {
    using uffd = Userfaultfd.open();
    using scanner = new PagemapScanner();
    using src = Mapping.anonymous(pageSize);
    let m: Mapping;
    {
      using inner = Mapping.anonymous(2 * pageSize);
      m = inner;
    } // disposed here
    assert.equal(m.closed, true);
    for (
      const [what, f, code] of [
        ["register", () => uffd.register(m), "EINVAL"],
        ["copy into it", () => uffd.copy({ start: m.start, len: pageSize, src: src.start }), "ENOENT"],
        [
          "copy into its second page",
          () => uffd.copy({ start: m.page(1), len: pageSize, src: src.start }),
          "ENOENT",
        ],
        ["zeropage(m)", () => uffd.zeropage(m), "ENOENT"],
        ["unregister", () => uffd.unregister(m), "EINVAL"],
        ["scan", () => scanner.scan(m), "EINVAL"],
        ["bytes()", () => m.bytes(), "EBADF"],
        ["dontneed()", () => m.dontneed(), "EBADF"],
      ] as const
    ) {
      const e = throwsCode(f, code, "library");
      assert.match(e.message, closedMsg, what);
      assert.doesNotMatch(e.message, /not inside a mapping created by this library/, what);
    }
  });

  it("close() then a plain range over it: closed; memory the library never made: not inside a mapping", () => {
    using uffd = Userfaultfd.open();
    // memory the library did not make, away from where earlier tests' mappings were (a hint, not FIXED)
    const foreign = libc.mmap(0x5a5a_0000_0000, pageSize, 3, 0x22, -1, 0);
    const m = Mapping.anonymous(pageSize);
    const { start, len } = m;
    m.close();
    try {
      assert.match(throwsCode(() => uffd.register({ start, len }), "EINVAL", "library").message, closedMsg);
      const e = throwsCode(() => uffd.register({ start: foreign, len: pageSize }), "EINVAL", "library");
      assert.match(e.message, /not inside a mapping created by this library/);
    } finally {
      libc.munmap(foreign, pageSize);
    }
  });
});

describe("wrong option types", () => {
  it("are refused before the syscall with the expected type, the valid values and what was given", async () => {
    using uffd = Userfaultfd.open();
    using mem = Mapping.anonymous(pageSize);
    using src = Mapping.anonymous(pageSize);
    using fresh = Userfaultfd.open({ handshake: false });
    using scanner = new PagemapScanner();
    uffd.register(mem);
    // deno-lint-ignore no-explicit-any
    const bad = (v: unknown) => v as any;
    const cases: [string, () => unknown, RegExp][] = [
      [
        "features as a string",
        () => Userfaultfd.open({ features: bad("THREAD_ID") }),
        /features must be an array of names, e\.g\. \{ features: \["THREAD_ID"\] \} \(got the string "THREAD_ID"\); known: .*THREAD_ID/,
      ],
      [
        "a feature that is not a string",
        () => Userfaultfd.open({ features: bad([3]) }),
        /must be a name string \(got number 3\)/,
      ],
      [
        "via",
        () => Userfaultfd.open({ via: bad("sys") }),
        /via must be one of "auto", "syscall", "device" \(got the string "sys"\)/,
      ],
      [
        "nonBlocking",
        () => Userfaultfd.open({ nonBlocking: bad("yes") }),
        /nonBlocking must be a boolean, true or false \(got the string "yes"\)/,
      ],
      [
        "open's options",
        () => Userfaultfd.open(bad("THREAD_ID")),
        /options must be an object with some of features, nonBlocking/,
      ],
      [
        "fromFd features",
        () => Userfaultfd.fromFd(uffd.fd, bad("THREAD_ID")),
        /features must be an array of names/,
      ],
      [
        "api features",
        () => fresh.api(bad("MOVE")),
        /features must be an array of names, e\.g\. \{ features: \["MOVE"\] \}/,
      ],
      [
        "register mode",
        () => uffd.register(mem, { wp: bad("true") }),
        /wp must be a boolean, true or false \(got the string "true"\)/,
      ],
      [
        "register range",
        () => uffd.register(bad(undefined)),
        /range must be a Mapping or an object \{ start, len \} \(got undefined\)/,
      ],
      [
        "a range start as a string",
        () => uffd.register(bad({ start: "0x1000", len: pageSize })),
        /start and length must be numbers: a page-aligned address and a byte count \(got the string "0x1000", number 4096\)/,
      ],
      [
        "copy src",
        () => uffd.copy({ start: mem.start, len: pageSize, src: bad("abc") }),
        /src must be an address .* or the bytes to copy .*\(got the string "abc"\)/,
      ],
      [
        "copy dontwake",
        () => uffd.copy({ start: mem.start, len: pageSize, src: src.start, dontwake: bad(1) }),
        /dontwake must be a boolean, true or false \(got number 1\)/,
      ],
      ["copy options", () => uffd.copy(bad(null)), /options must be an object with some of start, len, src/],
      [
        "writeprotect wp",
        () => uffd.writeprotect({ start: mem.start, len: pageSize, wp: bad("yes") }),
        /wp must be a boolean, true \(protect\) or false \(unprotect\) \(got the string "yes"\)/,
      ],
      [
        "move allowSrcHoles",
        () => uffd.move({ start: mem.start, len: pageSize, src: src.start, allowSrcHoles: bad("y") }),
        /allowSrcHoles must be a boolean/,
      ],
      [
        "read timeout",
        () => uffd.readEvent({ timeout: bad("100") }),
        /timeout must be a number of milliseconds from 0 to 2147483647 \(omit it to block\) \(got the string "100"\)/,
      ],
      ["read buffer", () => uffd.readEvents(bad({})), /buf must be an EventBuffer/],
      [
        "Mapping length",
        () => Mapping.anonymous(bad("4096")),
        /length must be a positive multiple of 4096 bytes \(got the string "4096"\)/,
      ],
      ["memfd hugetlb", () => Mapping.memfd(pageSize, { hugetlb: bad("yes") }), /hugetlb must be a boolean/],
      ["file path", () => Mapping.file(bad(42)), /path must be a non-empty string \(got number 42\)/],
      [
        "scan reprotect",
        () => scanner.scan(mem, { reprotect: bad(1) }),
        /reprotect must be a boolean/,
      ],
      [
        "scan required",
        () => scanner.scan(mem, { required: bad("WRITTEN") }),
        /required \(PAGE_IS\.\* bits\) must be an integer >= 0 \(got the string "WRITTEN"\)/,
      ],
    ];
    for (const [what, f, re] of cases) {
      const e = throwsCode(f, "EINVAL", "library");
      assert.match(e.message, re, what);
    }
    // events() checks when iterated
    await assert.rejects(
      (async () => {
        for await (const _ of uffd.events({ batch: 0 })) break;
      })(),
      (e: unknown) =>
        e instanceof UffdError && /batch must be an integer >= 1 \(got number 0\)/.test(e.message),
    );
  });
});
