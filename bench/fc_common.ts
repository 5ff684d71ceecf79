/**
 * Helpers of bench/firecracker.ts: child processes with their output, the shared benchmark lock
 * (`flock /tmp/uffd-bench.lock`, held by a `flock` child so that no two benchmarks on this machine
 * measure at the same time), statistics and table formatting.
 * @module
 */
import { type ChildProcess, spawn } from "node:child_process";

/** How a child ended. */
export interface Exit {
  code: number | null;
  signal: string | null;
}

/** A running child with its output collected. */
export interface Child {
  child: ChildProcess;
  cmd: string[];
  /** Resolves when the process exited and its output ended. */
  exited: Promise<Exit>;
  stdout(): string;
  stderr(): string;
  /** Resolves once `re` matches the stream; rejects on timeout or when the process exits without it. */
  waitFor(re: RegExp, stream: "stdout" | "stderr", ms: number): Promise<void>;
  /** Resolves with the exit, or with null after `ms` (the child is then killed with SIGKILL). */
  exitWithin(ms: number): Promise<Exit | null>;
  kill(): void;
}

/** Spawns `cmd` in `cwd` with stdin ignored and stdout/stderr collected. */
export function startChild(cmd: string[], cwd: string): Child {
  const child = spawn(cmd[0], cmd.slice(1), { cwd, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  let done = false;
  const waiters = new Set<() => void>();
  const poke = (): void => {
    for (const w of [...waiters]) w();
  };
  child.stdout!.on("data", (d) => {
    out += d;
    poke();
  });
  child.stderr!.on("data", (d) => {
    err += d;
    poke();
  });
  child.on("error", (e) => {
    err += `spawn error: ${e.message}\n`;
  });
  const exited = new Promise<Exit>((resolve) =>
    child.on("close", (code, signal) => {
      done = true;
      resolve({ code, signal });
      poke();
    })
  );
  const kill = (): void => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  };
  return {
    child,
    cmd,
    exited,
    stdout: () => out,
    stderr: () => err,
    kill,
    waitFor(re, stream, ms): Promise<void> {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => finish(new Error(`no ${re} on ${stream} within ${ms} ms`)), ms);
        const finish = (e?: Error): void => {
          clearTimeout(timer);
          waiters.delete(check);
          if (e) reject(e);
          else resolve();
        };
        const check = (): void => {
          if (re.test(stream === "stdout" ? out : err)) finish();
          else if (done) finish(new Error(`exited without ${re} on ${stream}`));
        };
        waiters.add(check);
        check();
      });
    },
    async exitWithin(ms): Promise<Exit | null> {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const r = await Promise.race([
        exited,
        new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), ms))),
      ]);
      clearTimeout(timer);
      if (r === null) {
        kill();
        await exited;
      }
      return r;
    },
  };
}

/** The last line of `text` that parses as a JSON object, or undefined. */
export function lastJson(
  text: string,
  pick?: (o: Record<string, unknown>) => boolean,
): Record<string, unknown> | undefined {
  const lines = text.trim().split("\n").reverse();
  for (const l of lines) {
    if (!l.startsWith("{")) continue;
    try {
      const o = JSON.parse(l);
      if (!pick || pick(o)) return o;
    } catch { /* not JSON */ }
  }
  return undefined;
}

/**
 * The benchmark lock shared with the other benchmarks of this machine: `flock LOCK sh -c 'echo
 * locked; exec cat'` holds it until its stdin is closed (and if this process dies, the pipe closes
 * and the lock goes with it).
 */
export class BenchLock {
  readonly path: string;
  #child: ChildProcess | undefined;
  #since = 0;
  /** Milliseconds spent waiting for the lock and holding it, over all holds. */
  waitedMs = 0;
  heldMs = 0;
  longestHoldMs = 0;

  constructor(path: string) {
    this.path = path;
  }

  /** Waits for the lock; resolves with the milliseconds waited. */
  async acquire(): Promise<number> {
    if (this.#child) throw new Error("the benchmark lock is already held");
    const t0 = performance.now();
    const child = spawn("flock", [this.path, "sh", "-c", "echo locked; exec cat >/dev/null"], {
      stdio: ["pipe", "pipe", "inherit"],
    });
    this.#child = child;
    await new Promise<void>((resolve, reject) => {
      let out = "";
      child.stdout!.on("data", (d) => {
        out += d;
        if (out.includes("locked")) resolve();
      });
      child.on("error", reject);
      child.on("close", (code) => reject(new Error(`flock ${this.path} exited (${code}) before locking`)));
    });
    this.#since = performance.now();
    const waited = this.#since - t0;
    this.waitedMs += waited;
    return waited;
  }

  /** Releases the lock (closes the holder's stdin and waits for it to exit). */
  async release(): Promise<void> {
    const child = this.#child;
    if (!child) return;
    this.#child = undefined;
    const held = performance.now() - this.#since;
    this.heldMs += held;
    this.longestHoldMs = Math.max(this.longestHoldMs, held);
    const gone = new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve();
      else child.on("close", () => resolve());
    });
    child.stdin!.end();
    await gone;
  }

  /** Runs `f` holding the lock. */
  async with<T>(f: () => T | Promise<T>): Promise<T> {
    await this.acquire();
    try {
      return await f();
    } finally {
      await this.release();
    }
  }
}

/** The median of `xs` (NaN when empty). */
export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** `x` with `digits` decimals, "-" when not finite. */
export function fmt(x: number | null | undefined, digits = 1): string {
  return x !== null && x !== undefined && Number.isFinite(x) ? x.toFixed(digits) : "-";
}

/** A Markdown table; the first `left` columns are left-aligned, the rest right-aligned. */
export function markdownTable(head: string[], body: string[][], left = 1): string {
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => (b[i] ?? "").length)));
  const line = (cells: string[]): string =>
    "| " + cells.map((c, i) => (i < left ? (c ?? "").padEnd(w[i]) : (c ?? "").padStart(w[i]))).join(" | ") +
    " |";
  const rule = "|" + w.map((n, i) => (i < left ? "-".repeat(n + 2) : "-".repeat(n + 1) + ":")).join("|") +
    "|";
  return [line(head), rule, ...body.map(line)].join("\n");
}
