/*
 * Baseline for bench/merge-vs-c.mts and bench/policies.mts: what a C program does to get
 * duplicate pages merged, with nothing in between it and the kernel. mmap, fill (page p
 * and page p + pages/2 identical, every other pair distinct), MADV_NOHUGEPAGE +
 * MADV_MERGEABLE, then poll /proc/self/ksm_merging_pages until `ratio` of the pages are
 * merged. The timed part starts at madvise(MADV_MERGEABLE): the scanner settings are the
 * caller's. Prints one JSON line:
 *   {"ms": ..., "merged": ..., "pages": ..., "done": ..., "t0": ..., "t1": ...}
 * where t0 and t1 are the wall-clock times (ms since the epoch) of the madvise and of
 * the poll that saw the ratio, for lining the run up with samples taken elsewhere.
 *
 * With "hold", the process keeps its memory after printing, until its stdin closes: a
 * process holding duplicates, for the autotune benchmark.
 *
 * usage: merge <MiB> <ratio> <poll-ms> <timeout-ms> [seed] [hold]
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double clock_ms(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static long merging_pages(void) {
  FILE* f = fopen("/proc/self/ksm_merging_pages", "r");
  long n = -1;
  if (f == NULL) return -1;
  if (fscanf(f, "%ld", &n) != 1) n = -1;
  fclose(f);
  return n;
}

/* The same xorshift stream per page as the JavaScript side (bench/merge-vs-c.mts). */
static void fill_page(uint32_t* w, size_t words, uint32_t seed, uint32_t p) {
  uint32_t x = ((seed + 1) * 0x9e3779b1u) ^ ((p + 1) * 0x85ebca6bu);
  if (x == 0) x = 1;
  for (size_t i = 0; i < words; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    w[i] = x;
  }
}

int main(int argc, char** argv) {
  if (argc < 5 || argc > 7) {
    fprintf(stderr, "usage: %s <MiB> <ratio> <poll-ms> <timeout-ms> [seed] [hold]\n", argv[0]);
    return 2;
  }
  size_t bytes = (size_t)atol(argv[1]) << 20;
  double ratio = atof(argv[2]);
  double poll_ms = atof(argv[3]);
  double timeout_ms = atof(argv[4]);
  uint32_t seed = argc > 5 ? (uint32_t)strtoul(argv[5], NULL, 10) : 1;
  int hold = argc > 6 && strcmp(argv[6], "hold") == 0;
  long page = sysconf(_SC_PAGESIZE);
  size_t pages = bytes / (size_t)page, half = pages / 2;

  uint8_t* mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    perror("mmap");
    return 1;
  }
  if (madvise(mem, bytes, MADV_NOHUGEPAGE) != 0) {
    perror("madvise(NOHUGEPAGE)");
    return 1;
  }
  for (size_t p = 0; p < pages; p++) {
    fill_page((uint32_t*)(mem + p * (size_t)page), (size_t)page / 4, seed, (uint32_t)(p % half));
  }

  long want = (long)(ratio * (double)pages + 0.999999);
  double epoch0 = clock_ms(CLOCK_REALTIME);
  double t0 = clock_ms(CLOCK_MONOTONIC);
  if (madvise(mem, bytes, MADV_MERGEABLE) != 0) {
    perror("madvise(MERGEABLE)");
    return 1;
  }
  long ns = (long)(poll_ms * 1e6);
  struct timespec pause = {ns / 1000000000L, ns % 1000000000L};
  long merged = merging_pages();
  while (merged < want && clock_ms(CLOCK_MONOTONIC) - t0 < timeout_ms) {
    nanosleep(&pause, NULL);
    merged = merging_pages();
  }
  double ms = clock_ms(CLOCK_MONOTONIC) - t0;
  printf("{\"ms\": %.2f, \"merged\": %ld, \"pages\": %zu, \"done\": %s, \"t0\": %.3f, \"t1\": %.3f}\n", ms, merged,
         pages, merged >= want ? "true" : "false", epoch0, epoch0 + ms);
  fflush(stdout);
  if (hold) {
    char buf[256];
    while (fread(buf, 1, sizeof buf, stdin) > 0) {
    }
  }
  munmap(mem, bytes);
  return 0;
}
