/**
 * `uffd features`: what userfaultfd can do on this machine, and, when it cannot be used, why
 * and what to change.
 * @module
 */
import process from "node:process";
import { libc } from "../ffi/mod.ts";
import {
  errnoName,
  FEATURE_NAMES,
  type FeatureName,
  type IoctlName,
  Mapping,
  pageSize,
  UffdError,
  Userfaultfd,
} from "../mod.ts";
import { cstring, readTextFile } from "../src/memory.ts";

export { FEATURE_NAMES, type FeatureName, type IoctlName } from "../mod.ts";

/** The device that hands out userfaultfds (Linux 6.1+). */
const DEVICE = "/dev/userfaultfd";
/** `CAP_SYS_PTRACE`: lets the syscall create descriptors that also see kernel-mode faults. */
const CAP_SYS_PTRACE = 19;
/** `stat` on x86-64. */
const NR_stat = 4;

/** One way of opening a userfaultfd, and how it went. */
export interface OpenAttempt {
  /** `"syscall"`: the userfaultfd(2) syscall; `"device"`: `/dev/userfaultfd` + `USERFAULTFD_IOC_NEW`. */
  via: "syscall" | "device";
  /** Whether `UFFD_USER_MODE_ONLY` was requested (faults taken in kernel mode are not delivered). */
  userModeOnly: boolean;
  /** Whether a descriptor was obtained (it is closed again at once). */
  ok: boolean;
  /** errno name of the failure, e.g. `"EPERM"`. */
  code?: string;
  /** errno number of the failure. */
  errno?: number;
  /** What the failure means and what to do, from {@link UffdError}. */
  hint?: string;
}

/** `/dev/userfaultfd` as stat(2) sees it. */
export interface DeviceInfo {
  /** Always `"/dev/userfaultfd"`. */
  path: string;
  /** Whether the node exists. */
  exists: boolean;
  /** Type and permissions as `ls -l` shows them, e.g. `"crw-------"`. */
  mode?: string;
  /** Permission bits in octal, e.g. `"600"`. */
  permissions?: string;
  /** Owner uid. */
  uid?: number;
  /** Owner gid. */
  gid?: number;
  /** The misc-device minor number from /proc/misc (the node is `c 10 <minor>`), when the kernel has one. */
  miscMinor?: number;
  /** errno name when stat(2) failed for another reason than a missing node. */
  error?: string;
}

/** Who this process is, as far as userfaultfd cares. */
export interface ProcessInfo {
  /** Effective uid (from /proc/self/status), or null when unknown. */
  uid: number | null;
  /** Whether `CAP_SYS_PTRACE` is in the effective set, or null when unknown. */
  capSysPtrace: boolean | null;
}

/** What the kernel supports, from {@link Userfaultfd.probe} and a throwaway registration. */
export interface FeatureSupport {
  /** How the probe descriptor was opened. */
  openedVia: "syscall" | "device";
  /** Supported features by name. */
  features: FeatureName[];
  /** The raw feature mask as hex, e.g. `"0x1ffff"`. */
  featureMask: string;
  /** Supported feature bits this library has no name for (bit numbers). */
  unknownFeatureBits: number[];
  /** Features this library knows that the kernel does not offer. */
  missingFeatures: FeatureName[];
  /** ioctls the `UFFDIO_API` handshake reports, by name. */
  ioctls: IoctlName[];
  /**
   * ioctls `UFFDIO_REGISTER` reports for a range, by kind of memory: anonymous memory
   * registered for missing and write-protect faults, shmem (memfd) also for minor faults
   * (fewer modes where the kernel refuses some). null for a kind that cannot be registered.
   */
  rangeIoctls: { anonymous: IoctlName[] | null; shmem: IoctlName[] | null };
}

/** Everything `uffd features` reports. */
export interface FeaturesReport {
  /** The JavaScript runtime. */
  runtime: { name: "deno" | "bun" | "node"; version: string };
  /** Kernel release (`/proc/sys/kernel/osrelease`), or null when unreadable. */
  kernel: string | null;
  /** This process's uid and capability. */
  process: ProcessInfo;
  /** The four ways of opening a descriptor: syscall and device, each with and without user-mode-only. */
  open: OpenAttempt[];
  /** Whether `Userfaultfd.open()` works with its defaults (syscall, then device; user-mode-only). */
  defaultOpenWorks: boolean;
  /** Whether any of the four ways works. */
  canOpen: boolean;
  /** `vm.unprivileged_userfaultfd` (0 or 1), or null when the sysctl is absent. */
  unprivilegedUserfaultfd: number | null;
  /** The device node. */
  device: DeviceInfo;
  /** Why attempts failed and what to change; empty when every way works. */
  advice: string[];
  /** What the kernel supports; null when no descriptor can be opened. */
  support: FeatureSupport | null;
  /** Why {@link FeaturesReport.support} is null. */
  supportError?: string;
}

