/* model.h - a llama-family model loaded from GGUF, and decoding contexts that
 * run the forward pass for several sequences at once.
 *
 * Forward pass (llama): token embedding; per layer, RMSNorm -> Q, K, V
 * projections -> RoPE on Q and K -> causal grouped-query attention over the
 * sequence's KV cache -> output projection -> residual add; RMSNorm ->
 * SwiGLU feed-forward (gate, up, down) -> residual add; final RMSNorm ->
 * output projection (or the token embedding when the model ties them).
 * Weights may be F32, F16 or Q8_0 (norms F32); the KV cache is F16 (keys
 * and values rounded to nearest even as they are stored) or F32.
 *
 * Determinism: every number a sequence's logits depend on is computed from
 * that sequence's own rows by the kernels of kernels.h, whose reduction
 * orders are fixed.  So a sequence's logits are bit-identical whatever the
 * thread count, the CPU path (scalar or SIMD), or the other sequences decoded
 * in the same llm_decode call.
 *
 * Ownership and threads: an llm_model is immutable after load (it owns the
 * GGUF mapping and the tokenizer) and may be shared by any number of
 * contexts.  An llm_ctx owns its KV caches, scratch buffers and thread pool;
 * it is used by one thread at a time.
 */
#ifndef FB_MODEL_H
#define FB_MODEL_H

#include "tokenizer.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct llm_hparams {
    int n_vocab;
    int n_embd;
    int n_layer;
    int n_head;
    int n_head_kv;
    int head_dim; /* n_embd / n_head */
    int n_ff;
    int n_rot;       /* rotary dimensions per head (llama.rope.dimension_count) */
    int n_ctx_train; /* llama.context_length */
    float rms_eps;
    float rope_base;
    int weight_type; /* type of the attention Q weights, as a summary: KN_* */
    bool tied_output;
    bool add_bos; /* tokenizer.ggml.add_bos_token (default true): prompts start with BOS */
} llm_hparams;

typedef struct llm_model llm_model;

/* Load and validate: architecture "llama", every hyperparameter, every
 * tensor's presence, type and shape.  A bad file is a clear error, and so
 * is a feature this engine does not implement (RoPE scaling other than
 * none or linear factor 1, mixture-of-experts). */
int llm_model_load(const char *path, llm_model **out, char *err, size_t errlen);
void llm_model_free(llm_model *m);
const llm_hparams *llm_model_hparams(const llm_model *m);
const tok *llm_model_tok(const llm_model *m);
/* XXH3-128 of the whole file (16 bytes): identifies the model in cache keys
 * and in results returned through consensus. */
const uint8_t *llm_model_digest(const llm_model *m);
/* The same digest of any file (and its size), without loading it. */
int llm_file_digest(const char *path, uint8_t digest[16], uint64_t *bytes, char *err,
                    size_t errlen);
uint64_t llm_model_file_bytes(const llm_model *m);
const char *llm_model_name(const llm_model *m); /* general.name or the file name */

#define LLM_MAX_SLOTS 256
#define LLM_MAX_HEAD_DIM 512
#define LLM_DEFAULT_MAX_TOKENS 256 /* tokens per llm_decode call */
/* Waking a sleeping worker costs ~10 us on the caller and ~30 us before the
 * worker runs on a KVM guest without halt polling (measured here), so within
 * one forward pass a job is split across threads only above this many
 * multiply-adds (~150 us of one core at Q8_0 speed).  Single-sequence decode
 * of a small model then runs on one thread; prompts, and batches of several
 * sequences (one group per thread), use them all. */
#define LLM_DEFAULT_PARALLEL_MIN (4L << 20)

typedef struct llm_ctx_params {
    int n_slots;       /* sequences held at once, each with its own KV cache (>= 1) */
    int n_ctx;         /* positions per slot; 0 or more than the model's: the model's */
    int n_threads;     /* threads, counting the caller (>= 1) */
    int path;          /* -1: the fastest this CPU has; else KN_PATH_* */
    int max_tokens;    /* most tokens in one llm_decode call; 0: LLM_DEFAULT_MAX_TOKENS */
    long parallel_min; /* jobs of fewer multiply-adds run on the calling thread alone;
                        * 0: LLM_DEFAULT_PARALLEL_MIN */
    bool kv_f32;       /* keep keys and values as F32 (default F16, as llama.cpp: half
                        * the memory; results stay deterministic either way) */
    bool no_prefetch;  /* no weight-prefetch helper (see llm_decode) */
} llm_ctx_params;

typedef struct llm_ctx llm_ctx;

int llm_ctx_new(const llm_model *m, const llm_ctx_params *p, llm_ctx **out, char *err,
                size_t errlen);
void llm_ctx_free(llm_ctx *c);
int llm_ctx_n_ctx(const llm_ctx *c);
int llm_ctx_n_slots(const llm_ctx *c);
int llm_ctx_max_tokens(const llm_ctx *c);
const char *llm_ctx_path_name(const llm_ctx *c); /* "scalar", "avx2", ... */
uint64_t llm_ctx_kv_bytes(const llm_ctx *c);     /* KV cache memory, all slots */

/* Forget a slot's sequence (its next token goes to position 0). */
void llm_ctx_reset_slot(llm_ctx *c, int slot);
/* Positions filled in a slot. */
int llm_ctx_slot_pos(const llm_ctx *c, int slot);

/* One sequence's share of a decode step: n_tokens tokens appended to slot at
 * its current position.  logits, when not NULL, receives n_vocab floats for
 * the last token, or n_tokens * n_vocab (row i for token i) with logits_all. */
typedef struct llm_seq {
    int slot;
    const int32_t *tokens;
    int n_tokens;
    float *logits;
    bool logits_all;
} llm_seq;

/* Run the forward pass for n_seqs sequences together: with several threads
 * and sequences, one group of sequences per thread (each streams the weights
 * once for its group); otherwise one pass with the weights streamed once for
 * all.  A pass of a few tokens runs on the calling thread (its matmuls are
 * too small to split), and a helper thread, woken once per call, streams
 * the weights ahead of it so that two cores pull them from memory.  Logits are the same bits either
 * way.  Errors, with nothing changed: FB_EINVAL (slot out of range or repeated, token id out of
 * range, n_tokens < 1), FB_ETOOBIG (more than max_tokens in all, or a slot would pass n_ctx). */
int llm_decode(llm_ctx *c, const llm_seq *seqs, int n_seqs, char *err, size_t errlen);

#endif
