// Starts Workers that open libc (ffi/mod.ts) and terminates each after a delay from 0 to 156 ms
// (a Worker takes 120-170 ms here to load), so some are ended before, some while and some after
// their FFI initializes. Under Node a thread ended while koffi initializes its native module
// aborts the process (SIGABRT, "FATAL ERROR: Error::ThrowAsJavaScriptException napi_throw")
// unless terminate() waits for that to end.
// Prints "ended N" and exits 0 when every Worker ended and the process lived.
import "../../ffi/mod.ts";

const N = Number(process.argv[2] ?? 40);
const url = new URL("./ops_libc_worker.ts", import.meta.url);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
let ended = 0;
for (let i = 0; i < N; i += 4) {
  const batch = [0, 1, 2, 3].map(async (j) => {
    const w = new Worker(url, { type: "module" });
    await sleep(((i + j) * 13) % 157);
    w.terminate();
    ended++;
  });
  await Promise.all(batch);
}
await sleep(50);
console.log(`ended ${ended}`);
