/* sigcache.c - fixed-size LRU hash table of verified signature triples.
 *
 * Entries live in one array allocated at creation; buckets chain entries by
 * index and a doubly linked list (also by index) keeps LRU order.  Nothing is
 * allocated after fb_sigcache_new.
 */
#include "sigcache.h"

#include "fb_error.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define NIL UINT32_MAX
#define TRIPLE_LEN (FB_PK_LEN + FB_DIGEST_LEN + FB_SIG_LEN)

typedef struct entry {
    uint8_t triple[TRIPLE_LEN]; /* pk || digest || sig: a hit compares all of it */
    XXH128_hash_t key;
    uint32_t next_in_bucket;
    uint32_t lru_prev, lru_next; /* lru_prev toward most recent */
} entry;

struct fb_sigcache {
    entry *entries;
    uint32_t *buckets;
    size_t capacity, nbuckets, size;
    uint32_t lru_head, lru_tail; /* head = most recently used */
    uint64_t seed;               /* secret, so nobody can aim collisions at one bucket */
    uint64_t hits, misses, inserts, evictions;
};

int fb_sigcache_new(size_t capacity, fb_sigcache **out)
{
    if (capacity == 0 || capacity >= NIL / 2)
        return FB_EINVAL;
    fb_sigcache *c = calloc(1, sizeof *c);
    if (!c)
        return FB_ENOMEM;
    c->capacity = capacity;
    c->nbuckets = 1;
    while (c->nbuckets < capacity * 2)
        c->nbuckets <<= 1;
    c->entries = calloc(capacity, sizeof *c->entries);
    c->buckets = malloc(c->nbuckets * sizeof *c->buckets);
    if (!c->entries || !c->buckets) {
        fb_sigcache_free(c);
        return FB_ENOMEM;
    }
    memset(c->buckets, 0xff, c->nbuckets * sizeof *c->buckets);
    c->lru_head = c->lru_tail = NIL;
    randombytes_buf(&c->seed, sizeof c->seed);
    *out = c;
    return 0;
}

void fb_sigcache_free(fb_sigcache *c)
{
    if (!c)
        return;
    free(c->entries);
    free(c->buckets);
    free(c);
}

static void make_triple(uint8_t t[TRIPLE_LEN], const uint8_t *pk, const uint8_t *digest,
                        const uint8_t *sig)
{
    memcpy(t, pk, FB_PK_LEN);
    memcpy(t + FB_PK_LEN, digest, FB_DIGEST_LEN);
    memcpy(t + FB_PK_LEN + FB_DIGEST_LEN, sig, FB_SIG_LEN);
}

static size_t bucket_of(const fb_sigcache *c, XXH128_hash_t key)
{
    return (size_t)(key.low64 & (c->nbuckets - 1));
}

static void lru_unlink(fb_sigcache *c, uint32_t i)
{
    entry *e = &c->entries[i];
    if (e->lru_prev != NIL)
        c->entries[e->lru_prev].lru_next = e->lru_next;
    else
        c->lru_head = e->lru_next;
    if (e->lru_next != NIL)
        c->entries[e->lru_next].lru_prev = e->lru_prev;
    else
        c->lru_tail = e->lru_prev;
}

static void lru_push_front(fb_sigcache *c, uint32_t i)
{
    entry *e = &c->entries[i];
    e->lru_prev = NIL;
    e->lru_next = c->lru_head;
    if (c->lru_head != NIL)
        c->entries[c->lru_head].lru_prev = i;
    c->lru_head = i;
    if (c->lru_tail == NIL)
        c->lru_tail = i;
}

/* Index of the entry holding triple t (with hash key), or NIL. */
static uint32_t find(const fb_sigcache *c, XXH128_hash_t key, const uint8_t t[TRIPLE_LEN])
{
    for (uint32_t i = c->buckets[bucket_of(c, key)]; i != NIL; i = c->entries[i].next_in_bucket) {
        const entry *e = &c->entries[i];
        if (XXH128_isEqual(e->key, key) && memcmp(e->triple, t, TRIPLE_LEN) == 0)
            return i;
    }
    return NIL;
}

static void bucket_remove(fb_sigcache *c, uint32_t i)
{
    uint32_t *link = &c->buckets[bucket_of(c, c->entries[i].key)];
    while (*link != i)
        link = &c->entries[*link].next_in_bucket;
    *link = c->entries[i].next_in_bucket;
}

bool fb_sigcache_lookup(fb_sigcache *c, const uint8_t pk[FB_PK_LEN],
                        const uint8_t digest[FB_DIGEST_LEN], const uint8_t sig[FB_SIG_LEN])
{
    uint8_t t[TRIPLE_LEN];
    make_triple(t, pk, digest, sig);
    XXH128_hash_t key = XXH3_128bits_withSeed(t, TRIPLE_LEN, c->seed);
    uint32_t i = find(c, key, t);
    if (i == NIL) {
        c->misses++;
        return false;
    }
    c->hits++;
    if (c->lru_head != i) {
        lru_unlink(c, i);
        lru_push_front(c, i);
    }
    return true;
}

void fb_sigcache_insert(fb_sigcache *c, const uint8_t pk[FB_PK_LEN],
                        const uint8_t digest[FB_DIGEST_LEN], const uint8_t sig[FB_SIG_LEN])
{
    uint8_t t[TRIPLE_LEN];
    make_triple(t, pk, digest, sig);
    XXH128_hash_t key = XXH3_128bits_withSeed(t, TRIPLE_LEN, c->seed);
    uint32_t i = find(c, key, t);
    if (i != NIL) { /* already known: just refresh */
        lru_unlink(c, i);
        lru_push_front(c, i);
        return;
    }
    if (c->size < c->capacity) {
        i = (uint32_t)c->size++;
    } else { /* full: recycle the least recently used entry */
        i = c->lru_tail;
        lru_unlink(c, i);
        bucket_remove(c, i);
        c->evictions++;
    }
    entry *e = &c->entries[i];
    memcpy(e->triple, t, TRIPLE_LEN);
    e->key = key;
    size_t b = bucket_of(c, key);
    e->next_in_bucket = c->buckets[b];
    c->buckets[b] = i;
    lru_push_front(c, i);
    c->inserts++;
}

void fb_sigcache_get_stats(const fb_sigcache *c, fb_sigcache_stats *out)
{
    out->hits = c->hits;
    out->misses = c->misses;
    out->inserts = c->inserts;
    out->evictions = c->evictions;
    out->size = c->size;
    out->capacity = c->capacity;
}
