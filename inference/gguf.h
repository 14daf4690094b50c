/* gguf.h - read-only loader for GGUF model files (versions 2 and 3).
 *
 * gguf_open maps the file (MAP_PRIVATE, read-only) and validates every
 * header field, key/value pair and tensor descriptor against the file size
 * before anything is handed out, so a truncated or hostile file yields a
 * negative FB_E* code and a message naming what and where, never a crash.
 *
 * Ownership: the gguf_file owns the mapping and its copies of keys and tensor
 * names.  Every pointer returned (keys, names, string values, tensor data)
 * stays valid until gguf_close.  String values point into the mapping and are
 * NOT NUL-terminated: use the returned length.  A gguf_file is immutable after
 * open, so any number of threads may read it concurrently.
 *
 * Supported tensor types: F32, F16, Q8_0.  Multi-byte values are little-endian.
 */
#ifndef FB_GGUF_H
#define FB_GGUF_H

#include <stddef.h>
#include <stdint.h>

enum gguf_type {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
};

enum gguf_tensor_type {
    GGUF_TENSOR_F32 = 0,
    GGUF_TENSOR_F16 = 1,
    GGUF_TENSOR_Q8_0 = 8, /* blocks of 32: one F16 scale + 32 int8 */
};

#define GGUF_MAX_DIMS 4
#define GGUF_MAX_COUNT (1u << 20) /* limit on tensors and on key/value pairs */
#define GGUF_DEFAULT_ALIGNMENT 32

typedef struct gguf_file gguf_file;

typedef struct gguf_kv {
    const char *key;         /* NUL-terminated */
    uint32_t type;           /* GGUF_TYPE_* */
    uint32_t arr_type;       /* element type when type == GGUF_TYPE_ARRAY */
    uint64_t arr_n;          /* element count when type == GGUF_TYPE_ARRAY */
    const uint8_t *val;      /* value bytes (array: first element) in the mapping */
    const uint64_t *str_off; /* string arrays: byte offset of element i from val */
} gguf_kv;

typedef struct gguf_tensor {
    const char *name;           /* NUL-terminated */
    uint32_t type;              /* GGUF_TENSOR_* */
    uint32_t n_dims;            /* 1..GGUF_MAX_DIMS */
    uint64_t ne[GGUF_MAX_DIMS]; /* ne[0] varies fastest; unused dimensions are 1 */
    uint64_t offset;            /* from the start of the data section */
    uint64_t nbytes;
    const void *data; /* in the mapping, aligned to the file's alignment */
} gguf_tensor;

/* Open and validate path.  On success *out owns the mapping. */
int gguf_open(const char *path, gguf_file **out, char *err, size_t errlen);
/* The same parser over a caller-owned buffer, which must outlive the result
 * (nothing is copied).  name is used in messages. */
int gguf_open_mem(const void *buf, size_t len, const char *name, gguf_file **out, char *err,
                  size_t errlen);
void gguf_close(gguf_file *f);

uint32_t gguf_version(const gguf_file *f);
uint32_t gguf_alignment(const gguf_file *f);
uint64_t gguf_data_offset(const gguf_file *f); /* file offset of the data section */

/* Key/value pairs, in file order. */
size_t gguf_n_kv(const gguf_file *f);
const gguf_kv *gguf_kv_at(const gguf_file *f, size_t i);
const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key); /* NULL if absent */

/* Typed getters by key: 0, FB_ENOENT (absent) or FB_EINVAL (wrong type or the
 * value does not fit).  Integer getters accept any integer type whose value
 * fits; gguf_get_f32 accepts FLOAT32 and FLOAT64. */
int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out);
int gguf_get_i32(const gguf_file *f, const char *key, int32_t *out);
int gguf_get_u64(const gguf_file *f, const char *key, uint64_t *out);
int gguf_get_f32(const gguf_file *f, const char *key, float *out);
int gguf_get_bool(const gguf_file *f, const char *key, int *out);
int gguf_get_str(const gguf_file *f, const char *key, const char **s, size_t *len);
/* Arrays: the element type and count. */
int gguf_get_arr(const gguf_file *f, const char *key, const gguf_kv **kv, uint32_t *elem_type,
                 uint64_t *n);

/* Element i of an array kv: FB_EINVAL on a type mismatch or i out of range. */
int gguf_arr_str(const gguf_kv *kv, uint64_t i, const char **s, size_t *len);
int gguf_arr_f64(const gguf_kv *kv, uint64_t i, double *out); /* any numeric or bool type */
int gguf_arr_i64(const gguf_kv *kv, uint64_t i,
                 int64_t *out); /* integer types; u64 > INT64_MAX fails */

/* Scalar kv values (not arrays), same conversion rules as the getters. */
int gguf_kv_f64(const gguf_kv *kv, double *out);
int gguf_kv_i64(const gguf_kv *kv, int64_t *out);
int gguf_kv_u64(const gguf_kv *kv, uint64_t *out);
int gguf_kv_str(const gguf_kv *kv, const char **s, size_t *len);

/* Tensors, in file order. */
size_t gguf_n_tensors(const gguf_file *f);
const gguf_tensor *gguf_tensor_at(const gguf_file *f, size_t i);
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name); /* NULL if absent */

/* Bytes of one value of a fixed-size GGUF_TYPE_*; 0 for STRING and ARRAY,
 * -1 for an unknown type. */
int gguf_type_size(uint32_t type);

/* Names for messages: "uint32", "F16", ...; never NULL. */
const char *gguf_type_name(uint32_t type);
const char *gguf_tensor_type_name(uint32_t type);

#endif
