// The `uffd` CLI: featuresReport() in process, `features` (text and --json), help and
// errors as child processes, the advice for synthetic failures, and (as root, when
// setpriv exists) the real failures of an unprivileged user.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import process from "node:process";
import { fileURLToPath } from "node:url";
import {
  FEATURE_NAMES,
  type FeaturesReport,
  featuresReport,
  formatReport,
  openAdvice,
  type OpenAttempt,
} from "../cli.ts";
import { Userfaultfd } from "../mod.ts";
import { readTextFile } from "../src/memory.ts";
import { libc } from "../ffi/mod.ts";
import { runChild } from "./helpers/child.ts";
import { nobodySkipReason, worldReadableTree } from "./helpers/world_readable.ts";

const CLI = fileURLToPath(new URL("../cli.ts", import.meta.url));
const T = { timeout: 30000 };

const ORDER: Array<[OpenAttempt["via"], boolean]> = [
  ["syscall", false],
  ["syscall", true],
  ["device", false],
  ["device", true],
];

describe("featuresReport()", () => {
  it("reports kernel, runtime, the four ways of opening, settings and features", T, () => {
    const r = featuresReport();
    assert.equal(r.kernel, readTextFile("/proc/sys/kernel/osrelease")?.trim());
    assert.match(r.kernel ?? "", /^\d+\.\d+/);
    assert.equal(r.runtime.name, libc.runtime);
    assert.match(r.runtime.version, /^\d+\.\d+\.\d+/);
    assert.deepEqual(r.open.map((a) => [a.via, a.userModeOnly]), ORDER);
    for (const a of r.open) {
      if (a.ok) {
        assert.equal(a.code, undefined);
      } else {
        assert.match(a.code ?? "", /^E[A-Z0-9]+$/);
        assert.ok((a.hint ?? "").length > 10, "a failure carries the UffdError hint");
      }
    }
    assert.equal(r.canOpen, r.open.some((a) => a.ok));
    assert.equal(r.defaultOpenWorks, r.open.some((a) => a.ok && a.userModeOnly));
    assert.equal(r.advice.length === 0, r.open.every((a) => a.ok));
    const sysctl = readTextFile("/proc/sys/vm/unprivileged_userfaultfd")?.trim();
    assert.equal(r.unprivilegedUserfaultfd, sysctl ? Number(sysctl) : null);
    assert.equal(r.device.path, "/dev/userfaultfd");
    if (r.device.exists) {
      assert.match(r.device.mode ?? "", /^c[-r][-w][-x][-r][-w][-x][-r][-w][-x]$/);
      assert.match(r.device.permissions ?? "", /^[0-7]+$/);
    }
  });

  it("lists the features and ioctls Userfaultfd.probe() reports", T, () => {
    const r = featuresReport();
    const p = Userfaultfd.probe();
    const s = r.support;
    assert.ok(s, r.supportError);
    assert.deepEqual(s.features, p.features);
    assert.equal(s.featureMask, "0x" + p.featureBits.toString(16));
    assert.deepEqual(s.ioctls, p.ioctls);
    for (const name of ["API", "REGISTER", "UNREGISTER"] as const) assert.ok(s.ioctls.includes(name));
    assert.deepEqual([...s.features, ...s.missingFeatures].sort(), [...FEATURE_NAMES].sort());
    assert.ok(Array.isArray(s.unknownFeatureBits));
    assert.equal(
      s.unknownFeatureBits.reduce((m, b) => m + 2 ** b, 0),
      p.unknownFeatureBits,
    );
    for (const name of ["WAKE", "COPY", "ZEROPAGE"] as const) {
      assert.ok(s.rangeIoctls.anonymous?.includes(name), `anonymous range offers ${name}`);
    }
    if (p.features.includes("MINOR_SHMEM")) assert.ok(s.rangeIoctls.shmem?.includes("CONTINUE"));
  });

  it("matches what this process may do", T, (t) => {
    const r = featuresReport();
    if (r.process.capSysPtrace !== true) {
      t.skip?.("needs CAP_SYS_PTRACE");
      return;
    }
    // With CAP_SYS_PTRACE the syscall works with and without user-mode-only.
    assert.ok(r.open[0].ok && r.open[1].ok, JSON.stringify(r.open));
    assert.ok(r.defaultOpenWorks);
  });

  it("formats the report in sections, in order", T, () => {
    const r = featuresReport();
    const lines = formatReport(r).split("\n");
    const at = (re: RegExp): number => {
      const i = lines.findIndex((l) => re.test(l));
      assert.ok(i >= 0, `no line matches ${re}:\n${lines.join("\n")}`);
      return i;
    };
    const idx = [
      at(/^uffd features \((deno|bun|node) \d+\.\d+\.\d+\)$/),
      at(new RegExp(`^Kernel: Linux ${r.kernel!.replace(/[.]/g, "\\.")}$`)),
      at(/^Opening a userfaultfd:$/),
      at(/^ {2}userfaultfd\(2\) +(ok|E[A-Z]+: .+)$/),
      at(/^ {2}userfaultfd\(2\), user-mode only +(ok|E[A-Z]+: .+)$/),
      at(/^ {2}\/dev\/userfaultfd +(ok|E[A-Z]+: .+)$/),
      at(/^ {2}\/dev\/userfaultfd, user-mode only +(ok|E[A-Z]+: .+)$/),
      at(/^ {2}Userfaultfd\.open\(\) with its defaults: (works|fails)$/),
      at(/^Settings:$/),
      at(/^ {2}vm\.unprivileged_userfaultfd = /),
      at(/^ {2}\/dev\/userfaultfd: /),
      at(/^ {2}this process: uid /),
      at(/^Features \(\d+, mask 0x[0-9a-f]+, probed via (syscall|device)\):$/),
      at(/^Unknown feature bits: /),
      at(/^Not supported by this kernel: /),
      at(/^ioctls after UFFDIO_API: .*\bAPI\b/),
      at(/^ioctls on a registered range: anonymous: .*\bCOPY\b/),
    ];
    assert.deepEqual(idx, [...idx].sort((a, b) => a - b), "sections in order");
    for (const f of r.support!.features) assert.ok(lines.some((l) => l.split(/\s+/).includes(f)), f);
  });
});

