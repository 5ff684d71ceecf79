/*
 * fc_handler: Firecracker's on-demand example page-fault handler, in C, as the benchmark baseline
 * for Firecracker-mode handlers (firecracker src/firecracker/examples/uffd/on_demand_handler.rs and
 * uffd_utils.rs).
 *
 *   cc -O2 -Wall -Werror -pthread -o fc_handler fc_handler.c
 *   fc_handler --socket PATH --mem-file PATH [--accept-timeout-ms N]
 *
 * 1. unlink PATH, bind + listen there, print "listening PATH" on stderr, accept one connection
 *    (within --accept-timeout-ms, default 60000; then exit 4).
 * 2. recvmsg into a 4096-byte buffer with room for 4 descriptors; when a message comes without one,
 *    retry up to 5 times at 100 ms (firecracker #5097). The first descriptor is the uffd; any more are
 *    closed. The body is FC's JSON array of {"base_host_virt_addr","size","offset","page_size"
 *    (bytes; "page_size_kib" when "page_size" is absent)} (a small parser for that fixed shape).
 *    As the example does, the region sizes must add up to the memory file's length.
 * 3. mmap the memory file PROT_READ, MAP_PRIVATE|MAP_POPULATE.
 * 4. poll(uffd, stream): read all pending events, then serve them:
 *    - UFFD_EVENT_PAGEFAULT: align down to the page size, UFFDIO_COPY one page from the file at the
 *      region's offset (or, inside a removed range, UFFDIO_ZEROPAGE for 4 KiB pages and a COPY from a
 *      zero buffer for huge pages). EEXIST = done (then UFFDIO_WAKE that page). EAGAIN = defer: the
 *      fault is retried after the pending events have been read again. ESRCH = the VMM is gone: stop.
 *      Other errors: message, exit 4 (the example panics).
 *    - UFFD_EVENT_REMOVE: mark the range; later faults there are zero-filled.
 *    - any other event: message, exit 4.
 *    When the stream hangs up (POLLHUP/POLLRDHUP/EOF), or on ESRCH, print on stdout
 *    {"faults":N,"pages":N,"zeroPages":N,"removed":N,"removedBytes":N,"eagain":N,"eexist":N,
 *     "serveMs":<first fault event read .. last page installed>,"aliveMs":<handshake .. hang-up>,
 *     "vmmPid":<SO_PEERCRED>,"esrch":bool} and exit 0.
 * Exit codes: 2 usage, 3 system call failure, 4 protocol problem (no fd, bad JSON, size mismatch,
 * unexpected event or ioctl error).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_REGIONS 64
#define MAX_EVENTS 64

struct region {
  uint64_t base, size, offset, page_size;
  unsigned char *removed; /* one byte per page: 1 = removed (zero-fill) */
};
static struct region regions[MAX_REGIONS];
static int nregions;
static unsigned char *file_map;
static uint64_t file_len;
static unsigned char *zero_buf;
static int uffd = -1;

static struct {
  uint64_t faults, pages, zero_pages, removed, removed_bytes, eagain, eexist;
  double first_fault, last_served, t_handshake;
  int esrch;
  int pid;
} st;

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void die(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "fc_handler: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(code);
}

static void summary(void) {
  printf("{\"faults\":%llu,\"pages\":%llu,\"zeroPages\":%llu,\"removed\":%llu,\"removedBytes\":%llu,"
         "\"eagain\":%llu,\"eexist\":%llu,\"serveMs\":%.3f,\"aliveMs\":%.3f,\"vmmPid\":%d,\"esrch\":%s}\n",
         (unsigned long long)st.faults, (unsigned long long)st.pages, (unsigned long long)st.zero_pages,
         (unsigned long long)st.removed, (unsigned long long)st.removed_bytes, (unsigned long long)st.eagain,
         (unsigned long long)st.eexist, st.faults ? st.last_served - st.first_fault : 0.0,
         now_ms() - st.t_handshake, st.pid, st.esrch ? "true" : "false");
  fflush(stdout);
  exit(0);
}

