/**
 * Checks of the shape and types of arguments, before anything reaches the kernel: each error
 * names the argument, the type expected, the valid values where there is a fixed set, and
 * what was given.
 * @module
 */
import { invalid } from "./errors.ts";

/** A short description of a value for an error message: its type, and the value when short. */
export function describeValue(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return `an array (${showValue(v).slice(0, 60)})`;
  switch (typeof v) {
    case "string":
      return `the string ${JSON.stringify(v.length > 60 ? v.slice(0, 57) + "..." : v)}`;
    case "number":
    case "boolean":
      return `${typeof v} ${String(v)}`;
    case "bigint":
      return `bigint ${String(v)}n`;
    case "undefined":
      return "undefined";
    case "function":
      return "a function";
    case "symbol":
      return "a symbol";
    default: {
      const name = (v as object).constructor?.name;
      return name && name !== "Object" ? `a ${name}` : "an object";
    }
  }
}

/**
 * A value as JSON for an error message, whatever it holds: bigints as `1n`, functions, symbols and
 * cycles described instead of throwing (JSON.stringify throws on bigints and cycles).
 */
export function showValue(v: unknown): string {
  try {
    const seen = new Set<unknown>();
    const s = JSON.stringify(v, (_k, x) => {
      if (typeof x === "bigint") return `${x}n`;
      if (typeof x === "function" || typeof x === "symbol") return describeValue(x);
      if (typeof x === "object" && x !== null) {
        if (seen.has(x)) return "(cycle)";
        seen.add(x);
      }
      return x;
    });
    return s ?? describeValue(v);
  } catch {
    return describeValue(v);
  }
}

/**
 * Checks that `options` is an object and, when it is a plain option bag, that it has no key
 * outside `allowed`. A class instance (a Mapping passed as a Range) carries its own fields and
 * is not checked for keys.
 */
export function checkOptions(
  op: string,
  options: unknown,
  allowed: readonly string[],
  what = "options",
): void {
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    throw invalid(
      op,
      `${what} must be an object with some of ${allowed.join(", ")} (got ${describeValue(options)})`,
    );
  }
  const proto = Object.getPrototypeOf(options);
  if (proto !== Object.prototype && proto !== null) return;
  // for-in, not Object.keys(): no array allocated per call (resolving ioctls can be hot).
  for (const k in options) {
    if (Object.hasOwn(options, k) && !allowed.includes(k)) {
      throw invalid(op, `unknown option "${k}"; known: ${allowed.join(", ")}`);
    }
  }
}

/** An optional boolean option: undefined, true or false. */
export function checkBoolean(op: string, name: string, v: unknown): void {
  if (v !== undefined && typeof v !== "boolean") {
    throw invalid(op, `${name} must be a boolean, true or false (got ${describeValue(v)})`);
  }
}

/** An optional option that must be one of `values` (strings). */
export function checkOneOf(op: string, name: string, v: unknown, values: readonly string[]): void {
  if (v !== undefined && !values.includes(v as string)) {
    const list = values.map((x) => JSON.stringify(x)).join(", ");
    throw invalid(op, `${name} must be one of ${list} (got ${describeValue(v)})`);
  }
}

/** An optional integer option at least `min`. */
export function checkInteger(op: string, name: string, v: unknown, min = 0): void {
  if (v !== undefined && (typeof v !== "number" || !Number.isSafeInteger(v) || v < min)) {
    throw invalid(op, `${name} must be an integer >= ${min} (got ${describeValue(v)})`);
  }
}

/** An optional number option (not NaN). */
export function checkNumber(op: string, name: string, v: unknown): void {
  if (v !== undefined && (typeof v !== "number" || Number.isNaN(v))) {
    throw invalid(op, `${name} must be a number (got ${describeValue(v)})`);
  }
}

/** The largest timeout poll(2) takes, in milliseconds (its `int timeout`). */
export const MAX_TIMEOUT_MS = 2 ** 31 - 1;

/**
 * An optional timeout in milliseconds: a finite number from 0 to {@link MAX_TIMEOUT_MS} (a fraction
 * is rounded up to whole milliseconds by the caller). Negative or infinite values are refused, not
 * passed on to poll(2), where a negative timeout waits forever.
 */
export function checkTimeout(
  op: string,
  name: string,
  v: unknown,
  hint = "omit it to wait without a limit",
): void {
  if (v !== undefined && (typeof v !== "number" || !Number.isFinite(v) || v < 0 || v > MAX_TIMEOUT_MS)) {
    throw invalid(
      op,
      `${name} must be a number of milliseconds from 0 to ${MAX_TIMEOUT_MS} (${hint}) (got ${
        describeValue(v)
      })`,
    );
  }
}

/** A list of names from `known` (feature names): an array of strings, each one known. */
export function checkNameList(op: string, name: string, v: unknown, known: readonly string[]): void {
  if (!Array.isArray(v)) {
    const example = typeof v === "string" && known.includes(v) ? `["${v}"]` : `["${known[0]}", ...]`;
    throw invalid(
      op,
      `${name} must be an array of names, e.g. { ${name}: ${example} } (got ${describeValue(v)}); ` +
        `known: ${known.join(", ")}`,
    );
  }
  for (const f of v) {
    if (typeof f !== "string") {
      throw invalid(
        op,
        `each of ${name} must be a name string (got ${describeValue(f)}); known: ${known.join(", ")}`,
      );
    }
    if (!known.includes(f)) {
      throw invalid(op, `unknown userfaultfd feature "${f}"; known: ${known.join(", ")}`);
    }
  }
}

/** A Range argument: an object (a Mapping, or `{ start, len }`). Its numbers are checked by checkRange. */
export function checkRangeObject(op: string, range: unknown, what = "range"): void {
  if (typeof range !== "object" || range === null) {
    throw invalid(op, `${what} must be a Mapping or an object { start, len } (got ${describeValue(range)})`);
  }
}
