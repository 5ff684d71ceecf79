import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { Mapping, pageSize, Userfaultfd } from "../mod.ts";

describe("smoke", () => {
  it("copies a page", { timeout: 10000 }, () => {
    using uffd = Userfaultfd.open();
    using mem = Mapping.anonymous(4 * pageSize);
    uffd.register(mem);
    assert.equal(uffd.copy({ start: mem.start, len: pageSize, src: new Uint8Array(pageSize).fill(9) }), pageSize);
    assert.equal(mem.bytes()[100], 9);
  });
});
