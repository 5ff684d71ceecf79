/**
 * A diagnostic for bench/url.ts, not part of the library: HTTP/1.1 range GETs over plain
 * loopback sockets driven through libc (socket, connect, write, poll, read), `concurrency`
 * keep-alive connections, each body read with read(2) straight into its place in `dest` (one
 * kernel copy, as curl does; no runtime buffers, no per-chunk promise). It measures what a fetcher
 * thread that bypassed `fetch()` for `http://` URLs could reach. Synchronous: it blocks the
 * calling thread until every range is in.
 * @module
 */
import { libc } from "../ffi/mod.ts";

const SYS_READ = 0;
const SYS_SOCKET = 41;
const SYS_CONNECT = 42;
const AF_INET = 2;
const SOCK_STREAM = 1;
const POLLIN = 1;

interface Conn {
  fd: number;
  chunk: number;
  /** Bytes of the response head read so far (into head). */
  headLen: number;
  head: Uint8Array;
  /** Body bytes expected and received. */
  want: number;
  got: number;
  inBody: boolean;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

function connect(host: number[], port: number): number {
  const fd = libc.syscall(SYS_SOCKET, AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw new Error(`socket: errno ${libc.errno()}`);
  const sa = new Uint8Array(16);
  sa[0] = AF_INET;
  sa[2] = port >> 8;
  sa[3] = port & 0xff;
  sa.set(host, 4);
  if (libc.syscall(SYS_CONNECT, fd, libc.addressOf(sa), 16) < 0) {
    throw new Error(`connect: errno ${libc.errno()}`);
  }
  return fd;
}

/**
 * Fetches [0, length) of `url` (http://IPv4:port/path) in `chunkSize` ranges, `concurrency` at
 * a time, into `dest` (an address with `length` bytes). Returns per-range [start ms, end ms].
 */
export function rawRanges(
  url: string,
  dest: number,
  length: number,
  chunkSize: number,
  concurrency: number,
): { requests: number; spans: [number, number][] } {
  const u = new URL(url);
  if (u.protocol !== "http:") throw new Error("rawRanges: http:// only");
  const host = u.hostname.split(".").map(Number);
  const port = Number(u.port || 80);
  const chunks = Math.ceil(length / chunkSize);
  const spans: [number, number][] = [];
  let next = 0;
  let done = 0;
  const conns: Conn[] = [];
  const send = (k: Conn): void => {
    const c = next++;
    k.chunk = c;
    k.headLen = 0;
    k.got = 0;
    k.want = 0;
    k.inBody = false;
    const a = c * chunkSize;
    const b = Math.min(length, a + chunkSize) - 1;
    const req = enc.encode(`GET ${u.pathname} HTTP/1.1\r\nHost: ${u.host}\r\nRange: bytes=${a}-${b}\r\n\r\n`);
    spans[c] = [performance.now(), 0];
    if (libc.write(k.fd, req, req.length) !== req.length) throw new Error(`write: errno ${libc.errno()}`);
  };
  for (let i = 0; i < Math.min(concurrency, chunks); i++) {
    const k: Conn = {
      fd: connect(host, port),
      chunk: -1,
      headLen: 0,
      head: new Uint8Array(16384),
      want: 0,
      got: 0,
      inBody: false,
    };
    conns.push(k);
    send(k);
  }
  const pfd = new Uint8Array(8 * conns.length);
  const pv = new DataView(pfd.buffer);
  try {
    while (done < chunks) {
      let n = 0;
      const live: Conn[] = [];
      for (const k of conns) {
        if (k.chunk < 0) continue;
        pv.setInt32(8 * n, k.fd, true);
        pv.setInt16(8 * n + 4, POLLIN, true);
        pv.setInt16(8 * n + 6, 0, true);
        live[n++] = k;
      }
      if (libc.poll(pfd, n, 10000) <= 0) throw new Error(`poll: nothing in 10 s (errno ${libc.errno()})`);
      for (let i = 0; i < n; i++) {
        if (pv.getInt16(8 * i + 6, true) === 0) continue;
        const k = live[i];
        const start = k.chunk * chunkSize;
        if (!k.inBody) {
          const r = libc.read(k.fd, k.head.subarray(k.headLen), k.head.length - k.headLen);
          if (r <= 0) throw new Error(`read head: ${r} errno ${libc.errno()}`);
          k.headLen += r;
          const text = dec.decode(k.head.subarray(0, k.headLen));
          const end = text.indexOf("\r\n\r\n");
          if (end < 0) continue;
          const status = Number(text.slice(9, 12));
          const len = Number(text.match(/\r\ncontent-length: *(\d+)/i)?.[1] ?? NaN);
          if (status !== 206 || !Number.isFinite(len)) throw new Error(`bad answer: ${text.slice(0, 200)}`);
          k.want = len;
          k.inBody = true;
          const extra = k.head.subarray(enc.encode(text.slice(0, end + 4)).length, k.headLen);
          if (extra.length > 0) new Uint8Array(libc.view(dest + start, extra.length)).set(extra);
          k.got = extra.length;
        } else {
          const r = libc.syscall(SYS_READ, k.fd, dest + start + k.got, k.want - k.got);
          if (r <= 0) throw new Error(`read body: ${r} errno ${libc.errno()}`);
          k.got += r;
        }
        if (k.got === k.want) {
          spans[k.chunk][1] = performance.now();
          done++;
          k.chunk = -1;
          if (next < chunks) send(k);
        }
      }
    }
  } finally {
    for (const k of conns) libc.close(k.fd);
  }
  return { requests: chunks, spans };
}
