/* gguf_writer.h - build a GGUF v3 file: key/values, tensor descriptors, then
 * one atomic write (temporary file in the target's directory, fsync, rename).
 *
 * Usage: gguf_w_new; gguf_w_add_* in the order they should appear in the
 * file; gguf_w_add_tensor / gguf_w_add_tensor_fn in tensor order;
 * gguf_w_write; gguf_w_free.
 *
 * Errors are sticky: an add that fails returns a negative FB_E* code and
 * leaves the writer unchanged except for remembering the first failure
 * (gguf_w_errmsg names it); every later add then returns that code without
 * doing anything, and gguf_w_write reports it.  So a builder may make a run
 * of adds and check only the write.
 *
 * Validation at add time: keys and tensor names must be unique and non-empty
 * (keys at most GGUF_W_MAX_KEY bytes, tensor names at most GGUF_W_MAX_TENSOR_NAME
 * as llama.cpp requires), general.alignment must be a uint32 power of two,
 * shapes have 1..GGUF_MAX_DIMS non-zero dimensions, Q8_0 needs ne[0] % 32 == 0
 * and nbytes must equal the size the shape and type imply.
 *
 * Ownership: keys, names and key/value contents are copied.  Tensor data is
 * NOT copied: the pointer given to gguf_w_add_tensor must stay valid until
 * gguf_w_write returns.  gguf_w_add_tensor_fn instead calls fill() during the
 * write to produce the bytes of that one tensor into a scratch buffer the
 * writer owns, so the memory used is bounded by the largest tensor (this is
 * how the quantizer and the synthesizer stream big models).
 *
 * Threads: a writer is used by one thread at a time.
 */
#ifndef FB_GGUF_WRITER_H
#define FB_GGUF_WRITER_H

#include "gguf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GGUF_W_MAX_KEY 4096       /* bytes in a key, as the reader allows */
#define GGUF_W_MAX_TENSOR_NAME 63 /* ggml's GGML_MAX_NAME - 1 */
#define GGUF_W_OVERWRITE 1u       /* gguf_w_write flag: replace an existing file */

typedef struct gguf_w gguf_w;

/* Produce the nbytes bytes of one tensor into dst (the writer's scratch
 * buffer, aligned for any scalar type).  Return 0, or a negative FB_E* code
 * with a message in err, which aborts the write. */
typedef int (*gguf_w_fill_fn)(void *arg, void *dst, uint64_t nbytes, char *err, size_t errlen);

int gguf_w_new(gguf_w **out); /* 0 or FB_ENOMEM */
void gguf_w_free(gguf_w *w);

/* Typed key/values.  A key named general.alignment must be a uint32 power of
 * two and sets the alignment of the tensor data (default 32). */
int gguf_w_add_str(gguf_w *w, const char *key, const char *s);
int gguf_w_add_u32(gguf_w *w, const char *key, uint32_t v);
int gguf_w_add_i32(gguf_w *w, const char *key, int32_t v);
int gguf_w_add_f32(gguf_w *w, const char *key, float v);
int gguf_w_add_bool(gguf_w *w, const char *key, bool v);
/* Arrays.  lens may be NULL, in which case the strings are NUL-terminated. */
int gguf_w_add_arr_str(gguf_w *w, const char *key, const char *const *s, const size_t *lens,
                       size_t n);
int gguf_w_add_arr_f32(gguf_w *w, const char *key, const float *v, size_t n);
int gguf_w_add_arr_i32(gguf_w *w, const char *key, const int32_t *v, size_t n);
/* A key/value of any type as a reader (gguf_open) holds it, under its key. */
int gguf_w_copy_kv(gguf_w *w, const gguf_kv *kv);

/* Tensors, type F32, F16 or Q8_0, shape ne[0..n_dims) (ne[0] fastest). */
int gguf_w_add_tensor(gguf_w *w, const char *name, uint32_t type, uint32_t n_dims,
                      const uint64_t *ne, const void *data, uint64_t nbytes);
int gguf_w_add_tensor_fn(gguf_w *w, const char *name, uint32_t type, uint32_t n_dims,
                         const uint64_t *ne, uint64_t nbytes, gguf_w_fill_fn fill, void *arg);

/* Bytes a tensor of this type and shape holds; 0 for an unsupported type,
 * a zero dimension, Q8_0 with ne[0] % 32 != 0 or an overflow. */
uint64_t gguf_w_tensor_nbytes(uint32_t type, uint32_t n_dims, const uint64_t *ne);

/* Write the file to path atomically.  flags: GGUF_W_OVERWRITE, else an
 * existing path is refused with FB_EEXIST.  On failure nothing is left at path
 * (an existing file there is untouched), the temporary file is removed, and
 * err names the file and the cause (FB_ENOENT, FB_EPERM, FB_EEXIST, FB_EIO,
 * FB_ENOMEM, or the code of an earlier failed add or of a fill).  On success
 * *size (if not NULL) is the file's size in bytes.  The file is created mode
 * 0644 (a model is not secret).  May be called once. */
int gguf_w_write(gguf_w *w, const char *path, unsigned flags, uint64_t *size, char *err,
                 size_t errlen);

/* The first error of an add, "" if none; valid until the next call. */
const char *gguf_w_errmsg(const gguf_w *w);

#endif