function attempt(via: OpenAttempt["via"], userModeOnly: boolean, code?: string): OpenAttempt {
  return code === undefined
    ? { via, userModeOnly, ok: true }
    : { via, userModeOnly, ok: false, code, errno: 1, hint: "hint" };
}

type AdviceInput = Parameters<typeof openAdvice>[0];
const device600: FeaturesReport["device"] = {
  path: "/dev/userfaultfd",
  exists: true,
  mode: "crw-------",
  permissions: "600",
  uid: 0,
  gid: 0,
  miscMinor: 257,
};

describe("openAdvice()", () => {
  it("is empty when every way works", T, () => {
    const input: AdviceInput = {
      open: ORDER.map(([v, u]) => attempt(v, u)),
      unprivilegedUserfaultfd: 0,
      device: device600,
      process: { uid: 0, capSysPtrace: true },
    };
    assert.deepEqual(openAdvice(input), []);
  });

  it("explains an unprivileged user: sysctl 0 and a root-only device", T, () => {
    const advice = openAdvice({
      open: [
        attempt("syscall", false, "EPERM"),
        attempt("syscall", true),
        attempt("device", false, "EACCES"),
        attempt("device", true, "EACCES"),
      ],
      unprivilegedUserfaultfd: 0,
      device: device600,
      process: { uid: 1000, capSysPtrace: false },
    });
    assert.equal(advice.length, 3, advice.join("\n"));
    assert.match(advice[0], /works with its defaults/);
    assert.match(advice[1], /vm\.unprivileged_userfaultfd is 0/);
    assert.match(advice[1], /sysctl -w vm\.unprivileged_userfaultfd=1/);
    assert.match(advice[1], /CAP_SYS_PTRACE/);
    assert.match(advice[2], /crw------- owned by uid 0 gid 0/);
    assert.match(advice[2], /uid 1000/);
    assert.match(advice[2], /setfacl/);
  });

  it("says nothing can be opened, and why, when every way fails", T, () => {
    const advice = openAdvice({
      open: [
        attempt("syscall", false, "EPERM"),
        attempt("syscall", true, "EPERM"),
        attempt("device", false, "ENOENT"),
        attempt("device", true, "ENOENT"),
      ],
      unprivilegedUserfaultfd: 1,
      device: { path: "/dev/userfaultfd", exists: false, miscMinor: 257 },
      process: { uid: 1000, capSysPtrace: false },
    });
    assert.match(advice[0], /No userfaultfd can be opened here/);
    assert.ok(advice.some((a) => /seccomp/.test(a)), advice.join("\n"));
    assert.ok(advice.some((a) => /mknod -m 600 \/dev\/userfaultfd c 10 257/.test(a)), advice.join("\n"));
  });

  it("names a kernel without userfaultfd (ENOSYS, no device)", T, () => {
    const advice = openAdvice({
      open: [
        attempt("syscall", false, "ENOSYS"),
        attempt("syscall", true, "ENOSYS"),
        attempt("device", false, "ENOENT"),
        attempt("device", true, "ENOENT"),
      ],
      unprivilegedUserfaultfd: null,
      device: { path: "/dev/userfaultfd", exists: false },
      process: { uid: 0, capSysPtrace: true },
    });
    assert.ok(advice.some((a) => /CONFIG_USERFAULTFD/.test(a)), advice.join("\n"));
    assert.ok(
      advice.some((a) => /does not exist and the kernel does not offer it/.test(a)),
      advice.join("\n"),
    );
  });
});

