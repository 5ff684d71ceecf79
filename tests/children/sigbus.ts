import { Mapping, pageSize, Userfaultfd } from "../../mod.ts";
const uffd = Userfaultfd.open({ features: ["SIGBUS"] });
const mem = Mapping.anonymous(pageSize);
uffd.register(mem);
console.log("touching");
console.log(mem.bytes()[0]);
console.log("survived");
