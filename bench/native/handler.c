// Native baseline for the uffd fault-server benchmark.
//
// Same design as src/server/loop.ts: a handler thread polls [uffd (O_NONBLOCK),
// stop eventfd], reads a batch of uffd_msg, and resolves each fault with one ioctl
// (COPY/MOVE/CONTINUE/ZEROPAGE/WRITEPROTECT), keeping a per-page state byte and the
// same readahead window logic (fixed aligned window, or adaptive doubling).
// The main thread (or N threads) touches one byte per page and is timed.
//
// Usage: handler <scenario> [pages] [warm-up pages (default: all)]
// Prints one JSON line: {"scenario","impl":"c","pages","seconds","usPerPage",...}
// Exits non-zero (and says why on stderr) if the checksum of the served memory is wrong.
//
// The two-process scenarios (remote-threads-4, remote-workers-4: the toucher and the handler are
// different processes, the uffd passed over a Unix socket, as a VMM hands it to a restore handler)
// use two more roles of this binary, which bench/ts_scenarios.ts starts as well:
//   handler touch-remote <socket> <pages> <warm-up pages> <threads>   the toucher process
//   handler serve-remote <socket> <pages>                             the handler process
// and `handler remote-threads-4|remote-min-4|remote-workers-4 [pages] [warm-up]` is both in C: a handler
// process that starts `touch-remote` as its child (see "two processes" below for the protocol).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

// The glibc headers here are from 6.1: define what they lack.
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif
#ifndef UFFD_FEATURE_MINOR_SHMEM
#define UFFD_FEATURE_MINOR_SHMEM (1 << 10)
#endif
#ifndef UFFDIO_REGISTER_MODE_MINOR
#define UFFDIO_REGISTER_MODE_MINOR ((__u64)1 << 2)
#endif
#ifndef _UFFDIO_MOVE
#define _UFFDIO_MOVE (0x05)
struct uffdio_move {
  __u64 dst;
  __u64 src;
  __u64 len;
  __u64 mode;
  __s64 move;
};
#define UFFDIO_MOVE _IOWR(UFFDIO, _UFFDIO_MOVE, struct uffdio_move)
#endif
#ifndef _UFFDIO_CONTINUE
#define _UFFDIO_CONTINUE (0x07)
struct uffdio_continue {
  struct uffdio_range range;
  __u64 mode;
  __s64 mapped;
};
#define UFFDIO_CONTINUE _IOWR(UFFDIO, _UFFDIO_CONTINUE, struct uffdio_continue)
#endif

#define PS 4096UL
#define BATCH 32
#define MAX_ADAPTIVE 64 // pages; the TS default (src/server/fault_server.ts MAX_ADAPTIVE)
#define MAX_WINDOW 64   // largest window of any scenario (seq-adaptive)
#define WARM_FAULTS 65536 // warm-up: at least this many faults (bench/ts_scenarios.ts)
#define WARM_PASSES 32

enum placement { P_COPY, P_MOVE, P_CONTINUE, P_ZERO, P_WP };

