/* rcache.c - LRU + TTL response cache with single-flight waiters.
 *
 * Two chained hash tables keyed by rcache_key: stored entries (one allocation each,
 * header + value bytes, threaded on a doubly linked LRU list) and flights (keys being
 * computed, each with a FIFO of followers).  Followers live in one pool indexed by slot,
 * with a generation per slot, so a waiter handle is (generation, slot) and a stale handle
 * is recognised instead of touching freed memory.
 *
 * Bucket index = seeded XXH3-64 of the key: keys come from client-chosen requests, and
 * the per-cache random seed stops anyone from aiming many keys at one chain.
 */
#include "rcache.h"

#include "fb_error.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack: no allocation per key */
#include <xxhash.h>

#define NIL UINT32_MAX
#define KEY_DOMAIN "fedbft.rcache.key.v1"

/* ---- key ---- */

/* Buffers small fields so the streaming hash sees few, larger updates.  Streaming
 * XXH3 gives the same digest however the input is split. */
typedef struct key_writer {
    XXH3_state_t st;
    uint8_t buf[256];
    size_t n;
} key_writer;

static void kw_flush(key_writer *w)
{
    if (w->n) {
        (void)XXH3_128bits_update(&w->st, w->buf, w->n);
        w->n = 0;
    }
}

static void kw_bytes(key_writer *w, const void *p, size_t len)
{
    if (len > sizeof w->buf - w->n) {
        kw_flush(w);
        if (len >= sizeof w->buf) {
            (void)XXH3_128bits_update(&w->st, p, len);
            return;
        }
    }
    memcpy(w->buf + w->n, p, len);
    w->n += len;
}

/* Fixed-width little-endian, so a key does not depend on the host's byte order. */
static void kw_u32(key_writer *w, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    kw_bytes(w, b, sizeof b);
}

static void kw_u64(key_writer *w, uint64_t v)
{
    kw_u32(w, (uint32_t)v);
    kw_u32(w, (uint32_t)(v >> 32));
}

static void kw_float(key_writer *w, float f)
{
    uint32_t bits;
    if (f == 0.0f)
        f = 0.0f; /* -0.0 samples exactly like 0.0 */
    memcpy(&bits, &f, sizeof bits);
    kw_u32(w, bits);
}

void rcache_key_of(rcache_key *out, const uint8_t model_digest[16], const int32_t *tokens,
                   int n_tokens, float temperature, int top_k, float top_p, uint64_t seed,
                   int max_tokens, const char *const *stop, int n_stop)
{
    static const uint8_t zero_digest[16];
    key_writer w;
    (void)XXH3_128bits_reset(&w.st);
    w.n = 0;
    if (n_tokens < 0 || !tokens)
        n_tokens = 0;
    if (n_stop < 0 || !stop)
        n_stop = 0;
    /* Domain tag first: a different encoding version never shares keys with this one. */
    kw_bytes(&w, KEY_DOMAIN, sizeof KEY_DOMAIN);
    kw_bytes(&w, model_digest ? model_digest : zero_digest, 16);
    kw_u32(&w, (uint32_t)n_tokens);
    for (int i = 0; i < n_tokens; i++)
        kw_u32(&w, (uint32_t)tokens[i]);
    kw_float(&w, temperature);
    kw_u32(&w, (uint32_t)top_k);
    kw_float(&w, top_p);
    kw_u64(&w, seed);
    kw_u32(&w, (uint32_t)max_tokens);
    kw_u32(&w, (uint32_t)n_stop);
    for (int i = 0; i < n_stop; i++) {
        const char *s = stop[i] ? stop[i] : "";
        size_t len = strlen(s);
        kw_u64(&w, (uint64_t)len); /* length prefix: "ab","c" never reads as "a","bc" */
        kw_bytes(&w, s, len);
    }
    kw_flush(&w);
    XXH128_canonical_t canon;
    XXH128_canonicalFromHash(&canon, XXH3_128bits_digest(&w.st));
    memcpy(out->b, canon.digest, RCACHE_KEY_LEN);
}

