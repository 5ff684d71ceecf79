// Child: restores the snapshot in argv[2] lazily with checksums checked at fault time, reads page
// 0 (a good chunk), then page argv[3] (in a damaged chunk): that touch must kill this process with
// SIGBUS (the page is poisoned), never return the damaged bytes.
import process from "node:process";
import { type Mapping, restore } from "../../mod.ts";

const [dir, bad] = process.argv.slice(2);
const r = await restore(dir, { readahead: 1 });
const view = (r.memory as Mapping).bytes();
console.log(`page0=${view[0]}`);
console.log(`touching page ${bad}`);
console.log(`bad=${view[Number(bad) * 4096]}`);
console.log("survived");
r.close();
