/* ratelimit.c - fixed table of token buckets, hashed by client string, LRU-evicted.
 *
 * All slots are allocated by ratelimit_new; buckets chain slots by index and a doubly
 * linked list (also by index) keeps LRU order, as in crypto/sigcache.c.  Nothing is
 * allocated per request.  The bucket index is a seeded XXH3-64 of the client string:
 * clients pick their addresses and keys, and a per-limiter random seed keeps them from
 * aiming many names at one chain.
 */
#include "ratelimit.h"

#include "fb_error.h"

#include <math.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#define NIL UINT32_MAX

/* Slack for floating-point refill arithmetic: a client that waits exactly the advertised
 * retry_after must find a whole token, not 0.9999999999 of one. */
#define TOKEN_EPS 1e-9

typedef struct slot {
    uint64_t hash;
    uint64_t last_ms; /* time of the last refill */
    double tokens;
    uint32_t next_in_bucket;
    uint32_t lru_prev, lru_next; /* lru_prev toward most recent */
    uint8_t name_len;
    char name[RATELIMIT_CLIENT_MAX];
} slot;

struct ratelimit {
    double rate_per_ms, burst;
    bool unlimited;
    slot *slots;
    uint32_t *buckets;
    size_t capacity, nbuckets, size;
    uint32_t lru_head, lru_tail; /* head = most recently used */
    uint64_t seed;
    uint64_t allowed, limited, evictions, evictions_early;
};

/* A random hash seed (libsodium's CSPRNG; sodium_init is idempotent), so
 * clients cannot aim their keys at one chain. */
static uint64_t random_seed(void)
{
    uint64_t s = 0;
    if (sodium_init() >= 0)
        randombytes_buf(&s, sizeof s);
    return s;
}

int ratelimit_new(double rate_per_s, double burst, size_t max_clients, ratelimit **out)
{
    if (!out || isnan(rate_per_s) || isinf(rate_per_s))
        return FB_EINVAL;
    bool unlimited = rate_per_s <= 0;
    if (!unlimited && (!isfinite(burst) || burst < 1 || max_clients == 0 ||
                       max_clients > RATELIMIT_MAX_CLIENTS_LIMIT))
        return FB_EINVAL;
    ratelimit *rl = calloc(1, sizeof *rl);
    if (!rl)
        return FB_ENOMEM;
    rl->unlimited = unlimited;
    rl->lru_head = rl->lru_tail = NIL;
    if (unlimited) {
        *out = rl;
        return 0;
    }
    rl->rate_per_ms = rate_per_s / 1000.0;
    rl->burst = burst;
    rl->capacity = max_clients;
    rl->nbuckets = 16;
    while (rl->nbuckets < max_clients)
        rl->nbuckets <<= 1;
    rl->slots = calloc(max_clients, sizeof *rl->slots);
    rl->buckets = malloc(rl->nbuckets * sizeof *rl->buckets);
    if (!rl->slots || !rl->buckets) {
        ratelimit_free(rl);
        return FB_ENOMEM;
    }
    memset(rl->buckets, 0xff, rl->nbuckets * sizeof *rl->buckets);
    rl->seed = random_seed();
    *out = rl;
    return 0;
}

void ratelimit_free(ratelimit *rl)
{
    if (!rl)
        return;
    free(rl->slots);
    free(rl->buckets);
    free(rl);
}

static void lru_unlink(ratelimit *rl, uint32_t i)
{
    slot *s = &rl->slots[i];
    if (s->lru_prev != NIL)
        rl->slots[s->lru_prev].lru_next = s->lru_next;
    else
        rl->lru_head = s->lru_next;
    if (s->lru_next != NIL)
        rl->slots[s->lru_next].lru_prev = s->lru_prev;
    else
        rl->lru_tail = s->lru_prev;
}

static void lru_push_front(ratelimit *rl, uint32_t i)
{
    slot *s = &rl->slots[i];
    s->lru_prev = NIL;
    s->lru_next = rl->lru_head;
    if (rl->lru_head != NIL)
        rl->slots[rl->lru_head].lru_prev = i;
    rl->lru_head = i;
    if (rl->lru_tail == NIL)
        rl->lru_tail = i;
}