describe("uffd CLI as a child process", () => {
  it("features --json prints the report as JSON and exits 0", T, () => {
    const r = runChild(CLI, ["features", "--json"]);
    assert.equal(r.status, 0, r.stderr);
    const report = JSON.parse(r.stdout) as FeaturesReport;
    const here = featuresReport();
    assert.equal(report.kernel, here.kernel);
    assert.deepEqual(report.runtime, here.runtime);
    assert.deepEqual(report.open, here.open);
    assert.equal(report.unprivilegedUserfaultfd, here.unprivilegedUserfaultfd);
    assert.deepEqual(report.device, here.device);
    assert.deepEqual(report.support, here.support);
    assert.deepEqual(report.advice, here.advice);
  });

  it("features prints the readable report", T, () => {
    const r = runChild(CLI, ["features"]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, formatReport(featuresReport()) + "\n");
  });

  it("help and no arguments print the usage; unknown commands and options exit 2", T, () => {
    for (const args of [[], ["help"], ["--help"]]) {
      const r = runChild(CLI, args);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /^Usage: uffd <command>/);
      assert.match(r.stdout, /features \[--json\]/);
    }
    const bad = runChild(CLI, ["frobnicate"]);
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /unknown command frobnicate/);
    const badOpt = runChild(CLI, ["features", "--yaml"]);
    assert.equal(badOpt.status, 2);
    assert.match(badOpt.stderr, /unknown option --yaml/);
  });

  it(
    "features needs no permission but --allow-ffi under Deno (all its reads go through libc)",
    { ...T, skip: libc.runtime === "deno" ? false : "only Deno has permission flags" },
    () => {
      for (const args of [["features"], ["features", "--json"]]) {
        const r = spawnSync(process.execPath, ["run", "--allow-ffi", CLI, ...args], {
          encoding: "utf8",
          timeout: 25000,
          killSignal: "SIGKILL",
        });
        assert.equal(r.status, 0, r.stderr);
        assert.equal(r.stderr, "", "no permission prompt or warning");
        assert.match(r.stdout, args.length === 1 ? /^uffd features/ : /^\{/);
      }
    },
  );

  // The real failure paths: as nobody, with vm.unprivileged_userfaultfd = 0 and a
  // root-only /dev/userfaultfd, only the user-mode-only syscall works.
  const here = featuresReport();
  const unprivSkip = nobodySkipReason() ||
    (here.unprivilegedUserfaultfd !== 0
      ? "needs vm.unprivileged_userfaultfd = 0"
      : !here.device.exists || here.device.permissions !== "600" || here.device.uid !== 0
      ? "needs a root-only /dev/userfaultfd"
      : false);
  it("explains the failures of an unprivileged user (real, via setpriv)", { ...T, skip: unprivSkip }, () => {
    // uid 65534 can read nothing of a checkout in root's 0700 home or under a `mktemp -d`
    // folder, nor run a runtime installed there: it runs a world-readable copy of the tree.
    using tree = worldReadableTree();
    const r = tree.runAsNobody("cli.ts", ["features", "--json"]);
    assert.equal(r.status, 0, r.stderr);
    const report = JSON.parse(r.stdout) as FeaturesReport;
    assert.equal(report.process.uid, 65534);
    assert.equal(report.process.capSysPtrace, false);
    assert.deepEqual(
      report.open.map((a) => a.ok ? "ok" : a.code),
      ["EPERM", "ok", "EACCES", "EACCES"],
    );
    assert.match(report.open[0].hint ?? "", /vm\.unprivileged_userfaultfd/);
    assert.ok(report.defaultOpenWorks);
    assert.equal(report.advice.length, 3, report.advice.join("\n"));
    assert.match(report.advice[1], /vm\.unprivileged_userfaultfd is 0/);
    assert.match(report.advice[2], /\/dev\/userfaultfd is crw------- owned by uid 0 gid 0/);
    assert.deepEqual(report.support?.features, here.support?.features);
  });
});
