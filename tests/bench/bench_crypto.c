/* bench_crypto.c - what batching and caching buy for signature checks, and
 * what each hash costs, all measured in one run so the ratios compare like
 * with like.  Built with the suite, run by hand:
 *
 *   build/tests/bench/bench_crypto [--sigs N] [--threads T] [--rounds R]
 *
 * Each figure is the best of R rounds (the least disturbed by other load).
 */
#include "batchver.h"
#include "fb_error.h"
#include "sig.h"
#include "sigcache.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#define BATCH 256 /* signatures per submit, like one busy loop turn */

typedef struct {
    uint8_t pk[FB_PK_LEN], digest[FB_DIGEST_LEN], sig[FB_SIG_LEN];
} triple;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static triple *make_triples(size_t n)
{
    enum { NKEYS = 16 };
    fb_identity keys[NKEYS];
    for (int k = 0; k < NKEYS; k++)
        fb_key_generate(&keys[k]);
    triple *t = calloc(n, sizeof *t);
    for (size_t i = 0; i < n; i++) {
        const fb_identity *id = &keys[i % NKEYS];
        uint64_t x = i;
        fb_digest(FB_DOM_REQUEST, &x, sizeof x, t[i].digest);
        fb_sig_sign(id, t[i].digest, t[i].sig);
        memcpy(t[i].pk, id->pk, FB_PK_LEN);
    }
    return t;
}

static volatile size_t sink;

static double time_one_by_one(const triple *t, size_t n)
{
    double t0 = now_s();
    size_t ok = 0;
    for (size_t i = 0; i < n; i++)
        ok += fb_sig_verify(t[i].pk, t[i].digest, t[i].sig) == 0;
    double dt = now_s() - t0;
    if (ok != n) {
        fprintf(stderr, "bench: %zu of %zu signatures failed one-by-one\n", n - ok, n);
        exit(1);
    }
    return dt;
}

static void noop_wake(void *arg)
{
    (void)arg;
}

static void count_ok(void *arg, const uint8_t *ok, size_t n)
{
    size_t *good = arg;
    for (size_t i = 0; i < n; i++)
        *good += ok[i];
}

static double time_batched(fb_batchver *bv, const triple *t, size_t n)
{
    fb_verify_item items[BATCH];
    size_t good = 0;
    double t0 = now_s();
    for (size_t off = 0; off < n; off += BATCH) {
        size_t m = n - off < BATCH ? n - off : BATCH;
        for (size_t i = 0; i < m; i++)
            items[i] = (fb_verify_item){t[off + i].pk, t[off + i].digest, t[off + i].sig};
        while (fb_batchver_submit(bv, items, m, count_ok, &good) == FB_EBUSY)
            fb_batchver_drain(bv);
        fb_batchver_poll(bv);
    }
    fb_batchver_drain(bv);
    double dt = now_s() - t0;
    if (good != n) {
        fprintf(stderr, "bench: %zu of %zu signatures failed in the batch verifier\n", n - good, n);
        exit(1);
    }
    return dt;
}

static double time_cache_hits(fb_sigcache *c, const triple *t, size_t n, size_t lookups)
{
    size_t hits = 0;
    double t0 = now_s();
    for (size_t i = 0; i < lookups; i++) {
        const triple *x = &t[(i * 7919) % n];
        hits += fb_sigcache_lookup(c, x->pk, x->digest, x->sig);
    }
    double dt = now_s() - t0;
    if (hits != lookups) {
        fprintf(stderr, "bench: cache missed %zu of %zu lookups\n", lookups - hits, lookups);
        exit(1);
    }
    return dt;
}

typedef enum { H_XXH3, H_BLAKE2B, H_SHA256 } hash_kind;

static double time_hash(hash_kind k, const uint8_t *buf, size_t len, size_t iters)
{
    uint8_t out[32];
    size_t acc = 0;
    double t0 = now_s();
    for (size_t i = 0; i < iters; i++) {
        switch (k) {
        case H_XXH3: {
            XXH128_hash_t h = XXH3_128bits(buf, len);
            acc += (size_t)h.low64;
            break;
        }
        case H_BLAKE2B:
            crypto_generichash_blake2b(out, 32, buf, len, NULL, 0);
            acc += out[0];
            break;
        case H_SHA256:
            crypto_hash_sha256(out, buf, len);
            acc += out[0];
            break;
        }
    }
    sink = acc;
    return now_s() - t0;
}