function tryOpen(via: "syscall" | "device", userModeOnly: boolean): OpenAttempt {
  try {
    Userfaultfd.open({ via, userModeOnly, handshake: false }).close();
    return { via, userModeOnly, ok: true };
  } catch (e) {
    if (!(e instanceof UffdError)) throw e;
    return { via, userModeOnly, ok: false, code: e.code, errno: e.errno, hint: e.hint };
  }
}

function modeString(mode: number): string {
  const types: Record<number, string> = {
    0o02: "c",
    0o06: "b",
    0o04: "d",
    0o10: "-",
    0o12: "l",
    0o01: "p",
    0o14: "s",
  };
  const t = types[(mode >> 12) & 0o17] ?? "?";
  const rwx = "rwxrwxrwx";
  let s = t;
  for (let i = 0; i < 9; i++) s += mode & (1 << (8 - i)) ? rwx[i] : "-";
  return s;
}

function deviceInfo(): DeviceInfo {
  const info: DeviceInfo = { path: DEVICE, exists: false };
  const m = readTextFile("/proc/misc")?.match(/^\s*(\d+)\s+userfaultfd\s*$/m);
  if (m) info.miscMinor = Number(m[1]);
  const path = cstring(DEVICE);
  const st = new Uint32Array(36); // struct stat, 144 bytes on x86-64
  const r = libc.syscall(NR_stat, libc.addressOf(path), libc.addressOf(st));
  void path; // keep the path buffer referenced until the kernel has read it
  if (r !== 0) {
    const code = errnoName(libc.errno());
    if (code !== "ENOENT") info.error = code;
    return info;
  }
  const mode = st[6]; // st_mode at byte 24, st_uid 28, st_gid 32
  info.exists = true;
  info.mode = modeString(mode);
  info.permissions = (mode & 0o7777).toString(8);
  info.uid = st[7];
  info.gid = st[8];
  return info;
}

function processInfo(): ProcessInfo {
  const status = readTextFile("/proc/self/status") ?? "";
  const uid = status.match(/^Uid:\s+\d+\s+(\d+)/m); // real, effective, saved, fs
  const capEff = status.match(/^CapEff:\s+([0-9a-f]+)/m);
  return {
    uid: uid ? Number(uid[1]) : null,
    capSysPtrace: capEff ? ((BigInt("0x" + capEff[1]) >> BigInt(CAP_SYS_PTRACE)) & 1n) === 1n : null,
  };
}

function rangeIoctls(kind: "anonymous" | "shmem"): IoctlName[] | null {
  // The richest registration this kind of memory accepts: older kernels refuse
  // write-protect or minor mode on shmem, so fall back mode by mode.
  const modes = kind === "anonymous"
    ? [{ missing: true, wp: true }, { missing: true }]
    : [{ missing: true, wp: true, minor: true }, { missing: true, wp: true }, { missing: true }];
  for (const mode of modes) {
    try {
      using uffd = Userfaultfd.open();
      using mem = kind === "anonymous" ? Mapping.anonymous(pageSize) : Mapping.memfd(pageSize);
      return uffd.register(mem, mode).ioctls;
    } catch {
      // try the next, smaller set of modes
    }
  }
  return null;
}

function label(a: Pick<OpenAttempt, "via" | "userModeOnly">): string {
  return (a.via === "syscall" ? "userfaultfd(2)" : DEVICE) + (a.userModeOnly ? ", user-mode only" : "");
}

/**
 * Why the failed ways of opening a descriptor failed and what to change, from the
 * attempts and the settings that govern them. Empty when every attempt succeeded.
 */