/* The value after "key": in obj (up to its closing brace), or -1 when absent. */
static int json_u64(const char *obj, const char *end, const char *key, uint64_t *out) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\"", key);
  size_t pl = strlen(pat);
  for (const char *p = obj; p + pl <= end; p++) {
    if (memcmp(p, pat, pl)) continue;
    const char *q = p + pl;
    while (q < end && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')) q++;
    if (q >= end || *q != ':') continue;
    q++;
    while (q < end && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')) q++;
    if (q >= end || *q < '0' || *q > '9') return -2;
    uint64_t v = 0;
    while (q < end && *q >= '0' && *q <= '9') v = v * 10 + (uint64_t)(*q++ - '0');
    *out = v;
    return 0;
  }
  return -1;
}

static void parse_regions(const char *body, size_t len) {
  const char *p = body, *end = body + len;
  while (p < end && *p != '[') p++;
  if (p == end) die(4, "handshake: no JSON array in %zu bytes", len);
  for (;;) {
    const char *o = memchr(p, '{', end - p);
    if (!o) break;
    const char *c = memchr(o, '}', end - o);
    if (!c) die(4, "handshake: unterminated object");
    if (nregions == MAX_REGIONS) die(4, "handshake: more than %d regions", MAX_REGIONS);
    struct region *r = &regions[nregions];
    if (json_u64(o, c, "base_host_virt_addr", &r->base) || json_u64(o, c, "size", &r->size) ||
        json_u64(o, c, "offset", &r->offset))
      die(4, "handshake: region %d lacks base_host_virt_addr, size or offset", nregions);
    if (json_u64(o, c, "page_size", &r->page_size) && json_u64(o, c, "page_size_kib", &r->page_size))
      r->page_size = 4096;
    if (r->page_size != 4096 && r->page_size != 2097152)
      die(4, "handshake: region %d: page size %llu", nregions, (unsigned long long)r->page_size);
    if (r->base % r->page_size || r->size % r->page_size || r->size == 0)
      die(4, "handshake: region %d is not page-aligned", nregions);
    r->removed = calloc(r->size / r->page_size, 1);
    nregions++;
    p = c + 1;
  }
  if (!nregions) die(4, "handshake: no regions");
}

static int receive(int conn, char *buf, size_t cap, size_t *len) {
  union {
    char b[CMSG_SPACE(sizeof(int) * 4)];
    struct cmsghdr align;
  } ctl;
  for (int attempt = 0;; attempt++) {
    struct iovec iov = {.iov_base = buf, .iov_len = cap};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof ctl.b};
    ssize_t n = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die(3, "recvmsg: %s", strerror(errno));
    if (msg.msg_flags & MSG_CTRUNC) die(4, "handshake: control message truncated (too many fds)");
    int fd = -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      int k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      int fds[4];
      memcpy(fds, CMSG_DATA(c), sizeof(int) * (k > 4 ? 4 : k));
      for (int i = 0; i < k && i < 4; i++) {
        if (fd < 0) fd = fds[i];
        else close(fds[i]);
      }
    }
    if (fd >= 0) {
      *len = n;
      return fd;
    }
    if (attempt >= 5) die(4, "handshake: no descriptor after %d reads (last %zd bytes)", attempt + 1, n);
    usleep(100000);
  }
}

static struct region *region_of(uint64_t addr) {
  for (int i = 0; i < nregions; i++)
    if (addr >= regions[i].base && addr < regions[i].base + regions[i].size) return &regions[i];
  return NULL;
}

/* 0 = served (or EEXIST), 1 = EAGAIN (defer), 2 = ESRCH (stop). */
static int serve(uint64_t addr) {
  struct region *r = region_of(addr);
  if (!r) die(4, "fault at 0x%llx outside every region", (unsigned long long)addr);
  uint64_t ps = r->page_size, page = addr & ~(ps - 1), idx = (page - r->base) / ps;
  int zero = r->removed[idx];
  int ret, e;
  if (zero && ps == 4096) {
    struct uffdio_zeropage z = {.range = {.start = page, .len = ps}};
    ret = ioctl(uffd, UFFDIO_ZEROPAGE, &z);
    e = errno;
    if (ret && e == EAGAIN && z.zeropage > 0) ret = 0; /* cannot be partial for one page, but be safe */
  } else {
    struct uffdio_copy cp = {
        .dst = page, .src = (uintptr_t)(zero ? zero_buf : file_map + r->offset + (page - r->base)), .len = ps};
    ret = ioctl(uffd, UFFDIO_COPY, &cp);
    e = errno;
    if (ret && e == EAGAIN && cp.copy > 0) die(4, "UFFDIO_COPY: partial copy %lld", (long long)cp.copy);
  }
  if (ret == 0) {
    st.pages++;
    if (zero) st.zero_pages++;
    st.last_served = now_ms();
    return 0;
  }
  if (e == EEXIST) {
    st.eexist++;
    struct uffdio_range w = {.start = page, .len = ps};
    if (ioctl(uffd, UFFDIO_WAKE, &w) && errno != ESRCH) die(4, "UFFDIO_WAKE: %s", strerror(errno));
    st.last_served = now_ms();
    return 0;
  }
  if (e == EAGAIN) {
    st.eagain++;
    return 1;
  }
  if (e == ESRCH) {
    st.esrch = 1;
    return 2;
  }
  die(4, "%s at 0x%llx: %s", zero && ps == 4096 ? "UFFDIO_ZEROPAGE" : "UFFDIO_COPY", (unsigned long long)page,
      strerror(e));
  return 2;
}

static void mark_removed(uint64_t start, uint64_t end) {
  st.removed++;
  st.removed_bytes += end - start;
  for (int i = 0; i < nregions; i++) {
    struct region *r = &regions[i];
    uint64_t a = start > r->base ? start : r->base, b = end < r->base + r->size ? end : r->base + r->size;
    if (a >= b) continue;
    uint64_t ps = r->page_size;
    for (uint64_t p = (a - r->base) / ps; p < (b - r->base + ps - 1) / ps; p++) r->removed[p] = 1;
  }
}