static void die(const char *what) {
  fprintf(stderr, "handler: %s: %s\n", what, strerror(errno));
  exit(2);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// ---- the pattern and checksum shared with bench/ts_scenarios.ts ----
// u32 word i of the source is (i * 2654435761 + 12345) mod 2^32.
static void fill_pattern(uint32_t *w, size_t words) {
  for (size_t i = 0; i < words; i++) w[i] = (uint32_t)(i * 2654435761u + 12345u);
}
static uint32_t checksum(const uint32_t *w, size_t words) {
  uint32_t s = 0;
  for (size_t i = 0; i < words; i++) s = s * 31u + w[i];
  return s;
}
// xorshift32 Fisher-Yates permutation, seed 0x9e3779b9 (same in TS).
static void permutation(uint32_t *order, uint32_t n) {
  uint32_t x = 0x9e3779b9u;
  for (uint32_t i = 0; i < n; i++) order[i] = i;
  for (uint32_t i = n - 1; i > 0; i--) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    uint32_t j = x % (i + 1);
    uint32_t t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
}

// ---- the handler ----
struct server {
  int uffd, stopfd;
  enum placement placement;
  char *base;            // registered region
  char *src;             // source bytes (copy/move)
  char *staging;         // staging area (move), MAX_WINDOW pages
  uint8_t *pages;        // per-page state: 0 empty, 1 placed
  size_t npages;
  int fixed;             // fixed window size (pages), 0 = adaptive
  size_t window, last_end, max_window;
  // counters
  uint64_t faults, reads, placed, eexist, wakes;
};

static void wake(struct server *s, size_t p) {
  struct uffdio_range r = {.start = (uintptr_t)(s->base + p * PS), .len = PS};
  if (ioctl(s->uffd, UFFDIO_WAKE, &r)) die("UFFDIO_WAKE");
  s->wakes++;
}

// Places pages [a, a+n); returns bytes done or -errno.
static long place(struct server *s, size_t a, size_t n) {
  char *dst = s->base + a * PS;
  size_t len = n * PS;
  switch (s->placement) {
  case P_COPY: {
    struct uffdio_copy c = {.dst = (uintptr_t)dst, .src = (uintptr_t)(s->src + a * PS), .len = len};
    if (ioctl(s->uffd, UFFDIO_COPY, &c) == 0) return c.copy;
    return c.copy ? c.copy : -errno;
  }
  case P_MOVE: {
    memcpy(s->staging, s->src + a * PS, len);
    struct uffdio_move m = {.dst = (uintptr_t)dst, .src = (uintptr_t)s->staging, .len = len};
    if (ioctl(s->uffd, UFFDIO_MOVE, &m) == 0) return m.move;
    return m.move ? m.move : -errno;
  }
  case P_CONTINUE: {
    struct uffdio_continue c = {.range = {.start = (uintptr_t)dst, .len = len}};
    if (ioctl(s->uffd, UFFDIO_CONTINUE, &c) == 0) return c.mapped;
    return c.mapped ? c.mapped : -errno;
  }
  case P_ZERO: {
    struct uffdio_zeropage z = {.range = {.start = (uintptr_t)dst, .len = len}};
    if (ioctl(s->uffd, UFFDIO_ZEROPAGE, &z) == 0) return z.zeropage;
    return z.zeropage ? z.zeropage : -errno;
  }
  case P_WP: {
    struct uffdio_writeprotect w = {.range = {.start = (uintptr_t)dst, .len = len}, .mode = 0};
    if (ioctl(s->uffd, UFFDIO_WRITEPROTECT, &w)) return -errno;
    return (long)len;
  }
  }
  return -EINVAL;
}

// Window of empty pages for a fault on page p, as in loop.ts windowFor().
static void window_for(struct server *s, size_t p, size_t *lo_out, size_t *hi_out) {
  size_t a, b;
  if (s->fixed) {
    a = p - p % s->fixed;
    b = a + s->fixed;
  } else {
    s->window = p == s->last_end ? (s->window * 2 > s->max_window ? s->max_window : s->window * 2) : 1;
    a = p;
    b = p + s->window;
  }
  if (b > s->npages) b = s->npages;
  size_t lo = p, hi = p + 1;
  while (lo > a && s->pages[lo - 1] == 0) lo--;
  while (hi < b && s->pages[hi] == 0) hi++;
  s->last_end = hi;
  *lo_out = lo;
  *hi_out = hi;
}

static void resolve(struct server *s, size_t p) {
  if (s->placement == P_WP) { // wp-roundtrip: un-protect the page (wakes the writer)
    long r = place(s, p, 1);
    if (r < 0) { errno = (int)-r; die("UFFDIO_WRITEPROTECT"); }
    s->placed++;
    return;
  }
  if (s->pages[p]) { // a second message for a page an earlier window placed
    wake(s, p);
    return;
  }
  size_t a, b;
  window_for(s, p, &a, &b);
  long r = place(s, a, b - a);
  if (r > 0) {
    size_t done = (size_t)r / PS;
    memset(s->pages + a, 1, done);
    s->placed += done;
    if (a + done > p) return;
  }
  if (r == -EEXIST || r > 0) { // part of the window was present: place the faulting page alone
    if (r == -EEXIST) s->eexist++;
    r = place(s, p, 1);
    if (r > 0 || r == -EEXIST) {
      s->pages[p] = 1;
      if (r == -EEXIST) wake(s, p);
      else s->placed++;
      return;
    }
  }
  errno = (int)-r;
  die("placing a page");
}

static void *serve(void *arg) {
  struct server *s = arg;
  struct uffd_msg msgs[BATCH];
  struct pollfd fds[2] = {{.fd = s->uffd, .events = POLLIN}, {.fd = s->stopfd, .events = POLLIN}};
  for (;;) {
    int n = poll(fds, 2, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (fds[1].revents) break;
    if (!(fds[0].revents & POLLIN)) continue;
    ssize_t got = read(s->uffd, msgs, sizeof msgs);
    if (got < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      die("read uffd");
    }
    s->reads++;
    for (int i = 0; i < got / (ssize_t)sizeof msgs[0]; i++) {
      if (msgs[i].event == UFFD_EVENT_REMOVE) { // warm-up pages dropped: serve them again
        size_t a = (msgs[i].arg.remove.start - (uintptr_t)s->base) / PS;
        size_t b = (msgs[i].arg.remove.end - (uintptr_t)s->base) / PS;
        if (b > s->npages) b = s->npages;
        if (a < b) memset(s->pages + a, 0, b - a);
        continue;
      }
      if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
      s->faults++;
      size_t p = (msgs[i].arg.pagefault.address - (uintptr_t)s->base) / PS;
      if (p < s->npages) resolve(s, p);
    }
  }
  return NULL;
}

static int open_uffd(uint64_t features) {
  int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
  if (fd < 0) die("userfaultfd");
  struct uffdio_api api = {.api = UFFD_API, .features = features};
  if (ioctl(fd, UFFDIO_API, &api)) die("UFFDIO_API");
  return fd;
}

static void register_range(int uffd, void *addr, size_t len, uint64_t mode) {
  struct uffdio_register r = {.range = {.start = (uintptr_t)addr, .len = len}, .mode = mode};
  if (ioctl(uffd, UFFDIO_REGISTER, &r)) die("UFFDIO_REGISTER");
}

static void *anon(size_t len) {
  void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) die("mmap");
  madvise(p, len, MADV_NOHUGEPAGE);
  return p;
}

// ---- touchers ----
static volatile uint32_t sink;

static void touch_read(const char *base, size_t from, size_t to) {
  uint32_t acc = 0;
  for (size_t p = from; p < to; p++) acc += ((volatile const char *)base)[p * PS];
  sink += acc;
}

static void touch_write(char *base, size_t from, size_t to) {
  for (size_t p = from; p < to; p++) ((volatile char *)base)[p * PS] = (char)p;
}

struct quarter {
  const char *base;
  size_t from, to;
  pthread_barrier_t *barrier;
};

static void *toucher(void *arg) {
  struct quarter *q = arg;
  pthread_barrier_wait(q->barrier); // go
  touch_read(q->base, q->from, q->to);
  pthread_barrier_wait(q->barrier); // done
  pthread_barrier_wait(q->barrier); // exit (after the CPU snapshot, so the touchers are counted)
  return NULL;
}

// ---- per-thread CPU time (schedstat), as bench/common.ts cpuPerPage ----
#include <dirent.h>
#define MAX_THREADS 16
struct tcpu {
  int tid;
  char comm[32];
  unsigned long long ns, user, sys;
};
static int thread_times(struct tcpu *out) {
  DIR *d = opendir("/proc/self/task");
  int n = 0;
  struct dirent *e;
  while (d && (e = readdir(d)) && n < MAX_THREADS) {
    if (e->d_name[0] == '.') continue;
    char path[320], buf[1024];
    struct tcpu t = {.tid = atoi(e->d_name)};
    snprintf(path, sizeof path, "/proc/self/task/%s/schedstat", e->d_name);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    if (fscanf(f, "%llu", &t.ns) != 1) t.ns = 0;
    fclose(f);
    snprintf(path, sizeof path, "/proc/self/task/%s/stat", e->d_name);
    f = fopen(path, "r");
    if (f) {
      size_t len = fread(buf, 1, sizeof buf - 1, f);
      buf[len] = 0;
      fclose(f);
      char *open = strchr(buf, '('), *close = strrchr(buf, ')');
      if (open && close) {
        size_t cl = (size_t)(close - open - 1);
        if (cl >= sizeof t.comm) cl = sizeof t.comm - 1;
        memcpy(t.comm, open + 1, cl);
        t.comm[cl] = 0;
        // after ") ": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
        char *q = close + 2;
        for (int k = 0; k < 11 && q; k++) q = strchr(q, ' ') ? strchr(q, ' ') + 1 : NULL;
        if (q) sscanf(q, "%llu %llu", &t.user, &t.sys);
      }
    }
    out[n++] = t;
  }
  if (d) closedir(d);
  return n;
}
static struct tcpu cpu_before[MAX_THREADS], cpu_after[MAX_THREADS];
static int n_before, n_after;
static double t_start, t_stop;
static struct rusage ru_start, ru_stop;
static void timer_start(void) {
  n_before = thread_times(cpu_before);
  getrusage(RUSAGE_SELF, &ru_start);
  t_start = now();
}
static void timer_stop(void) {
  t_stop = now();
  getrusage(RUSAGE_SELF, &ru_stop);
  n_after = thread_times(cpu_after);
}
static double tv_us(struct timeval a, struct timeval b) {
  return (b.tv_sec - a.tv_sec) * 1e6 + (b.tv_usec - a.tv_usec);
}
static void print_cpu(size_t pages) {
  double user = tv_us(ru_start.ru_utime, ru_stop.ru_utime), sys = tv_us(ru_start.ru_stime, ru_stop.ru_stime);
  printf(",\"cpuUsPerPage\":%.4f,\"userUsPerPage\":%.4f,\"sysUsPerPage\":%.4f", (user + sys) / pages,
         user / pages, sys / pages);
  printf(",\"cpu\":[");
  int first = 1;
  for (int i = 0; i < n_after; i++) {
    struct tcpu b = {0};
    for (int j = 0; j < n_before; j++)
      if (cpu_before[j].tid == cpu_after[i].tid) b = cpu_before[j];
    unsigned long long ns = cpu_after[i].ns - b.ns;
    if (!ns) continue;
    printf("%s{\"name\":\"%s%s%s\",\"us\":%.3f,\"user\":%llu,\"sys\":%llu}", first ? "" : ",",
           cpu_after[i].tid == getpid() ? "main(" : "", cpu_after[i].comm, cpu_after[i].tid == getpid() ? ")" : "",
           ns / 1000.0 / pages, cpu_after[i].user - b.user, cpu_after[i].sys - b.sys);
    first = 0;
  }
  printf("]");
}

static size_t warmup_pages;

static void report(const char *scenario, size_t pages, double seconds, struct server *s) {
  printf("{\"scenario\":\"%s\",\"impl\":\"c\",\"pages\":%zu,\"seconds\":%.6f,\"usPerPage\":%.4f", scenario,
         pages, seconds, seconds * 1e6 / pages);
  if (s)
    printf(",\"faults\":%llu,\"reads\":%llu,\"placed\":%llu,\"eexist\":%llu,\"wakes\":%llu",
           (unsigned long long)s->faults, (unsigned long long)s->reads, (unsigned long long)s->placed,
           (unsigned long long)s->eexist, (unsigned long long)s->wakes);
  printf(",\"warmup\":%zu", warmup_pages);
  print_cpu(pages);
  printf("}\n");
  fflush(stdout);
}

static void verify(const char *scenario, const void *mem, const void *expect, size_t len) {
  uint32_t got = checksum(mem, len / 4), want = checksum(expect, len / 4);
  if (got != want) {
    fprintf(stderr, "handler: %s: CHECKSUM MISMATCH: got %08x want %08x\n", scenario, got, want);
    exit(3);
  }
}

// ---- two processes: the toucher registers its memory and sends the uffd to the handler ----
//
// Protocol on one Unix stream connection (toucher T, handler H; the same in bench/ts_scenarios.ts):
//   T -> H  the uffd (SCM_RIGHTS, opened with EVENT_REMOVE) and 16 bytes: u64 start, u64 length
//   H -> T  'R'  serving
//   T          warm-up passes (touch, MADV_DONTNEED), then starts its touchers
//   T -> H  'S'  H takes its CPU snapshot;  H -> T 'A'
//   T          the timed pass
//   T -> H  'E' + f64 seconds, f64 T user us, f64 T sys us (the timed pass, T's whole process)
//   H -> T  'H' + f64 faults, f64 H user us, f64 H sys us (between 'S' and 'E', H's whole process)
//   T          checks the memory against the pattern (exit 3 on a mismatch), closes the connection
//   H          serves until the connection ends, then stops
// The parent (the process the runner started) prints the JSON line.
#define REC 25

static void read_full(int fd, void *buf, size_t n, const char *what) {
  for (size_t got = 0; got < n;) {
    ssize_t r = read(fd, (char *)buf + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      if (r == 0) errno = EPIPE;
      die(what);
    }
    got += (size_t)r;
  }
}
static void write_full(int fd, const void *buf, size_t n, const char *what) {
  for (size_t put = 0; put < n;) {
    ssize_t r = write(fd, (const char *)buf + put, n - put);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) die(what);
    put += (size_t)r;
  }
}
static void expect_byte(int fd, char want, const char *what) {
  char c;
  read_full(fd, &c, 1, what);
  if (c != want) {
    fprintf(stderr, "handler: %s: got '%c', expected '%c'\n", what, c, want);
    exit(2);
  }
}
static void send_rec(int fd, char tag, double a, double b, double c) {
  unsigned char m[REC];
  m[0] = (unsigned char)tag;
  memcpy(m + 1, &a, 8);
  memcpy(m + 9, &b, 8);
  memcpy(m + 17, &c, 8);
  write_full(fd, m, REC, "sending a record");
}
static void recv_rec(int fd, char tag, double *a, double *b, double *c) {
  unsigned char m[REC];
  read_full(fd, m, REC, "receiving a record");
  if (m[0] != (unsigned char)tag) {
    fprintf(stderr, "handler: expected record '%c', got '%c'\n", tag, m[0]);
    exit(2);
  }
  memcpy(a, m + 1, 8);
  memcpy(b, m + 9, 8);
  memcpy(c, m + 17, 8);
}
static struct sockaddr_un unix_addr(const char *path) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sa.sun_path) {
    fprintf(stderr, "handler: socket path too long: %s\n", path);
    exit(1);
  }
  strcpy(sa.sun_path, path);
  return sa;
}
static int connect_unix(const char *path) {
  struct sockaddr_un sa = unix_addr(path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) die("connect");
  return fd;
}
static double ru_user_us(struct rusage *a, struct rusage *b) { return tv_us(a->ru_utime, b->ru_utime); }
static double ru_sys_us(struct rusage *a, struct rusage *b) { return tv_us(a->ru_stime, b->ru_stime); }

