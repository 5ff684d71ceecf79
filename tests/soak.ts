// The FaultServer soak: rounds of tests/helpers/stress_soak_round.ts, each in its own process,
// until the servers have taken `faults` faults in all. A round runs three servers on three
// descriptors at once with faulter Workers, a page source that fails at random (throws, pages that
// always fail, a serving thread that dies), madvise(DONTNEED) racing the faulters, an mremap of a
// served range between passes and a close() at a random moment; it checks every page it reads and,
// at its end, that no descriptor, thread or registration is left. Some rounds end by touching a
// page whose source always fails: the process must die by SIGBUS right there (poisoned by policy).
//
//   deno run -A tests/soak.ts [--faults 10000000] [--passes 40] [--parallel 2]   (npm run soak)
//
// tests/soak.test.ts runs a short one in every runtime.
import { spawn } from "node:child_process";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { libc } from "../ffi/mod.ts";

/** Options of {@link runSoak}. */
export interface SoakOptions {
  /** Faults to reach in all (default 10 million). */
  faults?: number;
  /** Passes per round (every page of every server faulted once per pass; default 40). */
  passes?: number;
  /** Rounds to run at least, whatever the faults (default 1). */
  minRounds?: number;
  /** Rounds running at once (default 2). */
  parallel?: number;
  /** Every how many rounds one ends by a poisoned page (default 3: rounds 0, 3, 6...). */
  poisonEvery?: number;
  /** The first round's seed (default from the clock). */
  seed?: number;
  /** Deadline of one round, ms (default 180000). */
  roundMs?: number;
  log?: (line: string) => void;
}

/** What a soak did and found. */
export interface SoakSummary {
  rounds: number;
  faults: number;
  pages: number;
  ms: number;
  /** Failures injected: source throws (planned), pages that always fail, thread deaths, closes, madvises, mremaps. */
  injected: {
    throws: number;
    alwaysFail: number;
    threadDeaths: number;
    closes: number;
    madvises: number;
    remaps: number;
  };
  takeovers: number;
  retries: number;
  /** Pages close() poisoned by policy (never placed: at least the pages that always fail). */
  poisonedAtClose: number;
  poisonVerified: number;
  leaks: number;
  failures: string[];
}

const ROUND = fileURLToPath(new URL("./helpers/stress_soak_round.ts", import.meta.url));

interface RoundResult {
  code: number | null;
  signal: string | null;
  lines: string[];
}

function runRound(seed: number, passes: number, poison: boolean, ms: number): Promise<RoundResult> {
  const [cmd, ...argv] = libc.scriptCommand(ROUND, [String(seed), String(passes), poison ? "1" : "0"]);
  return new Promise((resolve) => {
    const child = spawn(cmd, argv, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), ms);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      const lines = out.split("\n").filter(Boolean);
      if (err.trim()) lines.push(...err.trim().split("\n").slice(-5).map((l) => `stderr: ${l}`));
      resolve({ code, signal, lines });
    });
  });
}

/** Runs rounds until `faults` faults; never throws for what it finds (see `failures`). */
export async function runSoak(o: SoakOptions = {}): Promise<SoakSummary> {
  const target = o.faults ?? 10_000_000;
  const passes = o.passes ?? 40;
  const parallel = o.parallel ?? 2;
  const poisonEvery = o.poisonEvery ?? 3;
  const seed0 = o.seed ?? (Date.now() & 0x7fffffff);
  const t0 = Date.now();
  const s: SoakSummary = {
    rounds: 0,
    faults: 0,
    pages: 0,
    ms: 0,
    injected: { throws: 0, alwaysFail: 0, threadDeaths: 0, closes: 0, madvises: 0, remaps: 0 },
    takeovers: 0,
    retries: 0,
    poisonedAtClose: 0,
    poisonVerified: 0,
    leaks: 0,
    failures: [],
  };
  let next = 0;
  const lane = async (): Promise<void> => {
    while ((s.faults < target || next < (o.minRounds ?? 1)) && s.failures.length === 0) {
      const round = next++;
      const seed = (seed0 + round * 7919) | 0 || 1;
      const poison = round % poisonEvery === 0;
      const r = await runRound(seed, passes, poison, o.roundMs ?? 180000);
      s.rounds++;
      const passLines = r.lines.filter((l) => l.startsWith("PASS "));
      const last = passLines.at(-1);
      const passFaults = last ? JSON.parse(last.slice(last.indexOf("{"))).faults : 0;
      const fail = (why: string): void => {
        s.failures.push(
          `round ${round} (seed ${seed}${poison ? ", poison" : ""}): ${why}\n  ${
            r.lines.slice(-6).join("\n  ")
          }`,
        );
      };
      const passErrors = passLines.some((l) => !l.includes(`"errors":0`));
      const roundLine = r.lines.find((l) => l.startsWith("ROUND "));
      if (poison && r.lines.some((l) => l.startsWith("POISON-TOUCH"))) {
        // the round touched a page whose source always fails: it must die there, by SIGBUS
        if (r.signal !== "SIGBUS") {
          fail(`touched a poisoned page and ended with ${r.signal ?? `exit ${r.code}`}, not SIGBUS`);
        } else if (
          r.lines.filter((l) => !l.startsWith("stderr:")).at(-1)?.startsWith("POISON-TOUCH") !== true ||
          passErrors
        ) {
          fail("died by SIGBUS elsewhere");
        } else s.poisonVerified++;
        s.faults += passFaults;
      } else if (roundLine) {
        const j = JSON.parse(roundLine.slice(6));
        s.faults += j.faults;
        s.pages += j.pages;
        s.injected.throws += j.throwsPlanned;
        s.injected.alwaysFail += j.always;
        s.injected.threadDeaths += j.kills;
        s.injected.closes += j.closes;
        s.injected.madvises += j.madvises;
        s.injected.remaps += j.remaps;
        s.takeovers += j.takeovers;
        s.retries += j.retries;
        s.poisonedAtClose += j.poisoned;
        s.leaks += j.leaked;
        if (j.errors.length > 0 || j.leaked > 0 || r.code !== 0) {
          fail(`${j.errors.join("; ")} leaks ${JSON.stringify(j.leaks)}`);
        }
      } else {
        fail(`ended with ${r.signal ?? `exit ${r.code}`} without its summary`);
      }
      o.log?.(
        `round ${round}: ${poison ? "poison ending, " : ""}${r.signal ?? `exit ${r.code}`}; ` +
          `${s.faults} faults in all, ${Math.round((Date.now() - t0) / 1000)} s`,
      );
    }
  };
  await Promise.all(Array.from({ length: parallel }, lane));
  s.ms = Date.now() - t0;
  return s;
}

if (import.meta.main) {
  const arg = (name: string): number | undefined => {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? Number(process.argv[i + 1]) : undefined;
  };
  const s = await runSoak({
    faults: arg("faults"),
    passes: arg("passes"),
    parallel: arg("parallel"),
    seed: arg("seed"),
    log: console.log,
  });
  console.log(JSON.stringify(s, null, 1));
  process.exit(s.failures.length === 0 && s.leaks === 0 ? 0 : 1);
}
