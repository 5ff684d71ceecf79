/**
 * Declarative codecs for the `uffdio_*` and `pm_scan_arg` structs, which are all
 * arrays of 64-bit fields. Values are packed as two u32 halves (no BigInt); the
 * buffer is reused, so packing allocates nothing.
 * @module
 */

const TWO32 = 4294967296;

/** A struct of consecutive 64-bit fields, packed into one reusable buffer. */
export class U64Struct<F extends string> {
  /** The C struct name, e.g. `"uffdio_copy"`. */
  readonly name: string;
  /** The struct bytes, passed to the kernel as the ioctl argument. */
  readonly bytes: Uint8Array;
  /** u32 words of {@link bytes} (little-endian halves). */
  readonly words: Uint32Array;
  /** The same words, signed, for reading negative results. */
  readonly swords: Int32Array;
  readonly #index: Record<F, number>;

  constructor(name: string, fields: readonly F[]) {
    this.name = name;
    this.words = new Uint32Array(fields.length * 2);
    this.swords = new Int32Array(this.words.buffer);
    this.bytes = new Uint8Array(this.words.buffer);
    this.#index = Object.fromEntries(fields.map((f, i) => [f, i * 2])) as Record<F, number>;
  }

  /** Sets an unsigned field (0 ≤ value < 2^53). */
  set(field: F, value: number): this {
    const i = this.#index[field];
    // The store takes the value modulo 2^32 (ToUint32) and the high word is the truncated
    // quotient: the same halves as `value % 2^32` gave, without a `%` of a double (a call in V8).
    this.words[i] = value;
    this.words[i + 1] = value / TWO32;
    return this;
  }

  /** Reads an unsigned field. */
  get(field: F): number {
    const i = this.#index[field];
    return this.words[i + 1] * TWO32 + this.words[i];
  }

  /** Reads a signed 64-bit field (byte count or negative errno). */
  getSigned(field: F): number {
    const i = this.#index[field];
    return this.swords[i + 1] * TWO32 + this.words[i];
  }

  /** Zeroes every field. */
  clear(): this {
    this.words.fill(0);
    return this;
  }
}

/** `struct uffdio_api`. */
export const uffdio_api = (): U64Struct<"api" | "features" | "ioctls"> =>
  new U64Struct("uffdio_api", ["api", "features", "ioctls"]);
/** `struct uffdio_register`. */
export const uffdio_register = (): U64Struct<"start" | "len" | "mode" | "ioctls"> =>
  new U64Struct("uffdio_register", ["start", "len", "mode", "ioctls"]);
/** `struct uffdio_range`. */
export const uffdio_range = (): U64Struct<"start" | "len"> => new U64Struct("uffdio_range", ["start", "len"]);
/** `struct uffdio_copy`. */
export const uffdio_copy = (): U64Struct<"dst" | "src" | "len" | "mode" | "copy"> =>
  new U64Struct("uffdio_copy", ["dst", "src", "len", "mode", "copy"]);
/** `struct uffdio_zeropage`. */
export const uffdio_zeropage = (): U64Struct<"start" | "len" | "mode" | "zeropage"> =>
  new U64Struct("uffdio_zeropage", ["start", "len", "mode", "zeropage"]);
/** `struct uffdio_move`. */
export const uffdio_move = (): U64Struct<"dst" | "src" | "len" | "mode" | "move"> =>
  new U64Struct("uffdio_move", ["dst", "src", "len", "mode", "move"]);
/** `struct uffdio_writeprotect`. */
export const uffdio_writeprotect = (): U64Struct<"start" | "len" | "mode"> =>
  new U64Struct("uffdio_writeprotect", ["start", "len", "mode"]);
/** `struct uffdio_continue`. */
export const uffdio_continue = (): U64Struct<"start" | "len" | "mode" | "mapped"> =>
  new U64Struct("uffdio_continue", ["start", "len", "mode", "mapped"]);
/** `struct uffdio_poison`. */
export const uffdio_poison = (): U64Struct<"start" | "len" | "mode" | "updated"> =>
  new U64Struct("uffdio_poison", ["start", "len", "mode", "updated"]);

/** Fields of `struct pm_scan_arg` (PAGEMAP_SCAN). */
export type PmScanField =
  | "size"
  | "flags"
  | "start"
  | "end"
  | "walk_end"
  | "vec"
  | "vec_len"
  | "max_pages"
  | "category_inverted"
  | "category_mask"
  | "category_anyof_mask"
  | "return_mask";
/** `struct pm_scan_arg`. */
export const pm_scan_arg = (): U64Struct<PmScanField> =>
  new U64Struct("pm_scan_arg", [
    "size",
    "flags",
    "start",
    "end",
    "walk_end",
    "vec",
    "vec_len",
    "max_pages",
    "category_inverted",
    "category_mask",
    "category_anyof_mask",
    "return_mask",
  ]);

/** One field of the `uffd_msg` union: name, byte offset and type. */
export interface MsgField {
  /** Field name, kernel spelling. */
  readonly name: string;
  /** Byte offset inside the 32-byte message. */
  readonly offset: number;
  /** `u32` or `u64`. */
  readonly type: "u32" | "u64";
}

/** `struct uffd_msg` (32 bytes): the union arms by event code, described once. */
export const UFFD_MSG_SIZE = 32;
/** The fields of each `uffd_msg` union arm. */
export const uffd_msg_arms: Readonly<Record<string, readonly MsgField[]>> = {
  pagefault: [
    { name: "flags", offset: 8, type: "u64" },
    { name: "address", offset: 16, type: "u64" },
    { name: "ptid", offset: 24, type: "u32" },
  ],
  fork: [{ name: "ufd", offset: 8, type: "u32" }],
  remap: [
    { name: "from", offset: 8, type: "u64" },
    { name: "to", offset: 16, type: "u64" },
    { name: "len", offset: 24, type: "u64" },
  ],
  remove: [
    { name: "start", offset: 8, type: "u64" },
    { name: "end", offset: 16, type: "u64" },
  ],
};

/** Reads one field of a message at byte `base` of `words` (a Uint32Array over the message buffer). */
export function readMsgField(words: Uint32Array, base: number, f: MsgField): number {
  const i = (base + f.offset) >> 2;
  return f.type === "u32" ? words[i] : words[i + 1] * TWO32 + words[i];
}