// H: receives the uffd on `conn`, serves the region from `src` until the connection ends.
// Fills the timed pass's figures (from T's 'E' record and this process's rusage).
struct remote_result {
  double seconds, t_user, t_sys, h_user, h_sys;
  uint64_t faults, reads, placed;
};
static void serve_remote(int conn, char *src, size_t npages, struct remote_result *out) {
  char data[16];
  struct iovec iov = {.iov_base = data, .iov_len = sizeof data};
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int))];
  } control;
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                       .msg_controllen = sizeof control.buf};
  ssize_t n = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC | MSG_WAITALL);
  struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
  if (n != (ssize_t)sizeof data || !c || c->cmsg_type != SCM_RIGHTS) die("receiving the uffd");
  struct server s = {0};
  memcpy(&s.uffd, CMSG_DATA(c), sizeof(int));
  uint64_t start, length;
  memcpy(&start, data, 8);
  memcpy(&length, data + 8, 8);
  if (length != npages * PS) {
    fprintf(stderr, "handler: serve-remote: region of %llu bytes, expected %zu\n", (unsigned long long)length,
            npages * PS);
    exit(2);
  }
  s.base = (char *)(uintptr_t)start; // the other process's address: never dereferenced here
  s.npages = npages;
  s.src = src;
  s.window = 1;
  s.last_end = (size_t)-1;
  s.fixed = 1;
  s.placement = P_COPY;
  s.pages = calloc(npages, 1);
  s.stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (s.stopfd < 0) die("eventfd");
  pthread_t handler;
  if (pthread_create(&handler, NULL, serve, &s)) die("pthread_create");
  write_full(conn, "R", 1, "sending R");
  expect_byte(conn, 'S', "waiting for S");
  struct rusage r0, r1;
  getrusage(RUSAGE_SELF, &r0);
  uint64_t f0 = __atomic_load_n(&s.faults, __ATOMIC_ACQUIRE), d0 = __atomic_load_n(&s.reads, __ATOMIC_ACQUIRE),
           p0 = __atomic_load_n(&s.placed, __ATOMIC_ACQUIRE);
  write_full(conn, "A", 1, "sending A");
  recv_rec(conn, 'E', &out->seconds, &out->t_user, &out->t_sys);
  getrusage(RUSAGE_SELF, &r1);
  out->faults = __atomic_load_n(&s.faults, __ATOMIC_ACQUIRE) - f0;
  out->reads = __atomic_load_n(&s.reads, __ATOMIC_ACQUIRE) - d0;
  out->placed = __atomic_load_n(&s.placed, __ATOMIC_ACQUIRE) - p0;
  out->h_user = ru_user_us(&r0, &r1);
  out->h_sys = ru_sys_us(&r0, &r1);
  send_rec(conn, 'H', (double)out->faults, out->h_user, out->h_sys);
  char b;
  while (read(conn, &b, 1) > 0) { // until T closes the connection
  }
  uint64_t one = 1;
  if (write(s.stopfd, &one, 8) != 8) die("write eventfd");
  pthread_join(handler, NULL);
  // The counters again, now final: the handler counts a page after the ioctl that woke its toucher.
  out->faults = s.faults - f0;
  out->reads = s.reads - d0;
  out->placed = s.placed - p0;
  close(s.uffd);
  close(s.stopfd);
  free(s.pages);
}

