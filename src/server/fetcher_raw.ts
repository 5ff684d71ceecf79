/**
 * The raw path of a url source's fetcher (`http://` URLs, see fetcher.ts): HTTP/1.1 range
 * requests over non-blocking libc sockets, up to `concurrency` keep-alive connections, each body
 * read with recv(2) straight into its chunk's cache slot. One synchronous loop polls the request
 * eventfd (the serving threads push chunk indices into the shared ring, then signal it) and every
 * socket, with a bounded timeout so that it sees the server stop (`CTRL.state`), request timeouts
 * and retry times. Only a response's head is parsed in JavaScript (one string per response);
 * nothing is allocated per read and no promise is made per request.
 *
 * The host is resolved once at the start (node:dns, IPv4 and IPv6) and again after a failed
 * connect. An answer this path does not handle (a redirect, a chunked or encoded body) hands every
 * chunk it holds to the fetch() path, which makes the requests from then on.
 * @module
 */
import { lookup } from "node:dns/promises";
import { libc } from "../../ffi/mod.ts";
import { ERRNO, errnoName } from "../errors.ts";
import { POLLIN } from "../eventfd.ts";
import { checkAnswer, type ChunkStore, shortBody, takeRing, tooLong } from "./fetcher.ts";
import { CHUNK_STATE } from "./layout.ts";

const SYS_SOCKET = 41;
const SYS_CONNECT = 42;
const SYS_GETSOCKOPT = 55;
const AF_INET = 2;
const AF_INET6 = 10;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_ERROR = 4;
const IPPROTO_TCP = 6;
const MSG_NOSIGNAL = 0x4000;
const POLLOUT = 4;
// Module-local copies (read on every socket step).
const EINTR = ERRNO.EINTR;
const EAGAIN = ERRNO.EAGAIN;
const EINPROGRESS = 115;
/** Longest response head read (nginx's and S3's are well under 1 KiB). */
const HEAD_BYTES = 16384;
/** Longest the loop blocks in poll() before it looks at the server's state again, ms. */
const TICK_MS = 50;

/** A connection's state. */
const St = { none: 0, connecting: 1, sending: 2, head: 3, body: 4, idle: 5 } as const;

