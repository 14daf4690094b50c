/* bench_util.h - what the consensus microbenchmarks (bench_frame, bench_pbft,
 * bench_store) share: a monotonic clock, per-round samples reported as best
 * and median, deterministic keys and the signed client REQUEST they all feed
 * in (a PUT of an 8-byte key and a value of the requested size). */
#ifndef BENCH_UTIL_H
#define BENCH_UTIL_H

#include "fb_error.h"
#include "pbft_msg.h"
#include "sig.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BENCH_MAX_ROUNDS 64
#define BENCH_CLIENT0 1000 /* client ids start here, as in the tests */

static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* One figure measured once per round. */
typedef struct bench_stat {
    double v[BENCH_MAX_ROUNDS];
    int n;
} bench_stat;

static inline void bench_add(bench_stat *s, double x)
{
    if (s->n < BENCH_MAX_ROUNDS)
        s->v[s->n++] = x;
}

static inline double bench_min(const bench_stat *s)
{
    double m = s->n ? s->v[0] : 0;
    for (int i = 1; i < s->n; i++)
        m = s->v[i] < m ? s->v[i] : m;
    return m;
}

static inline double bench_max(const bench_stat *s)
{
    double m = s->n ? s->v[0] : 0;
    for (int i = 1; i < s->n; i++)
        m = s->v[i] > m ? s->v[i] : m;
    return m;
}

static inline double bench_median(const bench_stat *s)
{
    double v[BENCH_MAX_ROUNDS];
    int n = s->n;
    memcpy(v, s->v, (size_t)n * sizeof v[0]);
    for (int i = 1; i < n; i++) /* insertion sort: n is tiny */
        for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
            double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    if (n == 0)
        return 0;
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static inline void bench_die(const char *what, int rc)
{
    fprintf(stderr, "bench: %s failed: %s\n", what, fb_strerror(rc));
    exit(1);
}

/* The same keys every run: identity i of a family (replicas, clients). */
static inline void bench_key(uint8_t family, uint32_t i, fb_identity *out)
{
    uint8_t seed[FB_SEED_LEN] = {family, (uint8_t)i, (uint8_t)(i >> 8), 0x5a};
    if (fb_key_from_seed(seed, out) != 0)
        bench_die("fb_key_from_seed", FB_EINVAL);
}

static inline void bench_sign_ed25519(void *arg, const uint8_t digest[FB_DIGEST_LEN],
                                      uint8_t sig[FB_SIG_LEN])
{
    fb_sig_sign(arg, digest, sig);
}

/* A signed PUT from client BENCH_CLIENT0 + client at timestamp ts: key
 * "k" + 7 digits of key, value of value_len bytes derived from (client, ts). */
static inline pbft_msg *bench_request(const fb_identity *id, uint32_t client, uint64_t ts,
                                      uint32_t key, size_t value_len)
{
    char k[16];
    snprintf(k, sizeof k, "k%07u", key % 10000000u);
    uint8_t value[4096];
    if (value_len > sizeof value)
        value_len = sizeof value;
    for (size_t i = 0; i < value_len; i++)
        value[i] = (uint8_t)(client * 31 + ts * 7 + i);
    Fedbft__Operation op = FEDBFT__OPERATION__INIT;
    op.kind = FEDBFT__OPERATION__KIND__OP_PUT;
    op.key = (ProtobufCBinaryData){8, (uint8_t *)k};
    op.value = (ProtobufCBinaryData){value_len, value};
    Fedbft__Request rq = FEDBFT__REQUEST__INIT;
    rq.client = BENCH_CLIENT0 + client;
    rq.timestamp = ts;
    rq.op = &op;
    pbft_signer s = {bench_sign_ed25519, (void *)id};
    pbft_msg *m = NULL;
    int rc = pbft_msg_make(FEDBFT__MSG_TYPE__MSG_REQUEST, rq.client, &rq.base, &s, NULL, &m);
    if (rc)
        bench_die("pbft_msg_make(REQUEST)", rc);
    return m;
}

#endif