// T (C): registers `npages` of anonymous memory, sends the uffd, warms up, and runs `threads`
// pthread touchers on equal parts, timed. Exits 3 when the memory is not the pattern.
static int touch_remote(const char *path, size_t npages, size_t warm, int threads) {
  size_t len = npages * PS;
  char *src = anon(len);
  fill_pattern((uint32_t *)src, len / 4);
  int conn = connect_unix(path);
  int uffd = open_uffd(UFFD_FEATURE_EVENT_REMOVE);
  char *base = anon(len);
  register_range(uffd, base, len, UFFDIO_REGISTER_MODE_MISSING);
  uint64_t region[2] = {(uintptr_t)base, len};
  struct iovec iov = {.iov_base = region, .iov_len = sizeof region};
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int))];
  } control;
  memset(&control, 0, sizeof control);
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                       .msg_controllen = sizeof control.buf};
  struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &uffd, sizeof(int));
  if (sendmsg(conn, &msg, MSG_NOSIGNAL) != (ssize_t)sizeof region) die("sendmsg");
  close(uffd); // the handler has it now
  expect_byte(conn, 'R', "waiting for R");
  // Warm-up as in-process: at least two passes and WARM_FAULTS faults (readahead 1: a fault a page).
  for (size_t pass = 0; warm && pass < WARM_PASSES && (pass < 2 || pass * warm < WARM_FAULTS); pass++) {
    touch_read(base, 0, warm);
    size_t drop = warm + MAX_WINDOW < npages ? warm + MAX_WINDOW : npages;
    if (madvise(base, drop * PS, MADV_DONTNEED)) die("madvise");
  }
  pthread_barrier_t barrier;
  pthread_barrier_init(&barrier, NULL, (unsigned)threads + 1);
  pthread_t th[64];
  struct quarter q[64];
  if (threads < 1 || threads > 64) {
    fprintf(stderr, "handler: touch-remote: 1 to 64 threads\n");
    return 1;
  }
  for (int i = 0; i < threads; i++) {
    q[i] = (struct quarter){base, npages / threads * i, npages / threads * (i + 1), &barrier};
    if (pthread_create(&th[i], NULL, toucher, &q[i])) die("pthread_create");
  }
  write_full(conn, "S", 1, "sending S");
  expect_byte(conn, 'A', "waiting for A");
  struct rusage r0, r1;
  getrusage(RUSAGE_SELF, &r0);
  double t0 = now();
  pthread_barrier_wait(&barrier); // go
  pthread_barrier_wait(&barrier); // done
  double t1 = now();
  getrusage(RUSAGE_SELF, &r1);
  send_rec(conn, 'E', t1 - t0, ru_user_us(&r0, &r1), ru_sys_us(&r0, &r1));
  double faults, h_user, h_sys;
  recv_rec(conn, 'H', &faults, &h_user, &h_sys);
  pthread_barrier_wait(&barrier); // exit
  for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
  verify("touch-remote", base, src, len);
  close(conn);
  return 0;
}

