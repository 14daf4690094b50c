/* quantize.h - `fedbft model quantize`: rewrite a GGUF model with its weight
 * matrices converted to Q8_0, F16 or F32.
 *
 * Every key/value is copied in order, with general.file_type set for the
 * target (0 F32, 1 F16, 7 Q8_0) and general.quantization_version 2 for Q8_0.
 * Tensors of two or more dimensions (token_embd and output included, as
 * llama.cpp does for Q8_0) are converted from F32, F16 or Q8_0 to the
 * target; for Q8_0 a matrix whose rows are not a multiple of 32 elements
 * keeps its type.  1-D tensors (the norms) are written as F32.  Tensors
 * already of their target type are copied byte for byte.
 *
 * Memory: the input is mapped, and the output is produced one tensor at a
 * time (gguf_writer's fill), so the memory used is about one tensor of the
 * output plus one row of floats.  Threads: any, one call at a time per path.
 */
#ifndef FB_QUANTIZE_H
#define FB_QUANTIZE_H

#include <stddef.h>
#include <stdint.h>

typedef struct quant_result {
    uint64_t in_bytes, out_bytes; /* file sizes */
    uint32_t in_type;             /* GGUF_TENSOR_* holding most of the input's matrix bytes */
    size_t n_converted;           /* tensors whose type changed */
    size_t n_copied;              /* tensors written unchanged */
} quant_result;

/* "f32", "f16" or "q8_0" (any case) to a GGUF_TENSOR_* type: 0 or FB_EINVAL. */
int quant_type_from_name(const char *name, uint32_t *type);
/* general.file_type for a model whose matrices are of this type (0, 1, 7). */
uint32_t quant_file_type(uint32_t tensor_type);

/* Convert in to out (written atomically; flags as gguf_w_write's, so
 * GGUF_W_OVERWRITE to replace an existing out).  res may be NULL.  Errors
 * name the file and what is wrong. */
int quant_file(const char *in, const char *out, uint32_t type, unsigned flags, quant_result *res,
               char *err, size_t errlen);

#endif