static uint32_t find(const ratelimit *rl, uint64_t hash, const char *name, size_t len)
{
    for (uint32_t i = rl->buckets[hash & (rl->nbuckets - 1)]; i != NIL;
         i = rl->slots[i].next_in_bucket) {
        const slot *s = &rl->slots[i];
        if (s->hash == hash && s->name_len == len && memcmp(s->name, name, len) == 0)
            return i;
    }
    return NIL;
}

static void bucket_remove(ratelimit *rl, uint32_t i)
{
    uint32_t *link = &rl->buckets[rl->slots[i].hash & (rl->nbuckets - 1)];
    while (*link != i)
        link = &rl->slots[*link].next_in_bucket;
    *link = rl->slots[i].next_in_bucket;
}

/* Bring s's tokens up to now_ms.  A clock reading older than last_ms adds nothing and
 * does not move last_ms back (which would later credit the same interval twice). */
static void refill(const ratelimit *rl, slot *s, uint64_t now_ms)
{
    if (now_ms <= s->last_ms)
        return;
    double t = s->tokens + (double)(now_ms - s->last_ms) * rl->rate_per_ms;
    s->tokens = t < rl->burst ? t : rl->burst;
    s->last_ms = now_ms;
}

/* A slot for a client not in the table: a free one, else the least recently used. */
static uint32_t claim_slot(ratelimit *rl, uint64_t now_ms)
{
    if (rl->size < rl->capacity)
        return (uint32_t)rl->size++;
    uint32_t i = rl->lru_tail;
    slot *s = &rl->slots[i];
    refill(rl, s, now_ms);
    rl->evictions++;
    if (s->tokens < rl->burst - TOKEN_EPS)
        rl->evictions_early++;
    lru_unlink(rl, i);
    bucket_remove(rl, i);
    return i;
}

/* Milliseconds until s holds a whole token, rounded up (at least 1). */
static uint64_t wait_ms(const ratelimit *rl, const slot *s)
{
    double ms = (1.0 - s->tokens) / rl->rate_per_ms - TOKEN_EPS;
    if (ms > 1e15) /* a rate so low it means "not in this lifetime" */
        ms = 1e15;
    uint64_t w = (uint64_t)ms;
    if ((double)w < ms)
        w++;
    return w ? w : 1;
}

bool ratelimit_take(ratelimit *rl, const char *client, uint64_t now_ms, double *retry_after_s)
{
    if (rl->unlimited) {
        rl->allowed++;
        return true;
    }
    if (!client)
        client = "";
    size_t len = strnlen(client, RATELIMIT_CLIENT_MAX);
    uint64_t hash = XXH3_64bits_withSeed(client, len, rl->seed);
    uint32_t i = find(rl, hash, client, len);
    if (i == NIL) {
        i = claim_slot(rl, now_ms);
        slot *s = &rl->slots[i];
        s->hash = hash;
        s->name_len = (uint8_t)len;
        memcpy(s->name, client, len);
        s->tokens = rl->burst; /* a new client starts full */
        s->last_ms = now_ms;
        size_t b = hash & (rl->nbuckets - 1);
        s->next_in_bucket = rl->buckets[b];
        rl->buckets[b] = i;
    } else {
        lru_unlink(rl, i);
    }
    lru_push_front(rl, i);
    slot *s = &rl->slots[i];
    refill(rl, s, now_ms);
    if (s->tokens >= 1.0 - TOKEN_EPS) {
        s->tokens = s->tokens > 1.0 ? s->tokens - 1.0 : 0.0;
        rl->allowed++;
        return true;
    }
    rl->limited++;
    if (retry_after_s)
        *retry_after_s = (double)wait_ms(rl, s) / 1000.0;
    return false;
}

void ratelimit_get_stats(const ratelimit *rl, ratelimit_stats *out)
{
    *out = (ratelimit_stats){
        .allowed = rl->allowed,
        .limited = rl->limited,
        .evictions = rl->evictions,
        .evictions_early = rl->evictions_early,
        .clients = rl->size,
        .max_clients = rl->capacity,
    };
}