// The C/C two-process scenario: this process is H and starts T (`touch-remote`) as its child.
static int remote_scenario(const char *sc, size_t npages, size_t warm) {
  size_t len = npages * PS;
  char *src = anon(len);
  fill_pattern((uint32_t *)src, len / 4);
  char path[108];
  snprintf(path, sizeof path, "/tmp/uffd-bench-%d.sock", (int)getpid());
  unlink(path);
  struct sockaddr_un sa = unix_addr(path);
  int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (l < 0 || bind(l, (struct sockaddr *)&sa, sizeof sa) || listen(l, 1)) die("listen");
  char self[4096];
  ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
  if (sl <= 0) die("readlink /proc/self/exe");
  self[sl] = 0;
  char pages_s[32], warm_s[32];
  snprintf(pages_s, sizeof pages_s, "%zu", npages);
  snprintf(warm_s, sizeof warm_s, "%zu", warm);
  fflush(stdout);
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    execl(self, self, "touch-remote", path, pages_s, warm_s, "4", (char *)NULL);
    _exit(127);
  }
  struct pollfd pl = {.fd = l, .events = POLLIN};
  if (poll(&pl, 1, 10000) != 1) {
    fprintf(stderr, "handler: %s: the toucher did not connect within 10 s\n", sc);
    kill(child, SIGKILL);
    return 2;
  }
  int conn = accept4(l, NULL, NULL, SOCK_CLOEXEC);
  if (conn < 0) die("accept4");
  close(l);
  unlink(path);
  struct remote_result r = {0};
  serve_remote(conn, src, npages, &r);
  close(conn);
  int status;
  if (waitpid(child, &status, 0) != child) die("waitpid");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fprintf(stderr, "handler: %s: the toucher failed (status 0x%x)\n", sc, status);
    return 3;
  }
  if (r.placed != npages) {
    fprintf(stderr, "handler: %s: placed %llu pages, expected %zu\n", sc, (unsigned long long)r.placed, npages);
    return 3;
  }
  double cpu = r.t_user + r.t_sys + r.h_user + r.h_sys;
  printf("{\"scenario\":\"%s\",\"impl\":\"c\",\"handler\":\"c\",\"toucher\":\"c\",\"pages\":%zu,\"seconds\":%.6f,"
         "\"usPerPage\":%.4f,\"faults\":%llu,\"reads\":%llu,\"placed\":%llu,\"warmup\":%zu,"
         "\"cpuUsPerPage\":%.4f,\"userUsPerPage\":%.4f,\"sysUsPerPage\":%.4f,"
         "\"handlerCpuUsPerPage\":%.4f,\"toucherCpuUsPerPage\":%.4f,"
         "\"handlerUserUsPerPage\":%.4f,\"handlerSysUsPerPage\":%.4f}\n",
         sc, npages, r.seconds, r.seconds * 1e6 / npages, (unsigned long long)r.faults,
         (unsigned long long)r.reads, (unsigned long long)r.placed, warm, cpu / npages,
         (r.t_user + r.h_user) / npages, (r.t_sys + r.h_sys) / npages, (r.h_user + r.h_sys) / npages,
         (r.t_user + r.t_sys) / npages, r.h_user / npages, r.h_sys / npages);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 2 && !strcmp(argv[1], "touch-remote")) {
    if (argc != 6) {
      fprintf(stderr, "usage: handler touch-remote <socket> <pages> <warm-up pages> <threads>\n");
      return 1;
    }
    return touch_remote(argv[2], strtoul(argv[3], NULL, 10), strtoul(argv[4], NULL, 10), atoi(argv[5]));
  }
  if (argc >= 2 && !strcmp(argv[1], "serve-remote")) {
    if (argc != 4) {
      fprintf(stderr, "usage: handler serve-remote <socket> <pages>\n");
      return 1;
    }
    size_t npages = strtoul(argv[3], NULL, 10);
    char *src = anon(npages * PS);
    fill_pattern((uint32_t *)src, npages * PS / 4);
    int conn = connect_unix(argv[2]);
    struct remote_result r = {0};
    serve_remote(conn, src, npages, &r);
    return 0;
  }
  if (argc < 2) {
    fprintf(stderr,
            "usage: handler <seq-copy-4k|rand-copy-4k|seq-copy-64k|seq-adaptive|move|continue|zeropage|"
            "wp-roundtrip|threads-4|zero-fill|memcpy-4k|remote-threads-4|remote-min-4|remote-workers-4> [pages] [warm-up pages]\n");
    return 1;
  }
  const char *sc = argv[1];
  size_t npages = argc > 2 ? strtoul(argv[2], NULL, 10) : 16384;
  // Warm-up pages (default: all): faulted in and dropped before the timed pass, as in TS.
  warmup_pages = argc > 3 ? strtoul(argv[3], NULL, 10) : npages;
  if (warmup_pages > npages) warmup_pages = npages;
  size_t len = npages * PS;
  if (npages < 4 || npages % 16) {
    fprintf(stderr, "handler: pages must be a positive multiple of 16\n");
    return 1;
  }
  if (!strcmp(sc, "remote-threads-4") || !strcmp(sc, "remote-min-4") || !strcmp(sc, "remote-workers-4")) {
    return remote_scenario(sc, npages, warmup_pages);
  }

  char *src = anon(len);
  fill_pattern((uint32_t *)src, len / 4);

  if (!strcmp(sc, "zero-fill")) { // the kernel's own anonymous write fault, no userfaultfd
    if (warmup_pages) { // warm-up on other memory, as the TS version does
      char *w = anon(warmup_pages * PS);
      touch_write(w, 0, warmup_pages);
      munmap(w, warmup_pages * PS);
    }
    char *m = anon(len);
    timer_start();
    touch_write(m, 0, npages);
    timer_stop();
    for (size_t p = 0; p < npages; p++)
      if (m[p * PS] != (char)p || m[p * PS + 1] != 0) {
        fprintf(stderr, "handler: zero-fill: wrong content at page %zu\n", p);
        return 3;
      }
    report(sc, npages, t_stop - t_start, NULL);
    return 0;
  }
  if (!strcmp(sc, "memcpy-4k")) { // copying the same bytes into present memory
    char *m = anon(len);
    memset(m, 1, len); // populate
    for (size_t p = 0; p < npages; p++) memcpy(m + p * PS, src + p * PS, PS); // warm-up pass
    memset(m, 1, len);
    timer_start();
    for (size_t p = 0; p < npages; p++) memcpy(m + p * PS, src + p * PS, PS);
    timer_stop();
    verify(sc, m, src, len);
    report(sc, npages, t_stop - t_start, NULL);
    return 0;
  }

  struct server s = {0};
  s.npages = npages;
  s.src = src;
  s.window = 1;
  s.last_end = (size_t)-1;
  s.fixed = 1;
  s.pages = calloc(npages, 1);
  s.stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (s.stopfd < 0) die("eventfd");
  int shm = -1;
  char *alias = NULL;
  uint64_t features = UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMAP;
  uint64_t mode = UFFDIO_REGISTER_MODE_MISSING;

  if (!strcmp(sc, "seq-copy-4k") || !strcmp(sc, "rand-copy-4k") || !strcmp(sc, "threads-4")) {
    s.placement = P_COPY;
  } else if (!strcmp(sc, "seq-copy-64k")) {
    s.placement = P_COPY;
    s.fixed = 16;
  } else if (!strcmp(sc, "seq-adaptive")) {
    s.placement = P_COPY;
    s.fixed = 0;
    s.max_window = MAX_ADAPTIVE;
  } else if (!strcmp(sc, "move")) {
    s.placement = P_MOVE;
    features |= UFFD_FEATURE_MOVE;
  } else if (!strcmp(sc, "continue")) {
    s.placement = P_CONTINUE;
    features |= UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_MISSING_SHMEM;
    mode = UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_MISSING;
  } else if (!strcmp(sc, "zeropage")) {
    s.placement = P_ZERO;
  } else if (!strcmp(sc, "wp-roundtrip")) {
    s.placement = P_WP;
    features = 0;
    mode = UFFDIO_REGISTER_MODE_WP;
  } else {
    fprintf(stderr, "handler: unknown scenario %s\n", sc);
    return 1;
  }
  s.uffd = open_uffd(features);

  if (s.placement == P_CONTINUE) {
    shm = memfd_create("uffd-bench", MFD_CLOEXEC);
    if (shm < 0) die("memfd_create");
    if (ftruncate(shm, (off_t)len)) die("ftruncate");
    alias = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, shm, 0);
    s.base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, shm, 0);
    if (alias == MAP_FAILED || s.base == MAP_FAILED) die("mmap memfd");
    memcpy(alias, src, len); // populate the page cache out of band
  } else {
    s.base = anon(len);
  }
  if (s.placement == P_MOVE) {
    s.staging = anon(MAX_WINDOW * PS);
  }
  if (s.placement == P_WP) {
    memcpy(s.base, src, len); // present pages
  }
  register_range(s.uffd, s.base, len, mode);
  if (s.placement == P_WP) {
    struct uffdio_writeprotect w = {.range = {.start = (uintptr_t)s.base, .len = len},
                                    .mode = UFFDIO_WRITEPROTECT_MODE_WP};
    if (ioctl(s.uffd, UFFDIO_WRITEPROTECT, &w)) die("UFFDIO_WRITEPROTECT");
  }

  pthread_t handler;
  if (pthread_create(&handler, NULL, serve, &s)) die("pthread_create");

  // Warm-up, as the TS version does (there it lets the JIT run warm code): the first
  // quarter of the pages is faulted in, then dropped (a REMOVE event resets their state),
  // or for wp-roundtrip written and protected again.
  size_t warm = warmup_pages;
  if (s.placement == P_WP) {
    touch_write(s.base, 0, warm);
    struct uffdio_writeprotect w = {.range = {.start = (uintptr_t)s.base, .len = warm * PS},
                                    .mode = UFFDIO_WRITEPROTECT_MODE_WP};
    if (warm && ioctl(s.uffd, UFFDIO_WRITEPROTECT, &w)) die("UFFDIO_WRITEPROTECT");
    while (__atomic_load_n(&s.placed, __ATOMIC_ACQUIRE) < warm) sched_yield(); // counters settle
  } else {
    // At least two passes (the first drop is the first REMOVE event), then passes until
    // WARM_FAULTS faults were served, as the TS version does.
    for (int pass = 0;
         warm && pass < WARM_PASSES && (pass < 2 || __atomic_load_n(&s.faults, __ATOMIC_ACQUIRE) < WARM_FAULTS);
         pass++) {
      touch_read(s.base, 0, warm);
      // Drop the warm-up pages plus what the largest readahead window placed beyond them.
      size_t drop = warm + MAX_WINDOW < npages ? warm + MAX_WINDOW : npages;
      if (madvise(s.base, drop * PS, MADV_DONTNEED)) die("madvise");
    }
  }
  uint64_t f0 = s.faults, r0 = s.reads, p0 = s.placed;

  if (!strcmp(sc, "threads-4")) {
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, 5);
    pthread_t th[4];
    struct quarter q[4];
    for (int i = 0; i < 4; i++) {
      q[i] = (struct quarter){s.base, npages / 4 * i, npages / 4 * (i + 1), &barrier};
      if (pthread_create(&th[i], NULL, toucher, &q[i])) die("pthread_create");
    }
    timer_start();
    pthread_barrier_wait(&barrier);
    pthread_barrier_wait(&barrier);
    timer_stop();
    pthread_barrier_wait(&barrier);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
  } else if (!strcmp(sc, "rand-copy-4k")) {
    uint32_t *order = malloc(npages * sizeof *order);
    permutation(order, (uint32_t)npages);
    uint32_t acc = 0;
    timer_start();
    for (size_t i = 0; i < npages; i++) acc += ((volatile char *)s.base)[(size_t)order[i] * PS];
    timer_stop();
    sink += acc;
    free(order);
  } else if (s.placement == P_WP) {
    timer_start();
    touch_write(s.base, 0, npages);
    timer_stop();
  } else {
    timer_start();
    touch_read(s.base, 0, npages);
    timer_stop();
  }

  uint64_t one = 1;
  if (write(s.stopfd, &one, 8) != 8) die("write eventfd");
  pthread_join(handler, NULL);

  if (s.placement == P_ZERO) {
    char *z = anon(len);
    memset(z, 0, len);
    verify(sc, s.base, z, len);
  } else if (s.placement == P_WP) {
    for (size_t p = 0; p < npages; p++) src[p * PS] = (char)p; // what the toucher wrote
    verify(sc, s.base, src, len);
  } else {
    verify(sc, s.base, src, len);
  }
  s.faults -= f0;
  s.reads -= r0;
  s.placed -= p0;
  if (s.placed != npages) {
    fprintf(stderr, "handler: %s: placed %llu pages, expected %zu\n", sc, (unsigned long long)s.placed, npages);
    return 3;
  }
  report(sc, npages, t_stop - t_start, &s);
  (void)shm;
  return 0;
}
