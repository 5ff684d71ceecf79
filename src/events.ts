/**
 * `uffd_msg` decoding into a discriminated union.
 * @module
 */
import {
  UFFD_EVENT,
  UFFD_PAGEFAULT_FLAG_MINOR,
  UFFD_PAGEFAULT_FLAG_WP,
  UFFD_PAGEFAULT_FLAG_WRITE,
} from "./abi.ts";
import { readMsgField, uffd_msg_arms, UFFD_MSG_SIZE } from "./structs.ts";
import { describeValue } from "./checks.ts";
import { invalid } from "./errors.ts";

/** The most messages one {@link EventBuffer} holds (32 MiB of messages: more than any read returns). */
const MAX_CAPACITY = 1 << 20;
import type { Userfaultfd } from "./userfaultfd.ts";

const TWO32 = 4294967296;

/** Why a page fault was raised. */
export type PagefaultKind = "missing" | "wp" | "minor";

/** `UFFD_EVENT_PAGEFAULT`. */
export interface PagefaultEvent {
  /** Discriminant. */
  readonly type: "pagefault";
  /** missing page, write-protected page, or minor fault (page cache hit, not mapped). */
  readonly kind: PagefaultKind;
  /** The fault was a write (`UFFD_PAGEFAULT_FLAG_WRITE`). */
  readonly write: boolean;
  /** Faulting address (page-aligned unless `EXACT_ADDRESS` was requested). */
  readonly address: number;
  /** Faulting thread id (with `THREAD_ID`), else 0. */
  readonly threadId: number;
  /** Raw `pagefault.flags`. */
  readonly flags: number;
}

/** `UFFD_EVENT_FORK`: the child process's new userfaultfd. */
export interface ForkEvent {
  /** Discriminant. */
  readonly type: "fork";
  /** The child's userfaultfd descriptor number, already handshaken. */
  readonly ufd: number;
  /**
   * The child's descriptor as a {@link Userfaultfd} (same features), when the event was
   * read through {@link Userfaultfd.readEvents} / `readEvent` / `events()`. It is `remote`
   * (the child is another process) and the caller owns it: close it when done.
   */
  readonly uffd?: Userfaultfd;
}

/** `UFFD_EVENT_REMAP`: mremap moved a registered range. */
export interface RemapEvent {
  /** Discriminant. */
  readonly type: "remap";
  /** Old start address. */
  readonly from: number;
  /** New start address. */
  readonly to: number;
  /** Old length. */
  readonly len: number;
}

/** `UFFD_EVENT_REMOVE` (madvise DONTNEED/REMOVE) or `UFFD_EVENT_UNMAP` (munmap). */
export interface RangeEvent {
  /** Discriminant. */
  readonly type: "remove" | "unmap";
  /** First address. */
  readonly start: number;
  /** One past the last address. */
  readonly end: number;
}

/** Any event read from a userfaultfd. */
export type UffdEvent = PagefaultEvent | ForkEvent | RemapEvent | RangeEvent;

function arm(words: Uint32Array, base: number, name: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const f of uffd_msg_arms[name]) out[f.name] = readMsgField(words, base, f);
  return out;
}

/** Decodes the message at byte offset `base` of a buffer of `uffd_msg`s. */
export function decodeEvent(bytes: Uint8Array, base = 0): UffdEvent {
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >> 2);
  const code = bytes[base];
  switch (code) {
    case UFFD_EVENT.PAGEFAULT: {
      const p = arm(words, base, "pagefault");
      const kind: PagefaultKind = p.flags & UFFD_PAGEFAULT_FLAG_WP
        ? "wp"
        : p.flags & UFFD_PAGEFAULT_FLAG_MINOR
        ? "minor"
        : "missing";
      return {
        type: "pagefault",
        kind,
        write: (p.flags & UFFD_PAGEFAULT_FLAG_WRITE) !== 0,
        address: p.address,
        threadId: p.ptid,
        flags: p.flags,
      };
    }
    case UFFD_EVENT.FORK:
      return { type: "fork", ufd: arm(words, base, "fork").ufd };
    case UFFD_EVENT.REMAP: {
      const r = arm(words, base, "remap");
      return { type: "remap", from: r.from, to: r.to, len: r.len };
    }
    case UFFD_EVENT.REMOVE:
    case UFFD_EVENT.UNMAP: {
      const r = arm(words, base, "remove");
      return { type: code === UFFD_EVENT.REMOVE ? "remove" : "unmap", start: r.start, end: r.end };
    }
    default:
      throw new RangeError(`unknown uffd_msg event 0x${code.toString(16)}`);
  }
}

