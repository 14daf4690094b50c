/* rcache.h - response cache for reproducible inference results, with single-flight.
 *
 * A completion request with a fixed seed is a pure function of (model, prompt tokens,
 * sampling parameters), so identical requests can share one computation and its result.
 * rcache_key_of() hashes those inputs into a 16-byte key; the cache maps keys to opaque
 * byte strings (the serialized response) under an LRU order, a TTL and two bounds
 * (max_entries, max_bytes).
 *
 * Single-flight: the first lookup that misses becomes the LEADER and computes; lookups
 * of the same key while it does so become FOLLOWERS, queued with a callback that
 * rcache_complete() / rcache_abandon() fires.  Fifty identical requests arriving
 * together cost one inference.
 *
 * Key collisions: the key is XXH3-128 (not a cryptographic hash) and the entry does not
 * keep the request, so two different requests with the same key would share a response.
 * By chance that is ~2^-64 after 2^32 distinct requests; the inputs are public
 * parameters, not secrets, but deployments that fear crafted XXH3 collisions should
 * not enable the cache for untrusted clients.
 *
 * Thread-safety: a cache belongs to one thread (the node's loop thread); callbacks run
 * on that thread, inside rcache_complete() / rcache_abandon().
 */
#ifndef FB_RCACHE_H
#define FB_RCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RCACHE_KEY_LEN 16

#define RCACHE_DEFAULT_MAX_ENTRIES 4096
#define RCACHE_DEFAULT_MAX_BYTES (64u * 1024 * 1024)
#define RCACHE_DEFAULT_TTL_MS (10u * 60 * 1000)
#define RCACHE_DEFAULT_MAX_INFLIGHT 256
#define RCACHE_DEFAULT_MAX_WAITERS 256

/* Hard ceilings on the configuration (rcache_new refuses more with FB_EINVAL). */
#define RCACHE_MAX_ENTRIES_LIMIT (1u << 22)
#define RCACHE_MAX_INFLIGHT_LIMIT (1u << 16)
#define RCACHE_MAX_WAITERS_LIMIT (1u << 16)
#define RCACHE_MAX_TOTAL_WAITERS_LIMIT (1u << 24) /* max_inflight * max_waiters_per_key */

typedef struct rcache_key {
    uint8_t b[RCACHE_KEY_LEN];
} rcache_key;

typedef struct rcache rcache;

/* Identifies one queued follower for rcache_waiter_cancel().  Never 0 for a real
 * waiter; a handle whose waiter was already called or cancelled is merely stale. */
typedef uint64_t rcache_waiter;
#define RCACHE_WAITER_NONE ((rcache_waiter)0)

/* Result for a follower.  err == 0: value/len is the response, valid only during the
 * call (value may be NULL when len == 0).  err < 0: the leader abandoned with that
 * FB_E* code; value is NULL.  The callback may call any rcache function on the same
 * cache except rcache_free. */
typedef void (*rcache_cb)(void *ud, const uint8_t *value, size_t len, int err);

typedef struct rcache_config {
    size_t max_entries;         /* stored responses, >= 1 */
    size_t max_bytes;           /* sum of rcache_entry_cost() over entries, >= 1 */
    uint64_t ttl_ms;            /* lifetime from store (hits do not extend it); 0 = none */
    size_t max_inflight;        /* keys being computed at once, >= 1 */
    size_t max_waiters_per_key; /* followers queued on one key, >= 1 */
} rcache_config;

typedef struct rcache_stats {
    size_t entries;       /* stored responses now */
    size_t bytes;         /* their rcache_entry_cost() sum */
    size_t inflight;      /* keys with a leader computing now */
    size_t waiters;       /* followers queued now */
    uint64_t hits;        /* lookups answered from the cache */
    uint64_t misses;      /* lookups that were not hits (leaders, followers, refusals) */
    uint64_t coalesced;   /* misses that joined an in-flight computation */
    uint64_t refused;     /* lookups refused with FB_EBUSY (in-flight or waiter bound) */
    uint64_t evictions;   /* live entries dropped for max_entries or max_bytes */
    uint64_t expirations; /* entries dropped because their TTL had passed */
    uint64_t oversize;    /* completed values too large to store (still delivered) */
} rcache_stats;