export function openAdvice(
  report: Pick<FeaturesReport, "open" | "unprivilegedUserfaultfd" | "device" | "process">,
): string[] {
  const out: string[] = [];
  const find = (via: "syscall" | "device", umo: boolean): OpenAttempt | undefined =>
    report.open.find((a) => a.via === via && a.userModeOnly === umo);
  const sys = find("syscall", false);
  const sysUmo = find("syscall", true);
  const dev = find("device", false);
  const devUmo = find("device", true);
  const failed = report.open.filter((a) => !a.ok);
  if (failed.length === 0) return out;
  const sysctl = report.unprivilegedUserfaultfd;
  const who = report.process.uid === null ? "this process" : `this process (uid ${report.process.uid})`;
  const refused = (a: OpenAttempt | undefined): boolean =>
    a !== undefined && !a.ok && (a.code === "EPERM" || a.code === "EACCES");

  if (failed.length === report.open.length) {
    out.push("No userfaultfd can be opened here: uffd cannot work until one of the changes below is made.");
  } else if (report.open.some((a) => a.ok && a.userModeOnly)) {
    out.push(
      "Userfaultfd.open() works with its defaults (user-mode-only); the notes below matter only for " +
        "descriptors that must also see faults taken inside system calls (userModeOnly: false).",
    );
  }

  if (sys?.code === "ENOSYS" || sysUmo?.code === "ENOSYS") {
    out.push(
      "The userfaultfd syscall answers ENOSYS: the kernel was built without CONFIG_USERFAULTFD, or a " +
        "seccomp filter hides the syscall. Use a kernel with CONFIG_USERFAULTFD=y or allow the syscall.",
    );
  }
  if (refused(sys) && sysUmo?.ok) {
    out.push(
      `The syscall refuses descriptors that see kernel-mode faults: ${who} lacks CAP_SYS_PTRACE and ` +
        `vm.unprivileged_userfaultfd is ${sysctl ?? "absent"}. Keep userModeOnly: true (the default), ` +
        "or run `sysctl -w vm.unprivileged_userfaultfd=1` (persist it in /etc/sysctl.d/), or grant " +
        'CAP_SYS_PTRACE, or open through /dev/userfaultfd (via: "device").',
    );
  } else if (refused(sysUmo)) {
    out.push(
      "The syscall is refused even for user-mode-only descriptors, which the kernel always allows: a " +
        "seccomp filter or a security module (SELinux, AppArmor) blocks it. Container runtimes' default " +
        "seccomp profiles often do; allow the userfaultfd syscall (e.g. a Docker profile that permits " +
        'it), or open through /dev/userfaultfd (via: "device").',
    );
  }

  const d = report.device;
  if (dev !== undefined && devUmo !== undefined && (!dev.ok || !devUmo.ok)) {
    if (!d.exists) {
      out.push(
        `${DEVICE} does not exist` +
          (d.miscMinor === undefined
            ? " and the kernel does not offer it (it needs Linux 6.1+); use the syscall."
            : `; the kernel offers it: create it with \`mknod -m 600 ${DEVICE} c 10 ${d.miscMinor}\` ` +
              "(udev normally does this), then grant access as below."),
      );
    } else if (refused(dev) || refused(devUmo)) {
      out.push(
        `${DEVICE} is ${d.mode} owned by uid ${d.uid} gid ${d.gid}, and ${who} cannot open it ` +
          "read-write. Grant access, e.g. `setfacl -m u:<user>:rw " + DEVICE + "`, or " +
          "`chgrp <group> " + DEVICE + " && chmod 660 " + DEVICE + "` with the user in <group> " +
          "(a udev rule keeps it across reboots). The device ignores vm.unprivileged_userfaultfd.",
      );
    } else if (!dev.ok || !devUmo.ok) {
      const a = !dev.ok ? dev : devUmo;
      out.push(`${label(a)} failed with ${a.code}: ${a.hint}`);
    }
  }
  return out;
}

/**
 * Reports what userfaultfd can do here: kernel release, which ways of opening a
 * descriptor work (and why the others fail), the settings that decide it, and the
 * features and ioctls the kernel supports. Opens only throwaway descriptors.
 */
export function featuresReport(): FeaturesReport {
  const version = process.versions[libc.runtime] ?? "unknown";
  const open = [
    tryOpen("syscall", false),
    tryOpen("syscall", true),
    tryOpen("device", false),
    tryOpen("device", true),
  ];
  const sysctl = readTextFile("/proc/sys/vm/unprivileged_userfaultfd")?.trim();
  const report: FeaturesReport = {
    runtime: { name: libc.runtime, version },
    kernel: readTextFile("/proc/sys/kernel/osrelease")?.trim() ?? null,
    process: processInfo(),
    open,
    defaultOpenWorks: open.some((a) => a.ok && a.userModeOnly),
    canOpen: open.some((a) => a.ok),
    unprivilegedUserfaultfd: sysctl === undefined || sysctl === "" ? null : Number(sysctl),
    device: deviceInfo(),
    advice: [],
    support: null,
  };
  report.advice = openAdvice(report);
  try {
    const p = Userfaultfd.probe({ refresh: true });
    const unknown: number[] = [];
    for (let i = 0; i < 53; i++) if (Math.floor(p.unknownFeatureBits / 2 ** i) % 2 === 1) unknown.push(i);
    report.support = {
      openedVia: p.openedVia,
      features: p.features,
      featureMask: "0x" + p.featureBits.toString(16),
      unknownFeatureBits: unknown,
      missingFeatures: FEATURE_NAMES.filter((f) => !p.features.includes(f)),
      ioctls: p.ioctls,
      rangeIoctls: { anonymous: rangeIoctls("anonymous"), shmem: rangeIoctls("shmem") },
    };
  } catch (e) {
    report.supportError = e instanceof Error ? e.message : String(e);
  }
  return report;
}

