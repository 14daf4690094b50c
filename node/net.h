/* net.h - fedbft links over libuv TCP, each through a secure channel
 * (crypto/channel.h).  Loop thread only.
 *
 * Replica mode (a node): listens on its replica port for other replicas and
 * on its client port for clients, and dials every other replica.  Each
 * replica sends on the link it dialled and receives on the links others
 * dialled to it (so there is no simultaneous-open race).  The replica port
 * accepts only replica keys from cluster.json; the client port only client
 * keys.  A dialled link must reach exactly the key cluster.json lists for that
 * replica.
 *
 * Client mode (fedbft client, bench): no listeners; dials every replica's
 * client port and sends/receives on those links.
 *
 * Frames: the channel carries one application frame per record (a serialized
 * Envelope); the record limit is cfg max_frame.  A peer that fails the
 * handshake, sends garbage, an oversized or tampered frame is disconnected
 * and counted; the node carries on.
 *
 * Dialling: reconnect with exponential backoff (reconnect_min_ms doubling up
 * to reconnect_max_ms) plus up to 50% random jitter; frames sent while a link
 * is down wait in its send queue.
 *
 * Send queues: bounded by send_queue_bytes per link; a frame that does not fit
 * is dropped (FB_EBUSY, counted) - consensus retransmits what matters.
 */
#ifndef FB_NET_H
#define FB_NET_H

#include "config.h"
#include "keys.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef enum net_mode { NET_MODE_REPLICA = 1, NET_MODE_CLIENT = 2 } net_mode;

typedef struct net net;

typedef struct net_callbacks {
    /* An authenticated frame from replica `id` (replica mode: any replica
     * link; client mode: the link to replica id). */
    void (*on_replica_frame)(void *arg, uint32_t id, const uint8_t *frame, size_t len);
    /* Replica mode: an authenticated frame on client connection `conn`, whose
     * peer proved identity key pk (look up the client id in cluster.json). */
    void (*on_client_frame)(void *arg, uint32_t conn, const uint8_t pk[FB_PK_LEN],
                            const uint8_t *frame, size_t len);
    /* Optional notifications. */
    void (*on_replica_up)(void *arg, uint32_t id); /* our dialled link to id is up */
    void (*on_replica_down)(void *arg, uint32_t id);
    /* Replica mode: client connection conn completed its handshake with
     * identity key pk (before any frame). */
    void (*on_client_up)(void *arg, uint32_t conn, const uint8_t pk[FB_PK_LEN]);
    void (*on_client_down)(void *arg, uint32_t conn);
    void *arg;
} net_callbacks;

typedef struct net_config {
    net_mode mode;
    uv_loop_t *loop;
    const fb_identity *self;
    uint32_t self_id;           /* replica id (replica mode); client id (client mode) */
    const cfg_cluster *cluster; /* must outlive the net */
    const char *listen_host;    /* replica mode; NULL/"" = the host in cluster.json */
    uint32_t max_frame;         /* 0 = FB_CHAN_DEFAULT_MAX_FRAME */
    uint64_t send_queue_bytes;  /* per link; 0 = 16 MiB */
    uint32_t reconnect_min_ms;  /* 0 = 100 */
    uint32_t reconnect_max_ms;  /* 0 = 5000 */
    uint32_t max_clients;       /* client connections accepted at once; 0 = 1024 */
} net_config;

int net_new(const net_config *cfg, const net_callbacks *cb, net **out, char *err, size_t errlen);

/* Bind the listeners and start dialling.  FB_EIO with the address in err if a
 * port cannot be bound. */
int net_start(net *n, char *err, size_t errlen);

/* Queue a frame (copied) to replica id: replica mode uses our dialled link,
 * client mode the link to that replica.  FB_EBUSY if its queue is full,
 * FB_EINVAL for an unknown id or our own. */
int net_send_replica(net *n, uint32_t id, const uint8_t *frame, size_t len);

/* Replica mode: queue a frame to client connection conn (FB_ENOENT if it is gone). */
int net_send_client(net *n, uint32_t conn, const uint8_t *frame, size_t len);

/* Close every handle; cb runs once all are closed (then net_free). */
void net_close(net *n, void (*cb)(void *arg), void *arg);
void net_free(net *n);

typedef struct net_link_stats {
    bool connected; /* handshake complete */
    uint64_t frames_in, frames_out, bytes_in, bytes_out;
    uint64_t rejected;   /* disconnects for bad handshakes, garbage, oversized frames */
    uint64_t dropped;    /* frames dropped on a full send queue */
    uint64_t last_rx_ms; /* loop time of the last frame received, 0 = never */
    uint64_t queued_bytes;
    uint64_t rtt_us; /* the kernel's smoothed round-trip time on our dialled link
                        (TCP_INFO), 0 if unknown */
    /* Fault injection (net_fault_set): frames dropped on the way in and out,
     * frames held back by a delay, and delayed frames dropped because the
     * delay queue was full. */
    uint64_t fault_dropped_in, fault_dropped_out, fault_delayed, fault_delay_dropped;
} net_link_stats;

/* Per replica: the dialled link's counters, plus the inbound links from it.
 * Costs a getsockopt (TCP_INFO) per connected link. */
void net_replica_stats(net *n, uint32_t id, net_link_stats *out);

/* Whether the dialled link to replica id has completed its handshake (no
 * syscall: for polling). */
bool net_replica_connected(const net *n, uint32_t id);

typedef struct net_stats {
    uint64_t handshakes_ok, handshakes_failed, unknown_keys, garbage, oversized;
    uint64_t client_conns, client_conns_rejected;
} net_stats;

void net_get_stats(net *n, net_stats *out);

/* Fault injection, for test clusters only (the node allows it when node.json
 * has "fault_injection": true).  Faults apply to replica links, never to
 * client connections.  replica is a replica id, or NET_FAULT_ALL for every
 * replica but ourselves; the new settings replace the old ones.
 *  - drop_in: frames arriving from that replica are discarded before any
 *    callback sees them (counted in fault_dropped_in, not frames_in).
 *  - drop_out: frames we send to it are discarded (net_send_replica still
 *    returns 0, as on a lossy network; counted in fault_dropped_out).
 *  - delay_ms: frames we send to it wait that long (loop time) in a per-link
 *    FIFO before entering the send queue.  The FIFO holds at most
 *    send_queue_bytes (frame + 12 bytes each); a frame that does not fit is
 *    dropped and counted in fault_delay_dropped.  Order is kept: while the
 *    FIFO holds frames, new ones queue behind them even with delay 0.
 * FB_EINVAL for an unknown id or our own (replica mode). */
#define NET_FAULT_ALL UINT32_MAX
int net_fault_set(net *n, uint32_t replica, bool drop_in, bool drop_out, uint32_t delay_ms);

/* No faults on any link; frames already delayed still go out when due. */
void net_fault_clear(net *n);

/* The faults on one replica's link (FB_EINVAL for an unknown id). */
int net_fault_get(net *n, uint32_t replica, bool *drop_in, bool *drop_out, uint32_t *delay_ms);

#endif
