// A custom page source that fails for page 3: by throwing, by calling close() on the
// Worker, or by an uncaught asynchronous error, depending on init options.
let mode = "throw";
let calls = 0;

export function init(options: { mode?: string } | undefined): void {
  mode = options?.mode ?? "throw";
}

export function fill(offset: number, dest: Uint8Array): Uint8Array | void {
  calls++;
  const page = offset >> 12;
  if (page === 3) {
    if (mode === "close") (globalThis as unknown as { close(): void }).close();
    if (mode === "async-throw") {
      setTimeout(() => {
        throw new Error("uncaught asynchronous failure in the source");
      }, 0);
    } else {
      throw new Error(`source cannot read page ${page} (call ${calls})`);
    }
  }
  const out = new Uint8Array(dest.length);
  out.fill(page + 1);
  return out; // returned buffer: the kernel copies from it directly
}
