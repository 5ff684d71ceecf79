// Child: a source failing for page 3 under the default policy (retry, then poison).
// Page 0 reads fine; touching page 3 must kill this process with SIGBUS.
import { FaultServer } from "../../mod.ts";
import { touchPage0Then3 } from "../helpers/child.ts";

const server = await FaultServer.start({
  source: {
    kind: "module",
    url: new URL("../helpers/sources/failing_source.ts", import.meta.url).href,
    length: 8 * 4096,
  },
});
touchPage0Then3(server.bytes(), () => server.close());
