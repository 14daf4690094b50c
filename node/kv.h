/* kv.h - executing client operations (PUT/GET/DEL/CAS/INFER) against the
 * replicated key-value state.  Internal to the store: runs on the store
 * thread inside the batch's transaction.
 *
 * Determinism: the result bytes depend only on the request bytes and the
 * state, so every correct replica produces the same packed Fedbft__Result.
 * A malformed request is not an error of the store: it gets a result with
 * STATUS_INVALID and a reason.
 */
#ifndef FB_KV_H
#define FB_KV_H

#include "fedbft.pb-c.h"
#include "store_db.h"

#include <stddef.h>
#include <stdint.h>

/* Execute one serialized REQUEST envelope as part of committed batch seq:
 * apply it, record undo rows and the LtHash change, and write the client row
 * (client, timestamp, seq, result).  *out is the packed Fedbft__Result
 * (malloc'd, caller frees).  Returns 0, or FB_E* if the database failed (the
 * caller rolls the batch back). */
int kv_execute(store_db *d, uint64_t seq, const uint8_t *req, size_t len, uint8_t **out,
               size_t *out_len);

#define KV_INFER_MAX_PROMPT 65536 /* bytes of an INFER prompt */
#define KV_INFER_MAX_TOKENS 4096  /* tokens an INFER may ask for */

/* Whether INFER parameters are acceptable, with the reason in why (NULL:
 * ok).  Execution answers STATUS_INVALID for the same cases, so every
 * replica decides alike before it runs the inference. */
const char *kv_infer_invalid(const Fedbft__InferParams *p);

/* A read-only request: a GET against the executed state; anything else gets
 * STATUS_INVALID.  Writes nothing. */
int kv_read(store_db *d, const uint8_t *req, size_t len, uint8_t **out, size_t *out_len);

#endif
