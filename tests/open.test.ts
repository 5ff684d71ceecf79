// userfaultfd(2): opening a descriptor (syscall, /dev/userfaultfd + USERFAULTFD_IOC_NEW, auto
// fallback), its flags, the UFFDIO_API handshake and feature probing, close and `using`.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { libc } from "../ffi/mod.ts";
import { FEATURE_NAMES, ioctl, Mapping, pageSize, rawIoctl, UffdError, Userfaultfd } from "../mod.ts";
import { readTextFile } from "../src/memory.ts";
import { uffdio_api } from "../src/structs.ts";
import { LibcWorker } from "./children/ops_libc.ts";
import { peekByte } from "./helpers/peek.ts";

const O_CLOEXEC = 0o2000000;
const O_NONBLOCK = 0o4000;

/**
 * The `flags:` (octal), `pending:` and `API:` fields of /proc/self/fdinfo/<fd>. Read through
 * libc (readTextFile): Deno denies node:fs access to /proc/self without --allow-all.
 */
function fdinfo(fd: number): { flags: number; api: number; features: number; pending: number } {
  const text = readTextFile(`/proc/self/fdinfo/${fd}`);
  if (text === undefined) throw new Error(`fd ${fd} is not open`);
  const flags = parseInt(text.match(/^flags:\s+([0-7]+)/m)![1], 8);
  const api = text.match(/^API:\s+([0-9a-f]+):([0-9a-f]+):/m);
  const pending = Number(text.match(/^pending:\s+(\d+)/m)?.[1] ?? -1);
  // The top bit of the features word is the kernel's own UFFD_FEATURE_INITIALIZED.
  return {
    flags,
    api: api ? parseInt(api[1], 16) : -1,
    features: api ? parseInt(api[2], 16) & 0x7fffffff : -1,
    pending,
  };
}

/** How many descriptors below 4096 are open (fcntl F_GETFD through the raw syscall). */
function openFds(): number {
  let n = 0;
  for (let fd = 0; fd < 4096; fd++) if (libc.syscall(72, fd, 1) >= 0) n++;
  return n;
}

/**
 * Runs the steps made by `make` and asserts how many descriptors are open after each, relative
 * to before the first. Other threads of the runtime (Workers of earlier tests shutting down)
 * open and close descriptors too, so a disturbed measurement is repeated; a real leak or a
 * missing close shows in every attempt.
 */