/* ---- cache state ---- */

typedef struct entry {
    rcache_key key;
    struct entry *hnext;               /* bucket chain */
    struct entry *lru_prev, *lru_next; /* lru_prev toward most recent */
    uint64_t expires_ms;               /* UINT64_MAX: never */
    size_t len;
    uint8_t value[];
} entry;

typedef struct flight {
    rcache_key key;
    struct flight *hnext;
    uint32_t whead, wtail; /* FIFO of waiter slots, NIL when empty */
    uint32_t nwaiters;
} flight;

typedef struct waiter {
    rcache_cb cb;
    void *ud;
    flight *fl;          /* NULL: slot free */
    uint32_t gen;        /* bumped on every release; never 0 */
    uint32_t prev, next; /* in fl's FIFO; next also chains the free list */
} waiter;

struct rcache {
    rcache_config cfg;
    uint64_t seed;

    entry **ebuckets;
    size_t nebuckets; /* power of two */
    entry *lru_head, *lru_tail;
    size_t entries, bytes;

    flight **fbuckets;
    size_t nfbuckets; /* power of two */
    size_t inflight;

    waiter *w; /* grows by doubling up to max_total_waiters; indexed, so realloc is safe */
    uint32_t wcap, wfree, max_total_waiters;
    size_t nwaiters;

    uint64_t hits, misses, coalesced, refused, evictions, expirations, oversize;
};

static size_t pow2_at_least(size_t n)
{
    size_t p = 16;
    while (p < n)
        p <<= 1;
    return p;
}

static size_t slot_of(const rcache *c, const rcache_key *key, size_t nbuckets)
{
    return (size_t)(XXH3_64bits_withSeed(key->b, RCACHE_KEY_LEN, c->seed) & (nbuckets - 1));
}

static bool key_eq(const rcache_key *a, const rcache_key *b)
{
    return memcmp(a->b, b->b, RCACHE_KEY_LEN) == 0;
}

size_t rcache_entry_cost(size_t len)
{
    /* The header plus a pointer's share of the bucket array and a typical malloc
     * header: close enough that max_bytes tracks real memory for small values too. */
    size_t overhead = sizeof(entry) + 2 * sizeof(void *);
    return len > SIZE_MAX - overhead ? SIZE_MAX : len + overhead;
}

void rcache_config_default(rcache_config *cfg)
{
    cfg->max_entries = RCACHE_DEFAULT_MAX_ENTRIES;
    cfg->max_bytes = RCACHE_DEFAULT_MAX_BYTES;
    cfg->ttl_ms = RCACHE_DEFAULT_TTL_MS;
    cfg->max_inflight = RCACHE_DEFAULT_MAX_INFLIGHT;
    cfg->max_waiters_per_key = RCACHE_DEFAULT_MAX_WAITERS;
}

/* A random hash seed (libsodium's CSPRNG; sodium_init is idempotent), so
 * clients cannot aim their keys at one chain. */
static uint64_t random_seed(void)
{
    uint64_t s = 0;
    if (sodium_init() >= 0)
        randombytes_buf(&s, sizeof s);
    return s;
}

int rcache_new(const rcache_config *cfg, rcache **out)
{
    if (!cfg || !out)
        return FB_EINVAL;
    if (cfg->max_entries == 0 || cfg->max_entries > RCACHE_MAX_ENTRIES_LIMIT ||
        cfg->max_bytes == 0 || cfg->max_inflight == 0 ||
        cfg->max_inflight > RCACHE_MAX_INFLIGHT_LIMIT || cfg->max_waiters_per_key == 0 ||
        cfg->max_waiters_per_key > RCACHE_MAX_WAITERS_LIMIT ||
        cfg->max_inflight * cfg->max_waiters_per_key > RCACHE_MAX_TOTAL_WAITERS_LIMIT)
        return FB_EINVAL;
    rcache *c = calloc(1, sizeof *c);
    if (!c)
        return FB_ENOMEM;
    c->cfg = *cfg;
    c->seed = random_seed();
    c->nebuckets = pow2_at_least(cfg->max_entries);
    c->nfbuckets = pow2_at_least(cfg->max_inflight);
    c->ebuckets = calloc(c->nebuckets, sizeof *c->ebuckets);
    c->fbuckets = calloc(c->nfbuckets, sizeof *c->fbuckets);
    if (!c->ebuckets || !c->fbuckets) {
        rcache_free(c);
        return FB_ENOMEM;
    }
    c->max_total_waiters = (uint32_t)(cfg->max_inflight * cfg->max_waiters_per_key);
    c->wfree = NIL;
    *out = c;
    return 0;
}

