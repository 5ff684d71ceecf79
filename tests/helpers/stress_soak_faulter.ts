// A soak faulter: touches the pages of one served range in random order and checks words of each
// against the pattern; counts a page as late (not bad) only when it reads as zeros after the
// server's close() began (onClose "zero"). On "poison" it says so on stdout, then touches a page
// that must be poisoned: the process ends by SIGBUS there.
import { libc } from "../../ffi/mod.ts";
import { soakWord } from "./stress_soak_source.ts";

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent) => void) | null;
  postMessage(m: unknown): void;
};

scope.onmessage = (e: MessageEvent) => {
  const m = e.data;
  if (m.type === "poison") {
    const line = new TextEncoder().encode(`POISON-TOUCH ${m.what}\n`);
    libc.write(1, line, line.length);
    const v = new Uint32Array(libc.view(m.addr, 4096));
    const x = v[0]; // SIGBUS here
    const after = new TextEncoder().encode(`POISON-SURVIVED ${x}\n`);
    libc.write(1, after, after.length);
    scope.postMessage({ survived: true });
    return;
  }
  const { addr, first, count, salt, seed } = m;
  const skip: Uint8Array = new Uint8Array(m.skip);
  const closed = new Int32Array(m.closed);
  const v = new Uint32Array(libc.view(addr + first * 4096, count * 4096));
  const order = new Int32Array(count);
  for (let i = 0; i < count; i++) order[i] = i;
  let x = seed | 1;
  for (let i = count - 1; i > 0; i--) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const k = (x >>> 0) % (i + 1);
    const t = order[i];
    order[i] = order[k];
    order[k] = t;
  }
  let touched = 0;
  let bad = 0;
  let late = 0;
  const badInfo: string[] = [];
  for (let j = 0; j < count; j++) {
    const q = order[j];
    const p = first + q;
    if (skip[p] !== 0) continue;
    if (m.stop && Atomics.load(closed, 0) !== 0) break;
    const base = q * 1024;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const r = (x >>> 0) % 1024;
    let ok = v[base] === soakWord(salt, p, 0) && v[base + 1023] === soakWord(salt, p, 1023) &&
      v[base + r] === soakWord(salt, p, r) && v[base + 511] === soakWord(salt, p, 511);
    touched++;
    if (!ok && Atomics.load(closed, 0) !== 0) {
      ok = true;
      for (let i = 0; i < 1024; i++) if (v[base + i] !== 0) ok = false;
      if (ok) late++;
    }
    if (!ok) {
      bad++;
      if (badInfo.length < 4) badInfo.push(`page ${p}: word0 ${v[base]} want ${soakWord(salt, p, 0)}`);
    }
  }
  scope.postMessage({ touched, bad, late, badInfo });
};
