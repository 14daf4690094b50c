/* tokenizer.h - the llama SentencePiece ("llama" model) tokenizer, matching
 * llama.cpp's llama_tokenize(parse_special=false) and
 * llama_token_to_piece(special=true) on the same vocabulary.
 *
 * Encoding: a space is prepended (unless the GGUF says
 * tokenizer.ggml.add_space_prefix = false) and every space becomes U+2581
 * "▁".  The text is split into UTF-8 characters, then the adjacent pair whose
 * concatenation is a vocabulary piece with the highest score (ties: leftmost)
 * is merged until no pair is a piece.  A remaining unit with no piece becomes
 * its bytes as "<0xNN>" tokens.  Text such as "<s>" is plain text.
 *
 * Ownership and threads: a tok owns copies of every piece (the gguf_file may
 * be closed afterwards).  It is immutable after construction, so any number of
 * threads may call tok_encode / tok_decode_piece concurrently.
 */
#ifndef FB_TOKENIZER_H
#define FB_TOKENIZER_H

#include "gguf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Token types, numbered as in GGUF tokenizer.ggml.token_type / llama.cpp. */
enum tok_type {
    TOK_TYPE_UNDEFINED = 0,
    TOK_TYPE_NORMAL = 1,
    TOK_TYPE_UNKNOWN = 2,
    TOK_TYPE_CONTROL = 3,
    TOK_TYPE_USER_DEFINED = 4,
    TOK_TYPE_UNUSED = 5,
    TOK_TYPE_BYTE = 6,
};

#define TOK_MAX_TEXT (1u << 20)  /* tok_encode rejects longer input */
#define TOK_MAX_VOCAB (1u << 22) /* larger vocabularies are rejected */
#define TOK_MAX_PIECE_LEN 1024u  /* longest accepted piece, in bytes */

typedef struct tok tok;

/* Build from tokenizer.ggml.{tokens,scores,token_type,bos_token_id,
 * eos_token_id,unknown_token_id,add_space_prefix}.  BOS/EOS/UNK default to
 * 1/2/0.  The model (tokenizer.ggml.model, if present) must be "llama". */
int tok_from_gguf(const gguf_file *f, tok **out, char *err, size_t errlen);

/* Build from arrays (tests, tools).  lens may be NULL (pieces are then
 * NUL-terminated); types may be NULL, in which case "<0xNN>" pieces are BYTE,
 * bos/eos are CONTROL, unk is UNKNOWN and the rest NORMAL.  Nothing is kept
 * from the arguments.  A space prefix is added when encoding. */
int tok_new(const char *const *pieces, const size_t *lens, const float *scores,
            const int32_t *types, size_t n, int32_t bos, int32_t eos, int32_t unk, tok **out,
            char *err, size_t errlen);
void tok_free(tok *t);

size_t tok_n_vocab(const tok *t);
int32_t tok_bos(const tok *t);
int32_t tok_eos(const tok *t);
int32_t tok_unk(const tok *t);

/* Tokenize text[0..len) into out[0..cap), with BOS first when add_bos.
 * Returns 0 and *n = count; FB_ETOOBIG when len > TOK_MAX_TEXT, or when cap is
 * too small, in which case *n is set to the count needed (out is then
 * partially written); FB_ENOMEM. */
int tok_encode(const tok *t, const char *text, size_t len, bool add_bos, int32_t *out, size_t cap,
               size_t *n);

/* The bytes token id stands for (not NUL-terminated): byte tokens give their
 * byte, normal tokens their text with "▁" turned into spaces, control,
 * unknown and user-defined tokens their text as is, unused ones nothing.
 * FB_EINVAL for an id out of range; FB_ETOOBIG if cap is too small (*n is
 * then the size needed). */
int tok_decode_piece(const tok *t, int32_t id, char *buf, size_t cap, size_t *n);

/* The raw vocabulary text of id, or NULL when out of range. */
const char *tok_piece(const tok *t, int32_t id, size_t *len);
float tok_score(const tok *t, int32_t id);
int tok_type_of(const tok *t, int32_t id);

#endif