/* ---- entries ---- */

static entry *entry_find(const rcache *c, const rcache_key *key)
{
    for (entry *e = c->ebuckets[slot_of(c, key, c->nebuckets)]; e; e = e->hnext)
        if (key_eq(&e->key, key))
            return e;
    return NULL;
}

static void lru_unlink(rcache *c, entry *e)
{
    if (e->lru_prev)
        e->lru_prev->lru_next = e->lru_next;
    else
        c->lru_head = e->lru_next;
    if (e->lru_next)
        e->lru_next->lru_prev = e->lru_prev;
    else
        c->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void lru_push_head(rcache *c, entry *e)
{
    e->lru_prev = NULL;
    e->lru_next = c->lru_head;
    if (c->lru_head)
        c->lru_head->lru_prev = e;
    c->lru_head = e;
    if (!c->lru_tail)
        c->lru_tail = e;
}

static void entry_remove(rcache *c, entry *e)
{
    entry **pp = &c->ebuckets[slot_of(c, &e->key, c->nebuckets)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(c, e);
    c->entries--;
    c->bytes -= rcache_entry_cost(e->len);
    free(e);
}

static bool expired(const entry *e, uint64_t now_ms)
{
    return now_ms >= e->expires_ms;
}

/* Make room for one more entry costing `cost`, oldest first.  An expired victim is
 * counted as an expiration: the bound did not cost anything live. */
static void make_room(rcache *c, size_t cost, uint64_t now_ms)
{
    while (c->lru_tail &&
           (c->entries >= c->cfg.max_entries || c->bytes > c->cfg.max_bytes - cost)) {
        entry *victim = c->lru_tail;
        if (expired(victim, now_ms))
            c->expirations++;
        else
            c->evictions++;
        entry_remove(c, victim);
    }
}

/* Store a copy of value under key, replacing any entry there.  Returns FB_ETOOBIG when
 * it can never fit (nothing changes), FB_ENOMEM on allocation failure. */
static int entry_store(rcache *c, const rcache_key *key, const uint8_t *value, size_t len,
                       uint64_t now_ms)
{
    size_t cost = rcache_entry_cost(len);
    if (cost > c->cfg.max_bytes)
        return FB_ETOOBIG;
    entry *e = malloc(sizeof *e + len);
    if (!e)
        return FB_ENOMEM;
    if (len)
        memcpy(e->value, value, len); /* before any removal, in case value is cached */
    entry *old = entry_find(c, key);
    if (old)
        entry_remove(c, old);
    make_room(c, cost, now_ms);
    e->key = *key;
    e->len = len;
    e->expires_ms = (c->cfg.ttl_ms == 0 || now_ms > UINT64_MAX - c->cfg.ttl_ms)
                        ? UINT64_MAX
                        : now_ms + c->cfg.ttl_ms;
    size_t b = slot_of(c, key, c->nebuckets);
    e->hnext = c->ebuckets[b];
    c->ebuckets[b] = e;
    lru_push_head(c, e);
    c->entries++;
    c->bytes += cost;
    return 0;
}

void rcache_clear(rcache *c)
{
    while (c->lru_head)
        entry_remove(c, c->lru_head);
}

/* ---- flights and waiters ---- */

static flight *flight_find(const rcache *c, const rcache_key *key)
{
    for (flight *f = c->fbuckets[slot_of(c, key, c->nfbuckets)]; f; f = f->hnext)
        if (key_eq(&f->key, key))
            return f;
    return NULL;
}

/* Take f out of the table: later lookups of its key no longer find it, so a callback
 * that looks the key up again sees the stored value or becomes a new leader. */
static void flight_detach(rcache *c, flight *f)
{
    flight **pp = &c->fbuckets[slot_of(c, &f->key, c->nfbuckets)];
    while (*pp != f)
        pp = &(*pp)->hnext;
    *pp = f->hnext;
    f->hnext = NULL;
    c->inflight--;
}

static int waiter_grow(rcache *c)
{
    if (c->wcap >= c->max_total_waiters)
        return FB_EBUSY;
    uint32_t ncap = c->wcap ? c->wcap * 2 : 16;
    if (ncap > c->max_total_waiters)
        ncap = c->max_total_waiters;
    waiter *nw = realloc(c->w, (size_t)ncap * sizeof *nw);
    if (!nw)
        return FB_ENOMEM;
    c->w = nw;
    for (uint32_t i = ncap; i-- > c->wcap;) {
        nw[i] = (waiter){.gen = 1, .fl = NULL, .prev = NIL, .next = c->wfree};
        c->wfree = i;
    }
    c->wcap = ncap;
    return 0;
}

static rcache_waiter handle_of(const rcache *c, uint32_t slot)
{
    return ((uint64_t)c->w[slot].gen << 32) | slot;
}

/* Unlink slot from its flight's FIFO and return it to the free list; the generation
 * bump makes every outstanding handle to it stale. */
static void waiter_release(rcache *c, uint32_t slot)
{
    waiter *w = &c->w[slot];
    flight *f = w->fl;
    if (w->prev != NIL)
        c->w[w->prev].next = w->next;
    else
        f->whead = w->next;
    if (w->next != NIL)
        c->w[w->next].prev = w->prev;
    else
        f->wtail = w->prev;
    f->nwaiters--;
    c->nwaiters--;
    w->fl = NULL;
    w->cb = NULL;
    w->ud = NULL;
    w->gen = w->gen == UINT32_MAX ? 1 : w->gen + 1;
    w->prev = NIL;
    w->next = c->wfree;
    c->wfree = slot;
}

static int waiter_add(rcache *c, flight *f, rcache_cb cb, void *ud, rcache_waiter *out)
{
    if (f->nwaiters >= c->cfg.max_waiters_per_key)
        return FB_EBUSY;
    if (c->wfree == NIL) {
        int rc = waiter_grow(c);
        if (rc < 0)
            return rc;
    }
    uint32_t slot = c->wfree;
    waiter *w = &c->w[slot];
    c->wfree = w->next;
    w->cb = cb;
    w->ud = ud;
    w->fl = f;
    w->prev = f->wtail;
    w->next = NIL;
    if (f->wtail != NIL)
        c->w[f->wtail].next = slot;
    else
        f->whead = slot;
    f->wtail = slot;
    f->nwaiters++;
    c->nwaiters++;
    *out = handle_of(c, slot);
    return 0;
}

static int flight_start(rcache *c, const rcache_key *key)
{
    if (c->inflight >= c->cfg.max_inflight)
        return FB_EBUSY;
    flight *f = malloc(sizeof *f);
    if (!f)
        return FB_ENOMEM;
    f->key = *key;
    f->whead = f->wtail = NIL;
    f->nwaiters = 0;
    size_t b = slot_of(c, key, c->nfbuckets);
    f->hnext = c->fbuckets[b];
    c->fbuckets[b] = f;
    c->inflight++;
    return 0;
}

/* f is already detached, so the cache is consistent before the first callback.  Each
 * waiter is released before its callback runs: a callback may cancel a later waiter of
 * f (which then is not called), add waiters elsewhere (the pool may move, hence the
 * re-indexing every round) or complete other keys. */
static void flight_deliver(rcache *c, flight *f, const uint8_t *value, size_t len, int err)
{
    while (f->whead != NIL) {
        uint32_t slot = f->whead;
        rcache_cb cb = c->w[slot].cb;
        void *ud = c->w[slot].ud;
        waiter_release(c, slot);
        cb(ud, value, len, err);
    }
    free(f);
}

/* ---- public operations ---- */

int rcache_lookup(rcache *c, const rcache_key *key, uint64_t now_ms, rcache_cb cb, void *ud,
                  rcache_waiter *waiter_out, const uint8_t **value, size_t *len)
{
    if (!c || !key || !cb || !waiter_out || !value || !len)
        return FB_EINVAL;
    *waiter_out = RCACHE_WAITER_NONE;
    entry *e = entry_find(c, key);
    if (e && expired(e, now_ms)) {
        c->expirations++;
        entry_remove(c, e);
        e = NULL;
    }
    if (e) {
        lru_unlink(c, e);
        lru_push_head(c, e);
        c->hits++;
        *value = e->value;
        *len = e->len;
        return RCACHE_HIT;
    }
    c->misses++;
    flight *f = flight_find(c, key);
    int rc;
    if (f) {
        rc = waiter_add(c, f, cb, ud, waiter_out);
        if (rc == 0) {
            c->coalesced++;
            return RCACHE_FOLLOWER;
        }
    } else {
        rc = flight_start(c, key);
        if (rc == 0)
            return RCACHE_LEADER;
    }
    if (rc == FB_EBUSY)
        c->refused++;
    return rc;
}

int rcache_complete(rcache *c, const rcache_key *key, const uint8_t *value, size_t len,
                    uint64_t now_ms)
{
    if (!c || !key || (!value && len > 0))
        return FB_EINVAL;
    flight *f = flight_find(c, key);
    if (f)
        flight_detach(c, f);
    int rc = entry_store(c, key, value, len, now_ms);
    if (rc == FB_ETOOBIG) {
        c->oversize++;
        rc = 0;
    }
    if (f)
        flight_deliver(c, f, value, len, 0);
    return rc;
}

int rcache_abandon(rcache *c, const rcache_key *key, int err)
{
    if (!c || !key)
        return FB_EINVAL;
    flight *f = flight_find(c, key);
    if (!f)
        return FB_ENOENT;
    int rc = 0;
    if (err >= 0)
        err = rc = FB_EINVAL;
    flight_detach(c, f);
    flight_deliver(c, f, NULL, 0, err);
    return rc;
}

int rcache_waiter_cancel(rcache *c, rcache_waiter h)
{
    if (!c)
        return FB_EINVAL;
    uint32_t slot = (uint32_t)h;
    uint32_t gen = (uint32_t)(h >> 32);
    if (gen == 0 || slot >= c->wcap || c->w[slot].gen != gen || !c->w[slot].fl)
        return FB_ENOENT;
    waiter_release(c, slot);
    return 0;
}

void rcache_get_stats(const rcache *c, rcache_stats *out)
{
    *out = (rcache_stats){
        .entries = c->entries,
        .bytes = c->bytes,
        .inflight = c->inflight,
        .waiters = c->nwaiters,
        .hits = c->hits,
        .misses = c->misses,
        .coalesced = c->coalesced,
        .refused = c->refused,
        .evictions = c->evictions,
        .expirations = c->expirations,
        .oversize = c->oversize,
    };
}

void rcache_free(rcache *c)
{
    if (!c)
        return;
    if (c->ebuckets)
        rcache_clear(c);
    for (size_t b = 0; c->fbuckets && b < c->nfbuckets; b++) {
        flight *f = c->fbuckets[b];
        while (f) {
            flight *next = f->hnext;
            free(f);
            f = next;
        }
    }
    free(c->ebuckets);
    free(c->fbuckets);
    free(c->w);
    free(c);
}