static double best(double a, double b)
{
    return a < b ? a : b;
}

static void usage(FILE *out)
{
    fprintf(out, "Usage: bench_crypto [--sigs N] [--threads T] [--rounds R]\n"
                 "  --sigs N     signatures per round (default 8000)\n"
                 "  --threads T  batch verifier threads (default 0 = one per core)\n"
                 "  --rounds R   rounds; each figure is the best round (default 3)\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"sigs", required_argument, NULL, 's'},
                                         {"threads", required_argument, NULL, 't'},
                                         {"rounds", required_argument, NULL, 'r'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    size_t n = 8000;
    unsigned threads = 0;
    int rounds = 3, c;
    while ((c = getopt_long(argc, argv, "s:t:r:h", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            n = strtoul(optarg, NULL, 10);
            break;
        case 't':
            threads = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'r':
            rounds = atoi(optarg);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (n == 0 || rounds < 1) {
        usage(stderr);
        return 2;
    }
    if (fb_crypto_init() != 0)
        return 1;

    triple *t = make_triples(n);
    fb_batchver *bv;
    fb_batchver_config cfg = {.threads = threads, .wake = noop_wake};
    if (fb_batchver_new(&cfg, &bv) != 0)
        return 1;
    fb_batchver_stats bst;
    fb_batchver_get_stats(bv, &bst);
    fb_sigcache *cache;
    if (fb_sigcache_new(n, &cache) != 0)
        return 1;
    for (size_t i = 0; i < n; i++)
        fb_sigcache_insert(cache, t[i].pk, t[i].digest, t[i].sig);

    enum { HASH_LEN = 1024, HASH_ITERS = 200000 };
    uint8_t *buf = malloc(HASH_LEN);
    randombytes_buf(buf, HASH_LEN);
    size_t lookups = n * 50;
    double one = 1e9, batch = 1e9, hit = 1e9, hx = 1e9, hb = 1e9, hs = 1e9;
    for (int r = 0; r < rounds; r++) {
        one = best(one, time_one_by_one(t, n));
        batch = best(batch, time_batched(bv, t, n));
        hit = best(hit, time_cache_hits(cache, t, n, lookups));
        hx = best(hx, time_hash(H_XXH3, buf, HASH_LEN, HASH_ITERS));
        hb = best(hb, time_hash(H_BLAKE2B, buf, HASH_LEN, HASH_ITERS));
        hs = best(hs, time_hash(H_SHA256, buf, HASH_LEN, HASH_ITERS));
    }

    double verify_ns = one / (double)n * 1e9, hit_ns = hit / (double)lookups * 1e9;
    double mb = (double)HASH_LEN * HASH_ITERS / 1e6;
    printf("bench_crypto: %zu signatures, best of %d rounds, batch verifier threads=%u, "
           "batch=%d\n\n",
           n, rounds, bst.threads, BATCH);
    printf("%-44s %14s\n", "measure", "figure");
    printf("%-44s %11.0f /s\n", "Ed25519 verify, one-by-one, 1 thread", (double)n / one);
    printf("%-44s %11.0f /s\n", "Ed25519 verify, batch verifier", (double)n / batch);
    printf("%-44s %13.2fx\n", "  batch / one-by-one", one / batch);
    printf("%-44s %11.1f ns\n", "verify (one-by-one)", verify_ns);
    printf("%-44s %11.1f ns\n", "sigcache hit", hit_ns);
    printf("%-44s %13.0fx\n", "  verify / cache hit", verify_ns / hit_ns);
    printf("%-44s %10.0f MB/s\n", "XXH3-128, 1 KiB inputs", mb / hx);
    printf("%-44s %10.0f MB/s\n", "BLAKE2b-256, 1 KiB inputs", mb / hb);
    printf("%-44s %10.0f MB/s\n", "SHA-256, 1 KiB inputs", mb / hs);
    printf("%-44s %13.2fx\n", "  XXH3-128 / BLAKE2b-256", hb / hx);
    printf("%-44s %13.2fx\n", "  BLAKE2b-256 / SHA-256", hs / hb);
    printf("%-44s %13.2fx\n", "  XXH3-128 / SHA-256", hs / hx);

    free(buf);
    fb_sigcache_free(cache);
    fb_batchver_free(bv);
    free(t);
    return 0;
}
