// A copy of the module tree (and of the runtime's binary) in a world-readable temporary
// folder, for children that run as another user (setpriv --reuid=65534). Such a child can
// read nothing under a checkout that lives in root's 0700 home or under a `mktemp -d`
// folder, and cannot execute a runtime installed in that checkout's node_modules either.
import {
  chmodSync,
  copyFileSync,
  cpSync,
  existsSync,
  linkSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  statSync,
} from "node:fs";
import { spawnSync, type SpawnSyncReturns } from "node:child_process";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { libc } from "../../ffi/mod.ts";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
/** What a child needs to import mod.ts or run cli.ts (`cli/` once it exists). */
const TREE = ["mod.ts", "cli.ts", "cli", "src", "ffi", "deno.json", "package.json"];

/** Whether every directory from `/` down to `dir` can be searched by any user (o+x). */
function searchableByAll(dir: string): boolean {
  for (let d = resolve(dir);; d = dirname(d)) {
    try {
      if ((statSync(d).mode & 0o001) === 0) return false;
    } catch {
      return false;
    }
    if (d === dirname(d)) return true;
  }
}

/** A temporary directory every user can reach, or undefined (then the caller skips). */
export function worldSearchableTmp(): string | undefined {
  return [tmpdir(), "/tmp", "/var/tmp", "/dev/shm"].find((d) => existsSync(d) && searchableByAll(d));
}

/** Sets 0755 on directories and 0644 on files below `dir` (a clone made under umask 077 has 0600 files). */
function openUp(dir: string): void {
  chmodSync(dir, 0o755);
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) openUp(p);
    else if (e.isFile()) chmodSync(p, 0o644);
  }
}

/**
 * Why a test cannot run a child as uid 65534 here (not root, no setpriv, no temporary folder every
 * user can reach), or false.
 */
export function nobodySkipReason(): string | false {
  return libc.syscall(102 /* getuid */) !== 0
    ? "needs root (to drop to uid 65534)"
    : !existsSync("/usr/bin/setpriv")
    ? "needs setpriv"
    : !worldSearchableTmp()
    ? "needs a temporary directory every user can reach (for a copy of the module tree)"
    : false;
}

/** A world-readable copy of the module tree; dispose it to delete it. */
export interface PortableTree {
  /** The folder (mode 0755, in a world-searchable temporary directory). */
  readonly dir: string;
  /** The runtime's binary, reachable and executable by any user. */
  readonly runtime: string;
  /** A writable home for the child (mode 0777), e.g. for HOME and DENO_DIR. */
  readonly home: string;
  /** The copy of `rel` (a path relative to the repository root). */
  path(rel: string): string;
  /** `[runtime, ...args]` running the copy of `script` the way {@link libc.scriptCommand} runs it. */
  command(script: string, args?: string[]): string[];
  /**
   * Runs the copy of `script` as uid/gid 65534 with no groups (setpriv), in the folder, with a
   * minimal environment and a 25 s deadline (SIGKILL).
   */
  runAsNobody(script: string, args?: string[]): SpawnSyncReturns<string>;
  /** Deletes the folder. */
  [Symbol.dispose](): void;
}

/**
 * Copies mod.ts, cli.ts, src/, ffi/, deno.json, package.json, the `extra` paths (relative to
 * the repository root, e.g. a child script under tests/children/) and the runtime's binary.
 */
export function worldReadableTree(extra: readonly string[] = []): PortableTree {
  const base = worldSearchableTmp();
  if (!base) throw new Error("no temporary directory is searchable by every user");
  const dir = mkdtempSync(join(base, "uffd-tree-"));
  try {
    const koffi = libc.runtime === "node" ? ["node_modules/koffi", "node_modules/@koromix"] : []; // Node's FFI
    for (const rel of [...TREE, ...koffi, ...extra]) {
      const from = join(ROOT, rel);
      if (existsSync(from)) cpSync(from, join(dir, rel), { recursive: true });
    }
    openUp(dir);
    // The runtime: a hard link when the binary is already executable by all (same file system,
    // no 100 MB copy), else a copy.
    mkdirSync(join(dir, "bin"), { mode: 0o755 });
    const runtime = join(dir, "bin", basename(process.execPath));
    let linked = false;
    if ((statSync(process.execPath).mode & 0o005) === 0o005) {
      try {
        linkSync(process.execPath, runtime);
        linked = true;
      } catch {
        // another file system, or protected_hardlinks: copy instead
      }
    }
    if (!linked) {
      copyFileSync(process.execPath, runtime);
      chmodSync(runtime, 0o755);
    }
    const home = join(dir, "home");
    mkdirSync(home);
    chmodSync(home, 0o777);
    const command = (script: string, args: string[] = []): string[] => {
      const [, ...rest] = libc.scriptCommand(join(dir, script), args);
      return [runtime, ...rest];
    };
    return {
      dir,
      runtime,
      home,
      path: (rel) => join(dir, rel),
      command,
      runAsNobody: (script, args = []) =>
        spawnSync("/usr/bin/setpriv", [
          "--reuid=65534",
          "--regid=65534",
          "--clear-groups",
          ...command(script, args),
        ], {
          encoding: "utf8",
          cwd: dir,
          timeout: 25000,
          killSignal: "SIGKILL",
          env: { PATH: "/usr/bin:/bin", HOME: home, DENO_DIR: join(home, "deno") },
        }),
      [Symbol.dispose]: () => rmSync(dir, { recursive: true, force: true }),
    };
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}
