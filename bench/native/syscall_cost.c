// The C side of bench/ffi_call.ts: the same three calls made directly (glibc wrappers), so the
// runtimes' per-call cost through FFI can be read against a plain syscall on the same machine.
//
//   cc -O2 -o bench/native/build/syscall_cost bench/native/syscall_cost.c
//   bench/native/build/syscall_cost [calls]     (default 5,000,000 ioctl calls; read and poll: calls / 5)
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define UFFDIO_COPY_NR 0xc028aa03UL

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv) {
  long calls = argc > 1 ? strtol(argv[1], NULL, 10) : 5000000;
  static char buf[40], msg[32];
  int efd = eventfd(0, EFD_NONBLOCK);
  struct pollfd fds = {.fd = efd, .events = POLLIN};
  volatile long r = 0;
  for (int i = 0; i < 100000; i++) r |= ioctl(-1, UFFDIO_COPY_NR, buf); // warm-up, as ffi_call.ts
  ioctl(-1, UFFDIO_COPY_NR, buf);
  int err = errno;
  double t0 = now_ns();
  for (long i = 0; i < calls; i++) r |= ioctl(-1, UFFDIO_COPY_NR, buf);
  double ioctl_ns = (now_ns() - t0) / calls;
  long n = (calls + 4) / 5;
  t0 = now_ns();
  for (long i = 0; i < n; i++) r |= read(-1, msg, 32);
  double read_ns = (now_ns() - t0) / n;
  t0 = now_ns();
  for (long i = 0; i < n; i++) r |= poll(&fds, 1, 0);
  double poll_ns = (now_ns() - t0) / n;
  close(efd);
  printf("c              ioctl(-1) %.0f ns, errno %d; read(-1) %.0f ns; poll(eventfd, 0) %.0f ns [%ld ioctl calls]\n",
         ioctl_ns, err, read_ns, poll_ns, calls);
  return 0;
}
