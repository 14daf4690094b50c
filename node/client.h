/* client.h - the BFT client library: signs requests, sends them to the
 * replicas, and accepts a result once enough replicas agree.
 *
 * Ordered requests (put/del/cas, and gets unless read-only): sent to the
 * primary (learned from replies; view 0 at first) and, after retransmit_ms
 * without an answer, to every replica; accepted on f+1 matching replies (at
 * least one from a correct replica).
 *
 * Read-only gets: sent to every replica and executed without ordering;
 * accepted on 2f+1 matching replies.  When the replies disagree (a write in
 * flight) the get is re-issued as an ordered request.
 *
 * Timestamps: microseconds of wall-clock time, kept strictly increasing, so a
 * new process using the same identity is never taken for a replay.
 *
 * One request is outstanding per client (PBFT's client model); run several
 * clients with different identities for concurrency.  Loop thread only.
 */
#ifndef FB_CLIENT_H
#define FB_CLIENT_H

#include "config.h"
#include "fedbft.pb-c.h"
#include "keys.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct fb_client fb_client;

/* status 0 with the agreed result (and the seq it executed at; for a
 * read-only get, the replicas' executed seq), or FB_EIO when timeout_ms
 * passed without agreement (result NULL). */
typedef void (*fb_client_cb)(void *arg, int status, const Fedbft__Result *result, uint64_t seq);

typedef struct fb_client_config {
    uv_loop_t *loop;
    const cfg_cluster *cluster; /* must outlive the client */
    const fb_identity *id;      /* the client's identity; must be listed in cluster.json */
    uint64_t retransmit_ms;     /* 0 = 1000 */
    uint64_t timeout_ms;        /* give up after; 0 = 30000 */
    /* Until the first reply tells the view, send writes to every replica
     * rather than to view 0's primary (which, after a view change, may be
     * dead: a retransmit period lost).  For one-shot clients (`fedbft client
     * put`); not for loads that start many clients at once, where every
     * replica would forward each first request to the primary and start a
     * view-change timer for it. */
    bool first_to_all;
} fb_client_config;

/* The configuration of a one-shot client (`fedbft client put|get|del|cas|infer`):
 * first_to_all set; retransmit_ms 0 = the default. */
fb_client_config fb_client_one_shot(uv_loop_t *loop, const cfg_cluster *cluster,
                                    const fb_identity *id, uint64_t timeout_ms,
                                    uint64_t retransmit_ms);

int fb_client_new(const fb_client_config *cfg, fb_client **out, char *err, size_t errlen);

/* Start dialling the replicas. */
int fb_client_start(fb_client *c, char *err, size_t errlen);

/* Submit one operation.  FB_EBUSY if a request is outstanding. */
int fb_client_submit(fb_client *c, const Fedbft__Operation *op, bool read_only, fb_client_cb cb,
                     void *arg);

/* Messages from replicas other than REPLY (e.g. MSG_INFER_RESULT), each from
 * an authenticated link: cb(arg, replica, type, payload, len). */
typedef void (*fb_client_msg_cb)(void *arg, uint32_t replica, int type, const uint8_t *payload,
                                 size_t len);
void fb_client_on_message(fb_client *c, fb_client_msg_cb cb, void *arg);
/* The timestamp of the most recently submitted request. */
uint64_t fb_client_last_timestamp(const fb_client *c);

/* The client id cluster.json gives this identity. */
uint32_t fb_client_id(const fb_client *c);

/* Replicas this client has an authenticated link to now. */
uint32_t fb_client_links_up(const fb_client *c);

typedef struct fb_client_stats {
    uint64_t submitted, completed, retransmits, fallbacks, timeouts;
} fb_client_stats;

void fb_client_get_stats(const fb_client *c, fb_client_stats *out);

void fb_client_close(fb_client *c, void (*cb)(void *arg), void *arg);
void fb_client_free(fb_client *c);

#endif
