// Child: the main thread itself touches the pages, and the source ends its thread every
// time it fills page 3 (default policy: retry, then poison). The main thread, blocked on
// the fault, cannot start a new standby, so the thread taking over gives page 3 no retry:
// it is poisoned and this process dies of SIGBUS instead of hanging.
import { FaultServer } from "../../mod.ts";
import { touchPage0Then3 } from "../helpers/child.ts";

const server = await FaultServer.start({
  source: {
    kind: "module",
    url: new URL("../helpers/sources/exiting_source.ts", import.meta.url).href,
    length: 8 * 4096,
    options: { deadly: [3] },
  },
  readahead: 1,
});
touchPage0Then3(server.bytes(), () => server.close());
