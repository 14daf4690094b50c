/* fuzz_replay.c - run a fuzz harness without libFuzzer: its seeds, files
 * given on the command line, and seeded mutations of the seeds.
 *
 *   fuzz_X [--iterations N] [--seed S] [--write-seeds DIR] [FILE...]
 *
 * Deterministic for a given --seed; the seed is printed so a failure can be
 * re-run exactly.
 */
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_INPUT 8192

static uint64_t rng_state;

static uint64_t rng(void)
{
    /* xorshift64*: tiny, deterministic, good enough to pick mutations */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}

static size_t mutate(uint8_t *buf, size_t len, size_t cap)
{
    int edits = 1 + (int)(rng() % 4);
    for (int e = 0; e < edits; e++) {
        switch (rng() % 6) {
        case 0: /* flip a bit */
            if (len)
                buf[rng() % len] ^= (uint8_t)(1u << (rng() % 8));
            break;
        case 1: /* random byte */
            if (len)
                buf[rng() % len] = (uint8_t)rng();
            break;
        case 2: /* truncate */
            if (len)
                len = (size_t)(rng() % len);
            break;
        case 3: /* insert random bytes */
            if (len < cap) {
                size_t at = len ? (size_t)(rng() % len) : 0, n = 1 + (size_t)(rng() % 16);
                if (n > cap - len)
                    n = cap - len;
                memmove(buf + at + n, buf + at, len - at);
                for (size_t i = 0; i < n; i++)
                    buf[at + i] = (uint8_t)rng();
                len += n;
            }
            break;
        case 4: /* interesting values: 0x00, 0xff, 0x7f, 0x80 */
            if (len)
                buf[rng() % len] = (uint8_t[]){0x00, 0xff, 0x7f, 0x80}[rng() % 4];
            break;
        default: /* duplicate a slice */
            if (len && len < cap) {
                size_t at = (size_t)(rng() % len), n = 1 + (size_t)(rng() % (len - at));
                if (n > cap - len)
                    n = cap - len;
                memmove(buf + len, buf + at, n);
                len += n;
            }
            break;
        }
    }
    return len;
}

static int run_file(const char *path)
{
    static uint8_t buf[1 << 20];
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return 1;
    }
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    LLVMFuzzerTestOneInput(buf, n);
    return 0;
}

static int write_seeds(const char *dir)
{
    static uint8_t buf[MAX_INPUT];
    for (int i = 0;; i++) {
        size_t n = fuzz_seed(i, buf, sizeof buf);
        if (n == 0)
            return 0;
        char path[4096];
        snprintf(path, sizeof path, "%s/seed-%03d", dir, i);
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(buf, 1, n, f) != n) {
            perror(path);
            return 1;
        }
        fclose(f);
    }
}

int main(int argc, char **argv)
{
    long iterations = 20000;
    uint64_t seed = 0x5eedf00d;
    int files = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--iterations") == 0 && i + 1 < argc)
            iterations = atol(argv[++i]);
        else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc)
            seed = strtoull(argv[++i], NULL, 0);
        else if (strcmp(argv[i], "--write-seeds") == 0 && i + 1 < argc)
            return write_seeds(argv[++i]);
        else if (run_file(argv[i]) != 0)
            return 1;
        else
            files++;
    }
    static uint8_t seeds[64][MAX_INPUT];
    size_t seed_len[64];
    int nseeds = 0;
    while (nseeds < 64 && (seed_len[nseeds] = fuzz_seed(nseeds, seeds[nseeds], MAX_INPUT)) > 0)
        nseeds++;
    for (int i = 0; i < nseeds; i++)
        LLVMFuzzerTestOneInput(seeds[i], seed_len[i]);

    printf("fuzz replay: seed 0x%llx, %d seeds, %d files, %ld mutations\n",
           (unsigned long long)seed, nseeds, files, iterations);
    fflush(stdout);
    rng_state = seed ? seed : 1;
    static uint8_t buf[MAX_INPUT];
    for (long it = 0; it < iterations; it++) {
        size_t len = 0;
        if (nseeds > 0 && rng() % 8 != 0) {
            int s = (int)(rng() % (uint64_t)nseeds);
            memcpy(buf, seeds[s], seed_len[s]);
            len = mutate(buf, seed_len[s], sizeof buf);
        } else { /* pure noise */
            len = (size_t)(rng() % 512);
            for (size_t i = 0; i < len; i++)
                buf[i] = (uint8_t)rng();
        }
        LLVMFuzzerTestOneInput(buf, len);
    }
    printf("fuzz replay: done, no crash\n");
    return 0;
}
