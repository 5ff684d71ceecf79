// The FaultServer soak, short (tests/soak.ts; `npm run soak` runs 10 million faults), and the
// regression it found: a page whose source failed, poisoned while a REMOVE event was pending
// (POISON answers EAGAIN), was counted unserved and its fault woken forever (a livelock of
// faults and wakes, the faulter never resolved).
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { runSoak } from "./soak.ts";
import { runChild } from "./helpers/child.ts";

describe("FaultServer soak", () => {
  it(
    "a failed page poisoned while a REMOVE event is pending (POISON: EAGAIN) is poisoned once the event is read, not woken forever",
    { timeout: 60000 },
    () => {
      const r = runChild(new URL("./helpers/stress_eagain_child.ts", import.meta.url).pathname, [], 20000);
      assert.match(r.stdout, /touching page 3/, r.stdout + r.stderr);
      assert.doesNotMatch(r.stdout, /survived/);
      assert.equal(
        r.signal,
        "SIGBUS",
        `the toucher must get SIGBUS, not hang (${r.signal ?? r.status})\n${r.stderr}`,
      );
    },
  );

  it(
    "soak (short): 3 servers per round, failing sources, a dying thread, madvise and mremap races, close() at random; no page wrong, no leak, poison by policy",
    { timeout: 150000 },
    async () => {
      const s = await runSoak({
        faults: 40000,
        minRounds: 2, // a poison round (0) and one that ends normally (1), whose counts are checked
        passes: 6,
        parallel: 1,
        poisonEvery: 2,
        log: console.log,
      });
      console.log(`soak: ${JSON.stringify(s)}`);
      assert.deepEqual(s.failures, []);
      assert.equal(s.leaks, 0);
      assert.ok(s.faults >= 40000, `${s.faults} faults`);
      assert.ok(s.poisonVerified >= 1, "a round ended by SIGBUS on a page that always fails");
      assert.ok(s.injected.madvises > 0 && s.injected.remaps > 0 && s.injected.closes > 0);
      // ~2.5% of B's pages always fail; close() poisons at least those (each round checks its own).
      assert.ok(s.injected.alwaysFail > 0, "pages whose source always fails were planned");
      assert.ok(s.poisonedAtClose >= s.injected.alwaysFail, `${s.poisonedAtClose} poisoned at close`);
    },
  );
});