int main(int argc, char **argv) {
  const char *socket_path = NULL, *mem_file = NULL;
  long accept_timeout_ms = 60000;
  static const struct option opts[] = {{"socket", required_argument, 0, 's'},
                                       {"mem-file", required_argument, 0, 'm'},
                                       {"accept-timeout-ms", required_argument, 0, 't'},
                                       {0, 0, 0, 0}};
  int c;
  opterr = 0;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    if (c == 's') socket_path = optarg;
    else if (c == 'm') mem_file = optarg;
    else if (c == 't') accept_timeout_ms = atol(optarg);
    else c = '?';
    if (c == '?') break;
  }
  if (c == '?' || optind < argc || !socket_path || !mem_file) {
    fprintf(stderr, "usage: fc_handler --socket PATH --mem-file PATH [--accept-timeout-ms N]\n");
    return 2;
  }
  int mfd = open(mem_file, O_RDONLY | O_CLOEXEC);
  if (mfd < 0) die(2, "%s: %s", mem_file, strerror(errno));
  struct stat sb;
  if (fstat(mfd, &sb)) die(3, "fstat: %s", strerror(errno));
  file_len = sb.st_size;

  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(socket_path) >= sizeof sa.sun_path) die(2, "socket path too long");
  strcpy(sa.sun_path, socket_path);
  unlink(socket_path);
  int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof sa) || listen(ls, 1))
    die(3, "bind/listen %s: %s", socket_path, strerror(errno));
  fprintf(stderr, "listening %s\n", socket_path);
  fflush(stderr);
  struct pollfd lp = {.fd = ls, .events = POLLIN};
  int pr;
  do pr = poll(&lp, 1, (int)accept_timeout_ms);
  while (pr < 0 && errno == EINTR);
  if (pr <= 0) die(4, "no connection within %ld ms", accept_timeout_ms);
  int conn = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
  if (conn < 0) die(3, "accept: %s", strerror(errno));
  close(ls);
  unlink(socket_path);
  struct ucred cred;
  socklen_t cl = sizeof cred;
  if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0) st.pid = cred.pid;

  char body[4096];
  size_t len = 0;
  uffd = receive(conn, body, sizeof body - 1, &len);
  body[len] = 0;
  st.t_handshake = now_ms();
  parse_regions(body, len);
  uint64_t sum = 0, max_ps = 4096;
  for (int i = 0; i < nregions; i++) {
    sum += regions[i].size;
    if (regions[i].page_size > max_ps) max_ps = regions[i].page_size;
    if (regions[i].offset + regions[i].size > file_len)
      die(4, "region %d [%llu, +%llu) lies beyond the memory file (%llu bytes)", i,
          (unsigned long long)regions[i].offset, (unsigned long long)regions[i].size,
          (unsigned long long)file_len);
  }
  if (sum != file_len)
    die(4, "the regions add up to %llu bytes, the memory file has %llu", (unsigned long long)sum,
        (unsigned long long)file_len);
  file_map = mmap(NULL, file_len, PROT_READ, MAP_PRIVATE | MAP_POPULATE, mfd, 0);
  if (file_map == MAP_FAILED) die(3, "mmap %s: %s", mem_file, strerror(errno));
  close(mfd);
  zero_buf = mmap(NULL, max_ps, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (zero_buf == MAP_FAILED) die(3, "mmap: %s", strerror(errno));

  uint64_t *pending = malloc(sizeof(uint64_t) * 1024);
  size_t npending = 0, cap = 1024;
  for (;;) {
    struct pollfd p[2] = {{.fd = uffd, .events = POLLIN}, {.fd = conn, .events = POLLIN | POLLRDHUP}};
    int r = poll(p, 2, npending ? 1 : -1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) die(3, "poll: %s", strerror(errno));
    if (p[1].revents & (POLLHUP | POLLRDHUP | POLLERR)) summary();
    if (p[1].revents & POLLIN) {
      char b[256];
      ssize_t n = recv(conn, b, sizeof b, MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) summary();
    }
    /* read every pending event */
    for (;;) {
      struct uffd_msg msgs[MAX_EVENTS];
      ssize_t n = read(uffd, msgs, sizeof msgs);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) break;
      if (n < 0) die(3, "read uffd: %s", strerror(errno));
      if (n == 0) break;
      for (size_t i = 0; i < (size_t)n / sizeof msgs[0]; i++) {
        struct uffd_msg *m = &msgs[i];
        if (m->event == UFFD_EVENT_PAGEFAULT) {
          if (!st.faults) st.first_fault = now_ms();
          st.faults++;
          if (npending == cap) pending = realloc(pending, sizeof(uint64_t) * (cap *= 2));
          pending[npending++] = m->arg.pagefault.address;
        } else if (m->event == UFFD_EVENT_REMOVE) {
          mark_removed(m->arg.remove.start, m->arg.remove.end);
        } else {
          die(4, "unexpected uffd event 0x%x", m->event);
        }
      }
      if ((size_t)n < sizeof msgs) break;
    }
    /* serve; what returns EAGAIN stays for the next pass */
    size_t keep = 0;
    for (size_t i = 0; i < npending; i++) {
      int s = serve(pending[i]);
      if (s == 2) summary();
      if (s == 1) pending[keep++] = pending[i];
    }
    npending = keep;
  }
}
