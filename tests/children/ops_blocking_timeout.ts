// A blocking userfaultfd cannot be waited on with poll(2) (it always reports POLLERR): a read
// with a timeout and the events() iterator must fail at once instead of blocking forever.
// Run in a child process so that a regression hangs (and is killed) here, not the test runner.
import { UffdError, Userfaultfd } from "../../mod.ts";

const codeOf = (e: unknown) => e instanceof UffdError ? `${e.code}/${e.source}` : String(e);
const uffd = Userfaultfd.open({ nonBlocking: false });
try {
  uffd.readEvent({ timeout: 10 });
  console.log("readEvent: returned");
} catch (e) {
  console.log(`readEvent: ${codeOf(e)}`);
}
try {
  await uffd.events().next();
  console.log("events: returned");
} catch (e) {
  console.log(`events: ${codeOf(e)}`);
}
uffd.close();
