/**
 * Opening a `url` page source: one range request for the first byte tells the object's length
 * (Content-Range), its ETag, and that the server serves ranges at all; every later request is
 * checked against them (see fetcher.ts). S3 and GCS presigned URLs, nginx and any static server
 * that answers `Range` with 206 work.
 * @module
 */
import { invalid, UffdError } from "../errors.ts";
import { ERRNO } from "../errors.ts";

/** Options of a url source (all but `url` optional). */
export interface UrlSourceOptions {
  /** Bytes per range request and cache chunk (default 2 MiB; a multiple of the page size). */
  chunkSize?: number;
  /** Memory cache, bytes (default 256 MiB, at least enough chunks for the fetches in flight). */
  cacheBytes?: number;
  /** A directory of chunk files: a later restore of the same object (URL, ETag, length) fetches nothing. */
  cacheDir?: string;
  /** Range requests in flight at most (default 8). */
  concurrency?: number;
  /** Per-request timeout, ms (default 10000). */
  timeoutMs?: number;
  /** Retries of a request that timed out, failed to connect or came back short (default 3). */
  retries?: number;
  /** Hex SHA-256 of each chunk (an integrity manifest): a chunk that does not match is never used. */
  sha256?: (string | null)[];
  /** Extra request headers (authorization, for instance). */
  headers?: Record<string, string>;
}

/** A url source, opened: pass it as a FaultServer `source`. */
export interface UrlPageSource extends UrlSourceOptions {
  /** The kind. */
  kind: "url";
  /** The object. */
  url: string;
  /** Its length in bytes. */
  length: number;
  /** Its ETag when opened (null when the server sends none). */
  etag: string | null;
}

/**
 * Opens `url` as a page source: asks for its first byte with a range request and checks the
 * answer (206 with a Content-Range giving the length). Rejects with a {@link UffdError} that says
 * what the server did wrong (no range support, no length, an HTTP error, a timeout).
 */
export async function openUrlSource(
  url: string | URL,
  options: UrlSourceOptions = {},
): Promise<UrlPageSource> {
  const href = String(url);
  const timeoutMs = options.timeoutMs ?? 10000;
  let r: Response;
  try {
    r = await fetch(href, {
      headers: { ...options.headers, Range: "bytes=0-0" },
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (e) {
    const what = e instanceof Error && e.name === "TimeoutError"
      ? `no answer within ${timeoutMs} ms`
      : String(e);
    throw new UffdError("open url", ERRNO.EIO, { source: "library", detail: `${href}: ${what}` });
  }
  await r.body?.cancel();
  if (r.status === 200) {
    throw invalid(
      "open url",
      `${href} answered 200 (the whole object) to a Range request: the server does not serve ranges`,
      "EOPNOTSUPP",
    );
  }
  if (r.status !== 206) {
    throw new UffdError("open url", r.status === 404 ? ERRNO.ENOENT : ERRNO.EIO, {
      source: "library",
      detail: `${href} answered ${r.status} ${r.statusText}`,
    });
  }
  const m = (r.headers.get("content-range") ?? "").match(/^bytes 0-0\/(\d+)$/);
  if (!m) {
    throw invalid(
      "open url",
      `${href} sent no usable Content-Range (${r.headers.get("content-range")})`,
      "EBADMSG",
    );
  }
  return { ...options, kind: "url", url: href, length: Number(m[1]), etag: r.headers.get("etag") };
}