/* Positive results of rcache_lookup (errors are negative FB_E* codes). */
enum {
    RCACHE_HIT = 1,      /* *value / *len hold the stored response */
    RCACHE_LEADER = 2,   /* compute it, then rcache_complete or rcache_abandon */
    RCACHE_FOLLOWER = 3, /* queued: cb will be called once, *waiter identifies it */
};

/* Key of a completion request.  Every argument is part of it, each field with its
 * count or length, so no two different requests encode alike (no field's bytes can be
 * read as part of its neighbour's: stop "ab","c" vs "a","bc" differ).
 * Stop strings are NUL-terminated and order-sensitive; a NULL stop string counts as "",
 * a negative count as 0.  -0.0 is hashed as 0.0. */
void rcache_key_of(rcache_key *out, const uint8_t model_digest[16], const int32_t *tokens,
                   int n_tokens, float temperature, int top_k, float top_p, uint64_t seed,
                   int max_tokens, const char *const *stop, int n_stop);

/* Fill cfg with the RCACHE_DEFAULT_* values. */
void rcache_config_default(rcache_config *cfg);

/* Bytes an entry holding a value of len bytes counts against max_bytes: the value plus
 * a fixed overhead for the entry's bookkeeping. */
size_t rcache_entry_cost(size_t len);

/* FB_EINVAL (a bound is 0 or above its *_LIMIT) or FB_ENOMEM. */
int rcache_new(const rcache_config *cfg, rcache **out);

/* Frees everything, including queued followers, without calling their callbacks: a
 * caller that must answer them abandons in-flight keys first.  Not from a callback. */
void rcache_free(rcache *c);

/* Look key up at time now_ms (any monotonic millisecond clock, the same for every call).
 * RCACHE_HIT: *value / *len valid until the next call on c other than get_stats.
 * RCACHE_LEADER: nobody computes key; the caller now must, and must end with exactly one
 *   of rcache_complete / rcache_abandon (until then followers wait on it).
 * RCACHE_FOLLOWER: cb(ud, ...) is queued and *waiter identifies it.
 * FB_EBUSY: max_inflight keys are already computing (for a would-be leader) or key has
 *   max_waiters_per_key followers; nothing was queued.  FB_EINVAL: NULL argument.
 * An expired entry counts as absent and is removed. */
int rcache_lookup(rcache *c, const rcache_key *key, uint64_t now_ms, rcache_cb cb, void *ud,
                  rcache_waiter *waiter, const uint8_t **value, size_t *len);

/* The leader's result: stores a copy of value (unless rcache_entry_cost(len) exceeds
 * max_bytes; evicting least recently used entries to make room), ends the flight, then
 * calls every follower's cb(ud, value, len, 0) once, from the caller's buffer.  Works
 * without a flight too (then it only stores).  value must be the caller's own buffer,
 * not a pointer from an earlier RCACHE_HIT (storing may evict that).
 * 0, FB_EINVAL (value NULL with len > 0; nothing happens) or FB_ENOMEM (not stored,
 * followers were still served). */
int rcache_complete(rcache *c, const rcache_key *key, const uint8_t *value, size_t len,
                    uint64_t now_ms);

/* The leader gives up: ends the flight and calls every follower's cb(ud, NULL, 0, err).
 * err should be a negative FB_E* code; a non-negative one is delivered and returned as
 * FB_EINVAL so that no follower sees success without a value.  FB_ENOENT: no flight. */
int rcache_abandon(rcache *c, const rcache_key *key, int err);

/* Remove a queued follower (its client went away); its cb will not be called.
 * 0, or FB_ENOENT if the handle is stale (already called or cancelled). */
int rcache_waiter_cancel(rcache *c, rcache_waiter waiter);

/* Drop every stored entry (e.g. after a model reload).  In-flight keys and their
 * followers are kept; counters are not reset. */
void rcache_clear(rcache *c);

void rcache_get_stats(const rcache *c, rcache_stats *out);

#endif