/**
 * A reusable buffer for reading several `uffd_msg`s with one `read()`.
 *
 * @example
 * ```ts
 * import { EventBuffer, Userfaultfd } from "@uffd/userfaultfd";
 * using uffd = Userfaultfd.open();
 * const buf = new EventBuffer(16);
 * const n = uffd.readEvents(buf, { timeout: 10 }); // 0 here: nothing faulted
 * for (let i = 0; i < n; i++) console.log(buf.event(i));
 * ```
 */
export class EventBuffer {
  /** Raw messages, `capacity * 32` bytes. */
  readonly bytes: Uint8Array;
  /** How many messages fit. */
  readonly capacity: number;
  /** Messages held after the last read. */
  count = 0;
  /** Fork events' child descriptors by message index, set by {@link Userfaultfd.readEvents}. */
  readonly forks: (Userfaultfd | undefined)[] = [];

  readonly #words: Uint32Array;

  /** A buffer for up to `capacity` messages (default 16). */
  constructor(capacity = 16) {
    if (
      typeof capacity !== "number" || !Number.isSafeInteger(capacity) || capacity < 1 ||
      capacity > MAX_CAPACITY
    ) {
      throw invalid(
        "EventBuffer",
        `capacity must be a whole number of messages from 1 to ${MAX_CAPACITY} (got ${
          describeValue(capacity)
        })`,
      );
    }
    this.capacity = capacity;
    this.bytes = new Uint8Array(capacity * UFFD_MSG_SIZE);
    this.#words = new Uint32Array(this.bytes.buffer);
  }

  // Allocation-free reads of message i for a fault-handling loop (no event object per
  // fault). Nothing is checked: i must be below `count`, and the pagefault fields mean
  // something only when `code(i)` is UFFD_EVENT.PAGEFAULT.

  /** `msg.event` of message i: a {@link UFFD_EVENT} code. */
  code(i: number): number {
    return this.bytes[i * UFFD_MSG_SIZE];
  }

  /** `msg.arg.pagefault.address` of message i (page-aligned unless EXACT_ADDRESS). */
  pagefaultAddress(i: number): number {
    const w = i * 8 + 4;
    return this.#words[w + 1] * TWO32 + this.#words[w];
  }

  /** `msg.arg.pagefault.flags` of message i: UFFD_PAGEFAULT_FLAG_WRITE (1), _WP (2), _MINOR (4). */
  pagefaultFlags(i: number): number {
    return this.#words[i * 8 + 2];
  }

  /** `msg.arg.pagefault.feat.ptid` of message i: the faulting thread (with THREAD_ID), else 0. */
  pagefaultPtid(i: number): number {
    return this.#words[i * 8 + 6];
  }

  /** Decodes message `i` (0 ≤ i < count). */
  event(i: number): UffdEvent {
    if (!Number.isInteger(i) || i < 0 || i >= this.count) {
      throw invalid("EventBuffer", `event ${describeValue(i)} is not in the buffer (it holds ${this.count})`);
    }
    const ev = decodeEvent(this.bytes, i * UFFD_MSG_SIZE);
    const child = this.forks[i];
    return ev.type === "fork" && child ? { ...ev, uffd: child } : ev;
  }

  /** All messages held, decoded. */
  events(): UffdEvent[] {
    const out: UffdEvent[] = [];
    for (let i = 0; i < this.count; i++) out.push(this.event(i));
    return out;
  }
}