function list(names: readonly string[] | null): string {
  if (names === null) return "(registration failed)";
  return names.length ? names.join(" ") : "none";
}

/** The human-readable form of a {@link FeaturesReport}, as `uffd features` prints it. */
export function formatReport(r: FeaturesReport): string {
  const lines: string[] = [];
  lines.push(`uffd features (${r.runtime.name} ${r.runtime.version})`);
  lines.push(`Kernel: Linux ${r.kernel ?? "(unknown release)"}`);
  lines.push("");
  lines.push("Opening a userfaultfd:");
  let lastHint: string | undefined;
  for (const a of r.open) {
    let what = "ok";
    if (!a.ok) {
      what = `${a.code}: ${a.hint === lastHint ? "(as above)" : a.hint}`;
      lastHint = a.hint;
    }
    lines.push(`  ${label(a).padEnd(36)} ${what}`);
  }
  lines.push(`  Userfaultfd.open() with its defaults: ${r.defaultOpenWorks ? "works" : "fails"}`);
  lines.push("");
  lines.push("Settings:");
  const sysctl = r.unprivilegedUserfaultfd;
  lines.push(
    `  vm.unprivileged_userfaultfd = ${sysctl ?? "(absent)"}` +
      (sysctl === 0 ? " (kernel-mode faults via the syscall need CAP_SYS_PTRACE)" : ""),
  );
  const d = r.device;
  lines.push(
    `  ${DEVICE}: ` +
      (d.exists
        ? `${d.mode} uid ${d.uid} gid ${d.gid}`
        : d.error
        ? `stat failed: ${d.error}`
        : `absent${d.miscMinor === undefined ? "" : ` (kernel offers it: c 10 ${d.miscMinor})`}`),
  );
  const p = r.process;
  lines.push(
    `  this process: uid ${p.uid ?? "?"}, CAP_SYS_PTRACE ${
      p.capSysPtrace === null ? "unknown" : p.capSysPtrace ? "yes" : "no"
    }`,
  );
  if (r.advice.length) {
    lines.push("");
    lines.push(
      r.canOpen ? "Why some ways fail, and what to change:" : "Why it cannot be opened, and what to change:",
    );
    for (const a of r.advice) lines.push(`  - ${a}`);
  }
  lines.push("");
  const s = r.support;
  if (!s) {
    lines.push(`Features: unknown (${r.supportError ?? "no descriptor"})`);
    return lines.join("\n");
  }
  lines.push(`Features (${s.features.length}, mask ${s.featureMask}, probed via ${s.openedVia}):`);
  const width = Math.max(...s.features.map((f) => f.length)) + 2;
  for (let i = 0; i < s.features.length; i += 4) {
    lines.push("  " + s.features.slice(i, i + 4).map((f) => f.padEnd(width)).join("").trimEnd());
  }
  lines.push(
    `Unknown feature bits: ${s.unknownFeatureBits.length ? s.unknownFeatureBits.join(", ") : "none"}`,
  );
  lines.push(`Not supported by this kernel: ${list(s.missingFeatures)}`);
  lines.push(`ioctls after UFFDIO_API: ${list(s.ioctls)}`);
  lines.push(`ioctls on a registered range: anonymous: ${list(s.rangeIoctls.anonymous)}`);
  lines.push(`                              shmem:     ${list(s.rangeIoctls.shmem)}`);
  return lines.join("\n");
}

/** Runs `uffd features [--json]`; returns the exit status. */
export function runFeatures(args: string[], usage: string): number {
  const unknown = args.filter((a) => a !== "--json");
  if (unknown.length) {
    console.error(`uffd features: unknown option ${unknown[0]}\n\n${usage}`);
    return 2;
  }
  const report = featuresReport();
  console.log(args.includes("--json") ? JSON.stringify(report, null, 2) : formatReport(report));
  return report.canOpen ? 0 : 1;
}
