// A custom page source: page bytes = (offset / 4096 + i) & 255, after an optional delay.
let delayMs = 0;

export function init(options: { delayMs?: number } | undefined): void {
  delayMs = options?.delayMs ?? 0;
}

export async function fill(offset: number, dest: Uint8Array): Promise<void> {
  if (delayMs > 0) await new Promise((r) => setTimeout(r, delayMs));
  for (let i = 0; i < dest.length; i++) dest[i] = ((offset + i) >> 12) & 255;
}
