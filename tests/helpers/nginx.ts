// A real nginx (Debian's nginx-light) on a loopback port, started by the test with a config it
// writes: /ok/ serves ranges, /norange/ ignores them (200), /close/ drops the connection on every
// range but the opening probe, /slow/ sends those at 16 KiB/s, /paced/ sends everything at 20 MB/s
// (so that requests last long enough to be seen overlapping), /once/ closes each connection after
// its first response (keepalive_requests 1). The access log records each range
// request's end time and duration, so a test can see which requests overlapped.
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { libc } from "../../ffi/mod.ts";

const CANDIDATES = ["nginx", "/usr/sbin/nginx", "/usr/local/sbin/nginx"];

/** The nginx binary, or undefined. */
export function nginxBinary(): string | undefined {
  return CANDIDATES.find((c) => spawnSync(c, ["-v"]).status === 0);
}

/** Why nginx tests skip here, or false. */
export function noNginx(): string | false {
  return nginxBinary() ? false : "no nginx binary (Debian: apt-get install nginx-light; .ci/run installs it)";
}

/** A running nginx. */
export interface Nginx {
  /** `http://127.0.0.1:PORT`. */
  base: string;
  /** `http://[::1]:PORT` when this machine has IPv6 loopback (nginx listens there too), else undefined. */
  base6: string | undefined;
  /** The directory it serves (put files here). */
  root: string;
  /**
   * Range requests logged so far: start and end (ms), range header, status, uri, nginx's
   * connection serial number and the request's number on that connection (1 = its first).
   */
  requests(): {
    start: number;
    end: number;
    range: string;
    status: number;
    uri: string;
    connection: number;
    connectionRequests: number;
  }[];
  /** Stops it and removes its directory. */
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const s = createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** Whether `host`:`port` can be listened on (IPv6 loopback may be missing). */
async function bindable(host: string, port: number): Promise<boolean> {
  return await new Promise((resolve) => {
    const s = createServer();
    s.on("error", () => resolve(false));
    s.listen(port, host, () => s.close(() => resolve(true)));
  });
}

/** Starts nginx on a free loopback port; resolves once it answers. */
export async function startNginx(): Promise<Nginx> {
  const bin = nginxBinary();
  if (!bin) throw new Error("no nginx");
  const dir = mkdtempSync(join(tmpdir(), "uffd-nginx-"));
  chmodSync(dir, 0o755);
  const root = join(dir, "www");
  spawnSync("mkdir", ["-p", root, join(dir, "tmp")]);
  chmodSync(root, 0o755);
  const port = await freePort();
  const v6 = await bindable("::1", port);
  const log = join(dir, "access.log");
  const asRoot = libc.syscall(102 /* getuid */) === 0; // (process.getuid needs --allow-sys in Deno)
  writeFileSync(
    join(dir, "nginx.conf"),
    `${asRoot ? "user root;\n" : ""}daemon off;
worker_processes 1;
error_log ${dir}/error.log;
pid ${dir}/nginx.pid;
events { worker_connections 256; }
http {
  log_format ranges '$msec $request_time "$http_range" $status $uri $connection $connection_requests';
  access_log ${log} ranges;
  client_body_temp_path ${dir}/tmp/body;
  proxy_temp_path ${dir}/tmp/proxy;
  fastcgi_temp_path ${dir}/tmp/fastcgi;
  uwsgi_temp_path ${dir}/tmp/uwsgi;
  scgi_temp_path ${dir}/tmp/scgi;
  types { }
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:${port};${v6 ? `\n    listen [::1]:${port};` : ""}
    location /ok/ { alias ${root}/; }
    location /norange/ { alias ${root}/; max_ranges 0; }
    location /close/ { alias ${root}/; if ($http_range != "bytes=0-0") { return 444; } }
    location /slow/ { alias ${root}/; if ($http_range != "bytes=0-0") { set $limit_rate 16k; } }
    location /paced/ { alias ${root}/; limit_rate 20m; }
    location /once/ { alias ${root}/; keepalive_requests 1; }
  }
}
`,
  );
  const child = spawn(bin, ["-c", join(dir, "nginx.conf"), "-p", dir], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let err = "";
  child.stderr!.on("data", (d) => (err += d));
  const exited = new Promise<void>((r) => child.on("close", () => r()));
  const base = `http://127.0.0.1:${port}`;
  const until = Date.now() + 10000;
  for (;;) {
    try {
      await fetch(`${base}/ok/`).then((r) => r.body?.cancel());
      break;
    } catch {
      if (child.exitCode !== null || Date.now() > until) {
        child.kill("SIGKILL");
        throw new Error(`nginx did not start: ${err}${readIf(join(dir, "error.log"))}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  return {
    base,
    base6: v6 ? `http://[::1]:${port}` : undefined,
    root,
    requests: () =>
      readIf(log).split("\n").filter((l) => l.includes("bytes=")).map((l) => {
        const m = l.match(/^(\S+) (\S+) "([^"]*)" (\d+) (\S+) (\d+) (\d+)/)!;
        const end = Number(m[1]) * 1000;
        return {
          start: end - Number(m[2]) * 1000,
          end,
          range: m[3],
          status: Number(m[4]),
          uri: m[5],
          connection: Number(m[6]),
          connectionRequests: Number(m[7]),
        };
      }),
    stop: async () => {
      if (child.exitCode === null) child.kill("SIGQUIT");
      const t = setTimeout(() => child.kill("SIGKILL"), 3000);
      await exited;
      clearTimeout(t);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function readIf(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return "";
  }
}

/** The largest number of logged requests that overlapped in time. */
export function mostAtOnce(reqs: { start: number; end: number }[]): number {
  let most = 0;
  for (const q of reqs) most = Math.max(most, reqs.filter((o) => o.start < q.end && q.start < o.end).length);
  return most;
}
