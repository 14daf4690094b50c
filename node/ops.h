/* ops.h - per-request phase timing for the admin `recent-ops` command and the
 * phase histograms (like Ceph's dump_historic_ops).
 *
 * The node marks each phase as it sees it go by: received (the request
 * arrived and verified), pre-prepared (the PRE-PREPARE carrying it was
 * logged), prepared (its batch's certificate was logged), committed (its
 * batch was handed to execution, which happens only once committed),
 * executed (the store finished the batch) and replied.  Phases a replica
 * never sees (a backup never "receives" a request it only saw in a batch)
 * stay 0.
 *
 * Bounded: at most OPS_TRACKED requests in flight (the oldest is forgotten
 * when full), the OPS_RECENT most recent and OPS_SLOWEST slowest finished
 * ones.  Loop thread only.
 */
#ifndef FB_OPS_H
#define FB_OPS_H

#include <jansson.h>
#include <stdint.h>

#define OPS_TRACKED 4096
#define OPS_RECENT 32
#define OPS_SLOWEST 16

typedef enum ops_phase {
    OPS_RECEIVED = 0,
    OPS_PRE_PREPARED,
    OPS_PREPARED,
    OPS_COMMITTED,
    OPS_EXECUTED,
    OPS_REPLIED,
    OPS_NPHASES
} ops_phase;

typedef struct ops ops;

int ops_new(ops **out);
void ops_free(ops *o);

/* Mark a phase of request (client, timestamp) at time now_us. */
void ops_mark(ops *o, uint32_t client, uint64_t timestamp, ops_phase phase, uint64_t seq,
              uint64_t now_us);

/* The request is finished (replied): it moves to the recent/slowest lists.
 * durations[p] receives the seconds spent reaching phase p from the phase
 * before it (0 if either is unknown); returns the total in seconds. */
double ops_finish(ops *o, uint32_t client, uint64_t timestamp, uint64_t now_us,
                  double durations[OPS_NPHASES]);

/* {"in_flight": N, "recent": [...], "slowest": [...]}, each op with client,
 * timestamp, seq, total_ms and the ms spent in each phase. */
json_t *ops_json(const ops *o);

const char *ops_phase_name(ops_phase p);

#endif
