// A tiny HTTP/1.1 server (node:net) that answers range requests for one file in a way nginx
// cannot be made to: `short` sends half of each range's body and closes the connection, `long`
// sends 16 bytes more than the range (and says so in Content-Length), `chunked` sends each range
// with Transfer-Encoding: chunked, `redirect` answers 307 to the same path with `?r` once, `flaky`
// answers 503 to the first request for each range. The
// opening probe (bytes=0-0) is always answered properly. Prints its port on stdout; runs until
// killed. Run as a child process (libc.scriptCommand) so the test's own thread never serves.
import { createServer, type Socket } from "node:net";
import { readFileSync } from "node:fs";
import process from "node:process";

const [file, mode] = process.argv.slice(2);
const data = readFileSync(file);
const etag = '"misbehave-1"';
const asked = new Set<number>();

function answer(sock: Socket, path: string, a: number, b: number): void {
  const body = data.subarray(a, b + 1);
  const head = (extra: string, len?: number): string =>
    `HTTP/1.1 206 Partial Content\r\nContent-Range: bytes ${a}-${b}/${data.length}\r\nETag: ${etag}\r\n` +
    (len === undefined ? "" : `Content-Length: ${len}\r\n`) + extra + "\r\n";
  if (a === 0 && b === 0) return void sock.write(head("", 1) + String.fromCharCode(body[0]), "latin1");
  if (mode === "short") {
    sock.write(head("Connection: close\r\n", body.length));
    sock.end(body.subarray(0, body.length >> 1));
  } else if (mode === "long") {
    sock.write(head("", body.length + 16));
    sock.write(body);
    sock.write(Buffer.alloc(16, 0x5a));
  } else if (mode === "chunked") {
    sock.write(head("Transfer-Encoding: chunked\r\n"));
    for (let o = 0; o < body.length; o += 65536) {
      const part = body.subarray(o, Math.min(body.length, o + 65536));
      sock.write(`${part.length.toString(16)}\r\n`);
      sock.write(part);
      sock.write("\r\n");
    }
    sock.write("0\r\n\r\n");
  } else if (mode === "flaky" && !asked.has(a)) {
    asked.add(a);
    sock.write("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
  } else if (mode === "redirect" && !path.includes("?r")) {
    sock.write(`HTTP/1.1 307 Temporary Redirect\r\nLocation: ${path}?r\r\nContent-Length: 0\r\n\r\n`);
  } else {
    sock.write(head("", body.length));
    sock.write(body);
  }
}

const server = createServer((sock) => {
  let buf = "";
  sock.on("error", () => {});
  sock.on("data", (d: Buffer) => {
    buf += d.toString("latin1");
    for (let i = buf.indexOf("\r\n\r\n"); i >= 0; i = buf.indexOf("\r\n\r\n")) {
      const head = buf.slice(0, i);
      buf = buf.slice(i + 4);
      const m = head.match(/\r\nrange: *bytes=(\d+)-(\d+)/i);
      const path = head.split(" ")[1];
      if (!m) {
        sock.end("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
      }
      answer(sock, path, Number(m[1]), Number(m[2]));
    }
  });
});
server.listen(0, "127.0.0.1", () => {
  console.log((server.address() as { port: number }).port);
});
