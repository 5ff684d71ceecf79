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

/**
 * For child scripts whose page 3 must kill them: reads page 0, announces the touch of
 * page 3 and reads it; "page3=" or "survived" in the output means the process lived on.
 */
export function touchPage0Then3(mem: Uint8Array, close: () => void): void {
  console.log(`page0=${mem[0]}`);
  console.log(`touching page 3`);
  console.log(`page3=${mem[3 * 4096]}`);
  console.log("survived");
  close();
}
