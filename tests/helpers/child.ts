// Runs a script under the current runtime in a child process (for faults that must
// kill the toucher: SIGBUS, POISON) and reports how it ended.
import { spawnSync } from "node:child_process";
import { libc } from "../../ffi/mod.ts";

/** How a child ended. */
export interface ChildResult {
  status: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

/** Runs `script` (a path) with `args` under this runtime, with a hard timeout. */
export function runChild(script: string, args: string[] = [], timeoutMs = 20000): ChildResult {
  const [cmd, ...argv] = libc.scriptCommand(script, args);
  const r = spawnSync(cmd, argv, { encoding: "utf8", timeout: timeoutMs, killSignal: "SIGKILL" });
  return { status: r.status, signal: r.signal, stdout: r.stdout ?? "", stderr: r.stderr ?? "" };
}