interface Conn {
  fd: number;
  st: number;
  /** The chunk asked for, or -1. */
  chunk: number;
  /** Requests answered on this connection (a reused one that closes before answering is retried for free). */
  uses: number;
  t0: number;
  deadline: number;
  head: Uint8Array;
  headAddr: number;
  headLen: number;
  req: Uint8Array;
  reqLen: number;
  reqOff: number;
  /** Body: the chunk's slot, bytes expected, bytes read, until EOF (no Content-Length). */
  dest: number;
  want: number;
  got: number;
  untilEof: boolean;
  keepAlive: boolean;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/**
 * Runs the raw fetcher until the server stops. `fallback` gets the chunks it held (queued, waiting
 * for a retry, in flight) when it met an answer it cannot handle; the caller fetches them and all
 * later ones.
 */
export async function runRaw(
  store: ChunkStore,
  ring: Int32Array,
  fallback: (pending: number[]) => void,
): Promise<void> {
  const u = store.u;
  const url = new URL(u.url);
  const host = url.hostname.replace(/^\[|\]$/g, "");
  const port = Number(url.port || 80);
  const state = new Int32Array(u.state);
  const nChunks = state.length;
  const attempts = new Int32Array(nChunks);
  const addrTries = new Int32Array(nChunks); // addresses tried in this attempt

  // The request's fixed part: path, host, the caller's headers (Range, Host and the framing
  // headers are this path's own).
  const own = new Set(["range", "host", "connection", "content-length", "transfer-encoding", "keep-alive"]);
  let fixed = `GET ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${url.host}\r\n`;
  let agent = false;
  for (const [k, v] of Object.entries(u.headers)) {
    if (own.has(k.toLowerCase())) continue;
    if (k.toLowerCase() === "user-agent") agent = true;
    fixed += `${k}: ${v}\r\n`;
  }
  if (!agent) fixed += "User-Agent: uffd\r\n";
  fixed += "Accept: */*\r\nRange: bytes=";
  const fixedBytes = enc.encode(fixed);

  // Addresses (sockaddr_in / sockaddr_in6), resolved now and after a failed connect.
  let addrs: Uint8Array[] = [];
  let addrIdx = 0;
  let resolveError = "";
  let lastResolve = -Infinity;
  let resolveWanted = false;
  const resolve = async (): Promise<void> => {
    lastResolve = performance.now();
    resolveWanted = false;
    try {
      const list = await lookup(host, { all: true, verbatim: true });
      const next = list.map((a) => sockaddr(a.address, a.family, port));
      if (next.length > 0) {
        addrs = next;
        addrIdx = 0;
        resolveError = "";
      }
    } catch (e) {
      resolveError = `cannot resolve ${host}: ${e instanceof Error ? e.message : String(e)}`;
    }
  };

  const conns: Conn[] = [];
  for (let i = 0; i < u.concurrency; i++) {
    const head = new Uint8Array(HEAD_BYTES);
    const req = new Uint8Array(fixedBytes.length + 64);
    req.set(fixedBytes);
    conns.push({
      fd: -1,
      st: St.none,
      chunk: -1,
      uses: 0,
      t0: 0,
      deadline: 0,
      head,
      headAddr: libc.addressOf(head),
      headLen: 0,
      req,
      reqLen: 0,
      reqOff: 0,
      dest: 0,
      want: 0,
      got: 0,
      untilEof: false,
      keepAlive: true,
    });
  }
  const queue: number[] = [];
  const waiting: { c: number; due: number }[] = []; // retries after their backoff
  let busy = 0;
  let switchTo = false;
  const pollfds = new Int32Array(2 * (conns.length + 1));
  const revents = new Uint16Array(pollfds.buffer);
  const polled = new Int32Array(conns.length); // pollfd entry i + 1 is conns[polled[i]]
  const efd = new Uint8Array(8);
  const sockErr = new Int32Array(2); // [value, length]
  const sockErrAddr = libc.addressOf(sockErr);

  const close = (k: Conn): void => {
    if (k.fd >= 0) libc.close(k.fd);
    k.fd = -1;
    k.st = St.none;
    k.uses = 0;
  };
  /** The request on k is over (answered or failed): the connection is free again. */
  const release = (k: Conn, keep: boolean): number => {
    const c = k.chunk;
    k.chunk = -1;
    busy--;
    if (keep && k.keepAlive) {
      k.st = St.idle;
      k.uses++;
    } else close(k);
    return c;
  };
  const attemptFailed = (c: number, e: unknown): void => {
    addrTries[c] = 0;
    const backoff = store.failed(c, attempts[c], e);
    if (backoff >= 0) {
      attempts[c]++;
      waiting.push({ c, due: performance.now() + backoff });
    }
  };
  const fail = (k: Conn, e: unknown): void => attemptFailed(release(k, false), e);
  /** A reused connection closed before any byte of its answer: the server dropped an idle one. */
  const stale = (k: Conn): boolean => {
    if (k.uses === 0 || k.headLen > 0) return false;
    queue.unshift(release(k, false)); // again on a new connection, not counted as an attempt
    return true;
  };

  const begin = (k: Conn, c: number, now: number): void => {
    const [start, end] = store.bounds(c);
    busy++;
    store.requested();
    k.chunk = c;
    k.t0 = now;
    k.deadline = now + u.timeoutMs;
    k.headLen = 0;
    k.got = 0;
    k.keepAlive = true;
    k.reqLen = fixedBytes.length +
      enc.encodeInto(`${start}-${end - 1}\r\n\r\n`, k.req.subarray(fixedBytes.length)).written;
    k.reqOff = 0;
    if (k.fd >= 0) {
      k.st = St.sending;
      send(k);
      return;
    }
    if (addrs.length === 0) return fail(k, new Error(resolveError || `cannot resolve ${host}`));
    const a = addrs[addrIdx % addrs.length];
    const fd = libc.syscall(
      SYS_SOCKET,
      a[0] === AF_INET6 ? AF_INET6 : AF_INET,
      SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
      IPPROTO_TCP,
    );
    if (fd < 0) return fail(k, new Error(`socket: ${errnoName(libc.errno())}`));
    k.fd = fd;
    k.uses = 0;
    const r = libc.syscall(SYS_CONNECT, fd, libc.addressOf(a), a.length);
    if (r === 0) {
      k.st = St.sending;
      send(k);
    } else if (libc.errno() === EINPROGRESS) k.st = St.connecting;
    else connectFailed(k, libc.errno());
  };
  const connectFailed = (k: Conn, errno: number): void => {
    addrIdx++;
    resolveWanted = true;
    // The host's other addresses first (IPv6 and IPv4), then a failed attempt.
    if (++addrTries[k.chunk] < addrs.length) queue.unshift(release(k, false));
    else fail(k, new Error(`cannot connect to ${host} port ${port}: ${errnoName(errno)}`));
  };
  const send = (k: Conn): void => {
    const buf = k.reqOff === 0 ? k.req : k.req.subarray(k.reqOff);
    const r = libc.send(k.fd, buf, k.reqLen - k.reqOff, MSG_NOSIGNAL);
    if (r < 0) {
      const errno = libc.errno();
      if (errno === EAGAIN || errno === EINTR) return; // POLLOUT again
      if (!stale(k)) {
        fail(k, new Error(`${u.url}: the connection failed while sending (${errnoName(errno)})`));
      }
      return;
    }
    k.reqOff += r;
    if (k.reqOff === k.reqLen) k.st = St.head;
  };

  /** Bytes of the head have arrived: parses it once complete, then reads on into the slot. */
  const onHead = (k: Conn): void => {
    const r = libc.recvAddr(k.fd, k.headAddr + k.headLen, HEAD_BYTES - k.headLen, 0);
    if (r < 0) {
      const errno = libc.errno();
      if (errno === EAGAIN || errno === EINTR) return;
      if (!stale(k)) {
        fail(k, new Error(`${u.url} closed the connection (${errnoName(errno)}) before answering`));
      }
      return;
    }
    if (r === 0) {
      if (!stale(k)) fail(k, new Error(`${u.url} closed the connection before answering`));
      return;
    }
    let from = Math.max(0, k.headLen - 3);
    k.headLen += r;
    for (;;) {
      const end = headEnd(k.head, from, k.headLen);
      if (end < 0) {
        if (k.headLen === HEAD_BYTES) {
          fail(k, new Error(`${u.url} sent a response head over ${HEAD_BYTES} bytes`));
        }
        return;
      }
      const h = parseHead(dec.decode(k.head.subarray(0, end - 4)));
      if (typeof h === "string") return fail(k, new Error(`${u.url} sent a malformed response head: ${h}`));
      if (h.status >= 100 && h.status < 200) {
        k.head.copyWithin(0, end, k.headLen); // an interim answer: the real one follows
        k.headLen -= end;
        from = 0;
        continue;
      }
      const c = k.chunk;
      const [start, stop] = store.bounds(c);
      const n = stop - start;
      const te = h.headers.get("transfer-encoding");
      const ce = h.headers.get("content-encoding");
      if (
        te !== undefined || (ce !== undefined && ce.toLowerCase() !== "identity") ||
        (h.status >= 300 && h.status < 400 && h.headers.has("location"))
      ) {
        queue.unshift(release(k, false));
        switchTo = true;
        return;
      }
      const conn = (h.headers.get("connection") ?? "").toLowerCase();
      k.keepAlive = h.minor === 1 ? !/\bclose\b/.test(conn) : /\bkeep-alive\b/.test(conn);
      try {
        checkAnswer(u, start, stop, {
          status: h.status,
          statusText: h.statusText,
          contentRange: h.headers.get("content-range") ?? null,
          etag: h.headers.get("etag") ?? null,
        });
      } catch (e) {
        return fail(k, e);
      }
      const cl = h.headers.get("content-length");
      let want = n;
      if (cl !== undefined) {
        if (!/^\d+$/.test(cl)) return fail(k, new Error(`${u.url} sent Content-Length "${cl}"`));
        want = Number(cl);
        if (want > n) return fail(k, tooLong(u, start, n));
      }
      k.untilEof = cl === undefined;
      if (k.untilEof) k.keepAlive = false;
      const extra = k.headLen - end;
      if (extra > want) return fail(k, tooLong(u, start, n));
      k.dest = store.slotAddress(c);
      k.want = want;
      if (extra > 0) libc.memcpy(k.dest, k.headAddr + end, extra);
      k.got = extra;
      k.st = St.body;
      if (k.got === k.want && !k.untilEof) complete(k);
      return;
    }
  };

  const sizeOf = (c: number): number => Math.min(u.length, (c + 1) * u.chunkSize) - c * u.chunkSize;
  const onBody = (k: Conn): void => {
    // With no Content-Length the body ends at EOF: one byte more than the range is an error.
    const r = k.got < k.want
      ? libc.recvAddr(k.fd, k.dest + k.got, k.want - k.got, 0)
      : libc.recvAddr(k.fd, k.headAddr, 1, 0);
    if (r < 0) {
      const errno = libc.errno();
      if (errno === EAGAIN || errno === EINTR) return;
      return fail(k, shortBody(u, k.chunk * u.chunkSize, k.got, sizeOf(k.chunk)));
    }
    if (r === 0) {
      if (k.untilEof) return complete(k);
      return fail(k, shortBody(u, k.chunk * u.chunkSize, k.got, sizeOf(k.chunk)));
    }
    if (k.got >= k.want) return fail(k, tooLong(u, k.chunk * u.chunkSize, sizeOf(k.chunk)));
    k.got += r;
    if (k.got === k.want && !k.untilEof) complete(k);
  };

  const complete = (k: Conn): void => {
    const got = k.got;
    const t0 = k.t0;
    const c = release(k, true);
    const [start, stop] = store.bounds(c);
    try {
      if (got !== stop - start) throw shortBody(u, start, got, stop - start);
      store.landed(c, got, t0);
    } catch (e) {
      attemptFailed(c, e);
    }
  };

  const take = (c: number): void => {
    if (c < 0 || c >= nChunks || Atomics.load(state, c) !== CHUNK_STATE.fetching) return;
    attempts[c] = 0;
    if (!store.fromCacheDir(c)) queue.push(c);
  };

  /** The synchronous loop: returns when the server stopped, a re-resolve is due, or on a switch. */
  const run = (): "stopped" | "resolve" | "fetch" => {
    for (;;) {
      if (store.stopped()) return "stopped";
      if (switchTo) return "fetch";
      let now = performance.now();
      if (resolveWanted && now - lastResolve > 1000) return "resolve";
      libc.read(u.reqFd, efd, 8);
      takeRing(ring, take);
      let next = now + TICK_MS;
      for (let i = waiting.length - 1; i >= 0; i--) {
        if (waiting[i].due <= now) {
          queue.push(waiting[i].c);
          waiting.splice(i, 1);
        } else if (waiting[i].due < next) next = waiting[i].due;
      }
      // Free connections take queued chunks: an open idle one first, then a new one.
      while (queue.length > 0 && busy < conns.length) {
        let k = conns.find((x) => x.st === St.idle);
        k ??= conns.find((x) => x.st === St.none)!;
        begin(k, queue.shift()!, now);
        if (switchTo) return "fetch";
      }
      pollfds[0] = u.reqFd;
      pollfds[1] = POLLIN;
      let n = 0;
      for (let i = 0; i < conns.length; i++) {
        const k = conns[i];
        if (k.fd < 0) continue;
        pollfds[2 * (n + 1)] = k.fd;
        pollfds[2 * (n + 1) + 1] = k.st === St.connecting || k.st === St.sending ? POLLOUT : POLLIN;
        polled[n++] = i;
        if (k.chunk >= 0 && k.deadline < next) next = k.deadline;
      }
      const r = libc.poll(pollfds, n + 1, Math.max(0, Math.ceil(next - now)));
      if (r < 0 && libc.errno() !== EINTR) throw new Error(`poll: ${errnoName(libc.errno())}`);
      now = performance.now();
      for (let j = 0; r > 0 && j < n; j++) {
        if (revents[4 * (j + 1) + 3] === 0) continue;
        const k = conns[polled[j]];
        if (k.fd < 0) continue;
        switch (k.st) {
          case St.connecting: {
            sockErr[0] = 0;
            sockErr[1] = 4;
            libc.syscall(SYS_GETSOCKOPT, k.fd, SOL_SOCKET, SO_ERROR, sockErrAddr, sockErrAddr + 4);
            if (sockErr[0] !== 0) connectFailed(k, sockErr[0]);
            else {
              k.st = St.sending;
              send(k);
            }
            break;
          }
          case St.sending:
            send(k);
            break;
          case St.head:
            onHead(k);
            break;
          case St.body:
            onBody(k);
            break;
          default:
            close(k); // an idle connection the server closed (or wrote to out of turn)
        }
        if (switchTo) return "fetch";
      }
      for (const k of conns) {
        if (k.chunk >= 0 && k.deadline <= now) {
          const e = new Error("timeout");
          e.name = "TimeoutError";
          fail(k, e);
        }
      }
    }
  };

  await resolve();
  for (;;) {
    const why = run();
    if (why === "resolve") {
      await resolve();
      continue;
    }
    const pending = [...queue, ...waiting.map((w) => w.c)];
    for (const k of conns) {
      if (k.chunk >= 0) pending.push(k.chunk);
      close(k);
    }
    if (why === "fetch") fallback(pending);
    return;
  }
}

/** The end of the head (the index after CRLF CRLF) in bytes [from, len), or -1. */
function headEnd(b: Uint8Array, from: number, len: number): number {
  for (let i = from; i + 3 < len; i++) {
    if (b[i] === 13 && b[i + 1] === 10 && b[i + 2] === 13 && b[i + 3] === 10) return i + 4;
  }
  return -1;
}

/** A parsed response head. */
export interface Head {
  /** HTTP/1.x minor version. */
  minor: number;
  /** Status code. */
  status: number;
  /** Reason phrase. */
  statusText: string;
  /** Headers by lower-case name (repeated ones joined with ", "). */
  headers: Map<string, string>;
}

/**
 * Parses an HTTP/1.x response head (status line and header lines, CRLF-separated, without the
 * final empty line): the head, or what is wrong with it. Strict: no obsolete line folding, no
 * whitespace before a colon, conflicting Content-Length values refused.
 */
export function parseHead(text: string): Head | string {
  const lines = text.split("\r\n");
  if (lines.at(-1) === "") lines.pop();
  const m = lines[0].match(/^HTTP\/1\.([01]) (\d{3})(?: ([^\r\n]*))?$/);
  if (!m) return `status line ${JSON.stringify(lines[0].slice(0, 80))}`;
  const headers = new Map<string, string>();
  for (let i = 1; i < lines.length; i++) {
    const h = lines[i].match(/^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*$/);
    if (!h) return `header line ${JSON.stringify(lines[i].slice(0, 80))}`;
    const name = h[1].toLowerCase();
    const old = headers.get(name);
    if (name === "content-length" && old !== undefined && old !== h[2]) {
      return "two different Content-Length values";
    }
    headers.set(name, old === undefined || name === "content-length" ? h[2] : `${old}, ${h[2]}`);
  }
  return { minor: Number(m[1]), status: Number(m[2]), statusText: m[3] ?? "", headers };
}

/** A sockaddr_in or sockaddr_in6 for an address string. */
function sockaddr(address: string, family: number, port: number): Uint8Array {
  if (family === 6) {
    const sa = new Uint8Array(28);
    sa[0] = AF_INET6;
    sa[2] = port >> 8;
    sa[3] = port & 0xff;
    sa.set(ipv6Bytes(address), 8);
    return sa;
  }
  const sa = new Uint8Array(16);
  sa[0] = AF_INET;
  sa[2] = port >> 8;
  sa[3] = port & 0xff;
  sa.set(address.split(".").map(Number), 4);
  return sa;
}

/** The 16 bytes of an IPv6 address ("::1", "fe80::1%eth0", "::ffff:1.2.3.4"). */
export function ipv6Bytes(address: string): Uint8Array {
  const out = new Uint8Array(16);
  let s = address.split("%")[0];
  let v4: number[] | undefined;
  const last = s.lastIndexOf(":");
  if (s.indexOf(".", last) >= 0) {
    v4 = s.slice(last + 1).split(".").map(Number);
    s = s.slice(0, last + 1) + "0:0";
  }
  const [a, b] = s.split("::");
  const hi = a ? a.split(":") : [];
  const lo = b === undefined ? [] : b ? b.split(":") : [];
  const groups = b === undefined ? hi : [...hi, ...new Array(8 - hi.length - lo.length).fill("0"), ...lo];
  groups.forEach((g, i) => {
    const v = parseInt(g, 16);
    out[2 * i] = v >> 8;
    out[2 * i + 1] = v & 0xff;
  });
  if (v4) out.set(v4, 12);
  return out;
}