async function expectFdDeltas(expected: number[], make: () => (() => void)[]): Promise<void> {
  let got: number[] = [];
  for (let attempt = 0; attempt < 20; attempt++) {
    const base = openFds();
    got = make().map((step) => {
      step();
      return openFds() - base;
    });
    if (got.every((d, i) => d === expected[i])) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  assert.deepEqual(got, expected, "open descriptors after each step");
}

/** A uffd is usable: register a page and resolve it with ZEROPAGE (no fault taken). */
function works(uffd: Userfaultfd): void {
  using mem = Mapping.anonymous(pageSize);
  uffd.register(mem);
  assert.equal(uffd.zeropage({ start: mem.start, len: pageSize }), pageSize);
  assert.equal(peekByte(mem.start + 123), 0);
}

const CHILD = fileURLToPath(new URL("./children/ops_open_child.ts", import.meta.url));
const hasSetpriv = spawnSync("setpriv", ["--version"]).status === 0;

/** Runs the open child without CAP_SYS_PTRACE (root keeps DAC access to /dev/userfaultfd). */
function openWithoutPtrace(via: string, userModeOnly: boolean): Record<string, unknown> {
  const argv = libc.scriptCommand(CHILD, [via, userModeOnly ? "1" : "0"]);
  const r = spawnSync(
    "setpriv",
    ["--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace", ...argv],
    { encoding: "utf8", timeout: 20000, killSignal: "SIGKILL" },
  );
  assert.equal(r.status, 0, `child failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split("\n").pop()!);
}

describe("userfaultfd(2): open", () => {
  it("opens via the syscall", () => {
    using uffd = Userfaultfd.open({ via: "syscall" });
    assert.ok(uffd.fd >= 0);
    assert.equal(fdinfo(uffd.fd).api, 0xaa);
    works(uffd);
  });

  it("opens via /dev/userfaultfd + USERFAULTFD_IOC_NEW", async () => {
    {
      using uffd = Userfaultfd.open({ via: "device" });
      assert.equal(fdinfo(uffd.fd).api, 0xaa);
      works(uffd);
    }
    // the /dev/userfaultfd descriptor itself is closed at once: only the new uffd stays open
    let u: Userfaultfd | undefined;
    await expectFdDeltas([1, 0], () => [() => (u = Userfaultfd.open({ via: "device" })), () => u!.close()]);
  });

  it("auto opens via the syscall when allowed", () => {
    using uffd = Userfaultfd.open({ via: "auto" });
    works(uffd);
    assert.equal(Userfaultfd.probe({ refresh: true }).openedVia, "syscall");
  });

  it(
    "without CAP_SYS_PTRACE: the syscall gives EPERM, auto falls back to the device, user-mode-only still works",
    { skip: hasSetpriv ? false : "setpriv(1) not installed", timeout: 60000 },
    () => {
      const sys = openWithoutPtrace("syscall", false);
      assert.equal(sys.ok, false);
      assert.equal(sys.code, "EPERM");
      assert.equal(sys.source, "kernel");
      assert.match(String(sys.message), /vm\.unprivileged_userfaultfd/);
      assert.match(String(sys.message), /\/dev\/userfaultfd/);
      assert.deepEqual(openWithoutPtrace("auto", false), { ok: true, zeroed: pageSize });
      assert.deepEqual(openWithoutPtrace("device", false), { ok: true, zeroed: pageSize });
      assert.deepEqual(openWithoutPtrace("syscall", true), { ok: true, zeroed: pageSize });
    },
  );

  it("closeOnExec and nonBlocking set O_CLOEXEC and O_NONBLOCK (fdinfo flags)", () => {
    for (const via of ["syscall", "device"] as const) {
      {
        using u = Userfaultfd.open({ via });
        const f = fdinfo(u.fd).flags;
        assert.equal(f & O_CLOEXEC, O_CLOEXEC, `${via}: O_CLOEXEC is the default`);
        assert.equal(f & O_NONBLOCK, O_NONBLOCK, `${via}: non-blocking is the default (poll needs it)`);
        assert.equal(u.nonBlocking, true);
      }
      {
        using u = Userfaultfd.open({ via, nonBlocking: false });
        assert.equal(fdinfo(u.fd).flags & O_NONBLOCK, 0, `${via}: nonBlocking false`);
        assert.equal(u.nonBlocking, false);
      }
      {
        using u = Userfaultfd.open({ via, closeOnExec: false, nonBlocking: true });
        const f = fdinfo(u.fd).flags;
        assert.equal(f & O_CLOEXEC, 0, `${via}: closeOnExec false`);
        assert.equal(f & O_NONBLOCK, O_NONBLOCK, `${via}: nonBlocking true`);
        assert.equal(u.nonBlocking, true);
        // non-blocking read with nothing pending returns no event at once
        assert.equal(u.readEvent(), undefined);
      }
    }
  });

  it("userModeOnly: a kernel-mode fault fails with EFAULT instead of reaching the handler", {
    timeout: 20000,
  }, async () => {
    const w = new LibcWorker();
    try {
      using uffd = Userfaultfd.open({ userModeOnly: true });
      using mem = Mapping.anonymous(pageSize);
      uffd.register(mem);
      // pread(/dev/zero) makes the kernel write the registered page: not delivered, EFAULT
      const r = await w.preadZero(mem.start, 64);
      assert.deepEqual(r, { ret: -1, errno: 14 });
      assert.equal(fdinfo(uffd.fd).pending, 0);
    } finally {
      w.close();
    }
  });

  it("userModeOnly: false delivers kernel-mode faults to the handler", { timeout: 20000 }, async () => {
    const w = new LibcWorker();
    try {
      using uffd = Userfaultfd.open({ userModeOnly: false, nonBlocking: true });
      using mem = Mapping.anonymous(pageSize);
      uffd.register(mem);
      const done = w.preadZero(mem.start, 64);
      const ev = uffd.readEvent({ timeout: 10000 }); // waits for the Worker's pread to fault
      assert.ok(ev && ev.type === "pagefault");
      assert.equal(ev.address, mem.start);
      assert.equal(ev.write, true);
      uffd.copy({ start: mem.start, len: pageSize, src: new Uint8Array(pageSize).fill(7) });
      assert.deepEqual(await done, { ret: 64, errno: 0 });
      assert.equal(peekByte(mem.start), 0); // pread wrote 64 zeros over the copied 7s
      assert.equal(peekByte(mem.start + 64), 7);
    } finally {
      w.close();
    }
  });
});

describe("UFFDIO_API: handshake and probing", () => {
  it("probe() reports all 17 features and burns no descriptor", async () => {
    await expectFdDeltas([0], () => [() => Userfaultfd.probe({ refresh: true })]);
    const p = Userfaultfd.probe({ refresh: true });
    assert.equal(p.features.length, 17);
    assert.deepEqual(p.features, [...FEATURE_NAMES]);
    assert.equal(p.featureBits, 0x1ffff);
    assert.equal(p.unknownFeatureBits, 0);
    assert.deepEqual([...p.ioctls].sort(), ["API", "REGISTER", "UNREGISTER"]);
    // cached unless refreshed
    assert.equal(Userfaultfd.probe(), p);
    // a real descriptor opened afterwards can still enable any feature
    using uffd = Userfaultfd.open({ features: ["THREAD_ID", "EXACT_ADDRESS"] });
    assert.deepEqual(uffd.features, ["THREAD_ID", "EXACT_ADDRESS"]);
  });

  it("the handshake enables exactly the requested features (fdinfo API line)", () => {
    {
      using u = Userfaultfd.open();
      assert.equal(fdinfo(u.fd).features, 0);
      assert.deepEqual([...u.ioctls].sort(), ["API", "REGISTER", "UNREGISTER"]);
    }
    {
      using u = Userfaultfd.open({ features: ["EVENT_REMOVE", "THREAD_ID", "MOVE"] });
      assert.equal(fdinfo(u.fd).features, (1 << 3) | (1 << 8) | (1 << 16));
      assert.equal(u.featureBits, (1 << 3) | (1 << 8) | (1 << 16));
      assert.ok(u.has("MOVE"));
      assert.ok(!u.has("SIGBUS"));
    }
    {
      using u = Userfaultfd.open({ handshake: false });
      const r = u.api(["POISON"]);
      assert.deepEqual(r.features, ["POISON"]);
      assert.equal(fdinfo(u.fd).features, 1 << 14);
    }
  });

  it("a second UFFDIO_API: the library refuses, the kernel answers EINVAL", () => {
    using uffd = Userfaultfd.open();
    assert.throws(() => uffd.api([]), (e: unknown) => {
      assert.ok(e instanceof UffdError);
      assert.equal(e.source, "library");
      assert.equal(e.code, "EINVAL");
      assert.equal(e.op, "UFFDIO_API");
      return true;
    });
    const api = uffdio_api().set("api", 0xaa).set("features", 0);
    assert.deepEqual(rawIoctl(uffd.fd, ioctl.UFFDIO_API, api.bytes), { result: -1, errno: 22 });
    // the descriptor is still usable after the refused second handshake
    works(uffd);
  });

  it("unknown features and option keys are rejected before any syscall", async () => {
    const check = (f: () => unknown, op: string) =>
      assert.throws(f, (e: unknown) => {
        assert.ok(e instanceof UffdError, String(e));
        assert.equal(e.source, "library");
        assert.equal(e.code, "EINVAL");
        assert.equal(e.op, op);
        return true;
      });
    await expectFdDeltas([0, 0, 0], () => [
      // deno-lint-ignore no-explicit-any
      () => check(() => Userfaultfd.open({ features: ["NOT_A_FEATURE" as any] }), "open"),
      // deno-lint-ignore no-explicit-any
      () => check(() => Userfaultfd.open({ bogus: true } as any), "open"),
      // deno-lint-ignore no-explicit-any
      () => check(() => Userfaultfd.open({ via: "ioctl" as any }), "open"),
    ]);
    using u = Userfaultfd.open({ handshake: false });
    // deno-lint-ignore no-explicit-any
    check(() => u.api(["NOPE" as any]), "UFFDIO_API");
    assert.equal(fdinfo(u.fd).features, 0); // nothing reached the kernel: no handshake yet
    u.api(["THREAD_ID"]);
    assert.ok(u.has("THREAD_ID"));
  });

  it("close() twice is fine; use after close is EBADF from the library", async () => {
    let opened: Userfaultfd | undefined;
    await expectFdDeltas([1, 0, 0], () => [
      () => (opened = Userfaultfd.open()),
      () => opened!.close(),
      () => opened!.close(),
    ]);
    const u = opened!;
    assert.equal(u.closed, true);
    assert.equal(u.fd, -1);
    using mem = Mapping.anonymous(pageSize);
    for (
      const f of [
        () => u.register(mem),
        () => u.zeropage({ start: mem.start, len: pageSize }),
        () => u.readEvent(),
        () => u.api(),
      ]
    ) {
      assert.throws(
        f,
        (e: unknown) => e instanceof UffdError && e.code === "EBADF" && e.source === "library",
      );
    }
  });

  it("`using` closes the descriptor at the end of the block", async () => {
    let kept: Userfaultfd | undefined;
    let api = 0;
    await expectFdDeltas([0], () => [() => {
      using u = Userfaultfd.open();
      kept = u;
      api = fdinfo(u.fd).api;
    }]);
    assert.equal(api, 0xaa);
    assert.equal(kept!.closed, true);
  });
});
