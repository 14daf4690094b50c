/* synth.h - `fedbft model synth`: write a small llama-family GGUF model with
 * deterministic pseudo-random weights and a SentencePiece-style vocabulary,
 * so that the inference engine runs and is tested with no download.
 *
 * The file has the keys and tensor names of llama.cpp's llama models
 * (general.*, llama.*, tokenizer.ggml.*; token_embd, blk.N.attn_q, ...,
 * output_norm, output; untied output).  Weights: norms F32, 1 + N(0, 0.1);
 * token_embd N(0, 0.5); Q, K, V, gate and up N(0, 1/sqrt(n_in)); attention
 * output and down N(0, 0.5/sqrt(n_in)); output N(0, 2/sqrt(n_embd)), so the
 * logits have a standard deviation of about 2.  The normal draws are sums of
 * four xoshiro256** uniforms (integer and float arithmetic only, no libm),
 * each tensor its own stream seeded from (seed, tensor name): the same
 * arguments give a byte-identical file on any machine.
 *
 * Vocabulary: <unk> <s> </s> (ids 0-2), the 256 byte tokens <0x00>..<0xFF>,
 * "▁" and the printable ASCII characters '!'..'~', then pieces learned by BPE
 * pair counting over a built-in English corpus (ties: lowest pair of ids),
 * scored -1, -2, ... by merge rank, so llama's highest-score-first merge
 * replays them; every piece is the join of two earlier pieces.  Should the
 * corpus run out of merges before n_vocab, the rest are "<unused_N>" pieces
 * of type UNUSED.
 *
 * Memory: tensors are generated one at a time during the write.
 */
#ifndef FB_SYNTH_H
#define FB_SYNTH_H

#include <stddef.h>
#include <stdint.h>

#define SYNTH_DEFAULT_SEED 1u
#define SYNTH_BASE_VOCAB (3 + 256 + 1 + 94) /* specials, bytes, ▁, '!'..'~' */

typedef struct synth_config {
    const char *name; /* the preset's name, used in general.name */
    uint32_t n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx, n_vocab;
    uint32_t type; /* default matrix type, GGUF_TENSOR_* */
} synth_config;

/* "tiny" (64 embd, 2 layers, 4 heads, 2 kv heads, ff 176, ctx 256, vocab
 * 512, F32) or "small" (512, 8, 8, 8, 1408, 2048, 2048, Q8_0); NULL if
 * unknown.  Presets are static: never free them. */
const synth_config *synth_preset(const char *name);

/* Write the model for cfg with matrices of type (GGUF_TENSOR_F32, F16 or
 * Q8_0) to path, atomically (flags: GGUF_W_OVERWRITE to replace an existing
 * file).  *size, if not NULL, receives the file size.  A config that cannot
 * make a llama model (n_embd not a multiple of n_head, n_head not a multiple
 * of n_head_kv, an odd head size, n_vocab below SYNTH_BASE_VOCAB + 1) is
 * FB_EINVAL.  With Q8_0, a matrix whose rows (ne[0]) are not a multiple of 32
 * is written F32, as `model quantize` leaves it. */
int synth_write(const synth_config *cfg, uint32_t type, uint64_t seed, const char *path,
                unsigned flags, uint64_t *size, char *err, size_t errlen);

/* The vocabulary synth_write stores, for tests and tools.  Owns its pieces. */
typedef struct synth_vocab {
    size_t n;
    char **pieces; /* NUL-terminated UTF-8 */
    float *scores;
    int32_t *types;  /* enum tok_type */
    size_t n_merges; /* pieces learned from the corpus */
} synth_vocab;

int synth_vocab_build(uint32_t n_vocab, synth_vocab *v, char *err, size_t errlen);
void synth_vocab_free(synth_vocab *v);

/* The built-in English training text (static, NUL-terminated). */
const char *synth_corpus(void);

#endif
