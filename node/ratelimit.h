/* ratelimit.h - token bucket per client for the inference API.
 *
 * Each client identity (API key or peer address, as a string) has a bucket of up to
 * `burst` tokens refilled at `rate_per_s`; a request takes one token or is refused with
 * the time until one is available.  A new client starts with a full bucket.
 *
 * The table of clients is bounded (max_clients, allocated at creation).  When it is full
 * a new client evicts the least recently seen one.  A bucket idle for burst / rate
 * seconds has refilled and is the same as a new client, so evicting it changes nothing.
 * Evicting a bucket that had not refilled yet forgets its debt: that client gets a full
 * burst back early.  That only happens when more than max_clients clients are active
 * within one refill period; such evictions are counted apart (evictions_early) so the
 * operator can see when max_clients is too small.
 *
 * Client strings are compared on their first RATELIMIT_CLIENT_MAX bytes; longer ones
 * sharing that prefix share a bucket (stricter, never looser).
 *
 * Thread-safety: a limiter belongs to one thread (the node's loop thread).
 */
#ifndef FB_RATELIMIT_H
#define FB_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RATELIMIT_CLIENT_MAX 127
#define RATELIMIT_DEFAULT_MAX_CLIENTS 10000
#define RATELIMIT_MAX_CLIENTS_LIMIT (1u << 22)

typedef struct ratelimit ratelimit;

typedef struct ratelimit_stats {
    uint64_t allowed;         /* takes that got a token (all of them when unlimited) */
    uint64_t limited;         /* takes refused */
    uint64_t evictions;       /* clients dropped from a full table */
    uint64_t evictions_early; /* ... of which had not refilled to a full bucket yet */
    size_t clients;           /* clients in the table now */
    size_t max_clients;
} ratelimit_stats;

/* rate_per_s <= 0: unlimited (every take succeeds, no table is kept; burst and
 * max_clients are ignored).  Otherwise burst >= 1 (a request needs one whole token) and
 * 1 <= max_clients <= RATELIMIT_MAX_CLIENTS_LIMIT.  FB_EINVAL (also for NaN or infinite
 * rate/burst) or FB_ENOMEM. */
int ratelimit_new(double rate_per_s, double burst, size_t max_clients, ratelimit **out);
void ratelimit_free(ratelimit *rl);

/* Take one token for client at now_ms (a monotonic millisecond clock; a value earlier
 * than one already seen is treated as no time passing).  true: allowed.  false: refused,
 * and *retry_after_s (if not NULL) is the wait until a token is available, rounded up to
 * whole milliseconds, so a retry after exactly that long succeeds unless the client took
 * in between.  A NULL client is the client "". */
bool ratelimit_take(ratelimit *rl, const char *client, uint64_t now_ms, double *retry_after_s);

void ratelimit_get_stats(const ratelimit *rl, ratelimit_stats *out);

#endif
