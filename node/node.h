/* node.h - the fedbft daemon: one replica with its transport, store,
 * verification pipeline and state transfer, on one libuv loop.
 *
 * Flow of a message: net delivers an authenticated frame -> cheap checks
 * (known sender, matching link identity, view and watermarks) -> every
 * signature it carries joins this loop turn's verification job -> at the end
 * of the turn the job goes to the batch verifier (worker threads; with
 * node.json "verify": "inline" the loop thread checks it there and then) ->
 * when it completes, the messages that verified are stepped into the replica
 * in arrival order.
 *
 * Flow of actions: persists (and executions) of all steps in one loop turn go
 * into one store transaction (group commit); any send that follows a persist
 * waits until that transaction is durable; executions complete through the
 * store and are stepped back as PBFT_EV_EXECUTED.
 *
 * Thread-safety: loop thread only.
 */
#ifndef FB_NODE_H
#define FB_NODE_H

#include "config.h"
#include "pbft.h"

#include <uv.h>

typedef struct fb_node fb_node;

/* Load the cluster and key, open the store, rebuild the replica from it.
 * Errors name what is wrong (config, key, corrupt store...). */
int fb_node_new(uv_loop_t *loop, const cfg_node *cfg, fb_node **out, char *err, size_t errlen);

/* Bind the listeners, start dialling and timers. */
int fb_node_start(fb_node *n, char *err, size_t errlen);

/* Graceful stop: stop networking, let submitted store batches commit, close
 * every handle; cb runs when the loop has nothing left of the node. */
void fb_node_stop(fb_node *n, void (*cb)(void *arg), void *arg);
void fb_node_free(fb_node *n);

void fb_node_status(const fb_node *n, pbft_status *out);

#endif
