/* gguf.c - GGUF parser: bounds-checks every field against the file size,
 * then exposes keys, values and tensors as pointers into the mapping. */
#include "gguf.h"

#include "fb_error.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

/* Keys and tensor names are copied into C strings; ggml itself limits tensor
 * names to 63 bytes, so a generous bound only stops absurd allocations. */
#define GGUF_MAX_NAME 4096

struct gguf_file {
    const uint8_t *base;
    uint64_t size;
    int mapped;
    uint32_t version;
    uint32_t alignment;
    uint64_t data_start;
    size_t n_kv, n_tensors;
    gguf_kv *kv;
    gguf_tensor *tensors;
    /* open-addressing tables of index+1 (0 = empty), capacity a power of two */
    uint32_t *kv_hash, *t_hash;
    size_t kv_cap, t_cap;
};

/* A read cursor: every read checks that the bytes exist first. */
typedef struct cursor {
    const uint8_t *p;
    uint64_t size, pos;
    const char *name;
    char *err;
    size_t errlen;
} cursor;

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static int need(cursor *c, uint64_t n, const char *what)
{
    if (c->size - c->pos < n)
        return fb_errf(c->err, c->errlen, FB_ETRUNC,
                       "%s: file ends (%llu bytes) inside %s at offset %llu (needs %llu bytes)",
                       c->name, (unsigned long long)c->size, what, (unsigned long long)c->pos,
                       (unsigned long long)n);
    return 0;
}

static int rd_u32(cursor *c, uint32_t *v, const char *what)
{
    int rc = need(c, 4, what);
    if (rc)
        return rc;
    *v = (uint32_t)le(c->p + c->pos, 4);
    c->pos += 4;
    return 0;
}

static int rd_u64(cursor *c, uint64_t *v, const char *what)
{
    int rc = need(c, 8, what);
    if (rc)
        return rc;
    *v = le(c->p + c->pos, 8);
    c->pos += 8;
    return 0;
}

/* A GGUF string: u64 length then bytes.  Returns the bytes in place. */
static int rd_str(cursor *c, const uint8_t **s, uint64_t *len, const char *what)
{
    int rc = rd_u64(c, len, what);
    if (rc)
        return rc;
    if (c->size - c->pos < *len)
        return fb_errf(c->err, c->errlen, FB_ETRUNC,
                       "%s: %s at offset %llu has length %llu, past the end of the file (%llu "
                       "bytes)",
                       c->name, what, (unsigned long long)(c->pos - 8), (unsigned long long)*len,
                       (unsigned long long)c->size);
    *s = c->p + c->pos;
    c->pos += *len;
    return 0;
}

/* Copy a key or tensor name into a C string, rejecting empty, huge or
 * NUL-containing names (they could not be looked up reliably). */
static int dup_name(cursor *c, const uint8_t *s, uint64_t len, const char *what, char **out)
{
    if (len == 0 || len > GGUF_MAX_NAME || memchr(s, 0, (size_t)len))
        return fb_errf(c->err, c->errlen, FB_ECORRUPT,
                       "%s: %s at offset %llu is empty, longer than %d bytes or contains NUL",
                       c->name, what, (unsigned long long)(c->pos - len - 8), GGUF_MAX_NAME);
    char *d = malloc((size_t)len + 1);
    if (!d)
        return fb_errf(c->err, c->errlen, FB_ENOMEM, "%s: out of memory", c->name);
    memcpy(d, s, (size_t)len);
    d[len] = 0;
    *out = d;
    return 0;
}

int gguf_type_size(uint32_t t)
{
    switch (t) {
    case GGUF_TYPE_UINT8:
    case GGUF_TYPE_INT8:
    case GGUF_TYPE_BOOL:
        return 1;
    case GGUF_TYPE_UINT16:
    case GGUF_TYPE_INT16:
        return 2;
    case GGUF_TYPE_UINT32:
    case GGUF_TYPE_INT32:
    case GGUF_TYPE_FLOAT32:
        return 4;
    case GGUF_TYPE_UINT64:
    case GGUF_TYPE_INT64:
    case GGUF_TYPE_FLOAT64:
        return 8;
    case GGUF_TYPE_STRING:
    case GGUF_TYPE_ARRAY:
        return 0;
    default:
        return -1;
    }
}

const char *gguf_type_name(uint32_t t)
{
    static const char *names[] = {"uint8", "int8",   "uint16", "int16",  "uint32", "int32", "f32",
                                  "bool",  "string", "array",  "uint64", "int64",  "f64"};
    return t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

const char *gguf_tensor_type_name(uint32_t t)
{
    /* ggml's numbering, so an unsupported file names what it holds */
    static const char *names[] = {
        "F32",     "F16",    "Q4_0",    "Q4_1",  "Q4_2?",  "Q4_3?", "Q5_0",  "Q5_1",
        "Q8_0",    "Q8_1",   "Q2_K",    "Q3_K",  "Q4_K",   "Q5_K",  "Q6_K",  "Q8_K",
        "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",
        "I8",      "I16",    "I32",     "I64",   "F64",    "IQ1_M", "BF16"};
    return t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

/* ---- hash tables for duplicate detection and lookup ---- */

static size_t table_cap(size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n)
        cap <<= 1;
    return cap;
}

/* Insert name (index i) or, if it is already there, return the existing
 * index + 1 so the caller can report the duplicate. */
static size_t table_put(uint32_t *tab, size_t cap,
                        const char *(*name_of)(const gguf_file *, size_t), const gguf_file *f,
                        const char *name, size_t i)
{
    size_t h = (size_t)XXH3_64bits(name, strlen(name)) & (cap - 1);
    while (tab[h]) {
        if (strcmp(name_of(f, tab[h] - 1), name) == 0)
            return tab[h];
        h = (h + 1) & (cap - 1);
    }
    tab[h] = (uint32_t)(i + 1);
    return 0;
}

static size_t table_get(const uint32_t *tab, size_t cap,
                        const char *(*name_of)(const gguf_file *, size_t), const gguf_file *f,
                        const char *name)
{
    if (!tab)
        return 0;
    size_t h = (size_t)XXH3_64bits(name, strlen(name)) & (cap - 1);
    while (tab[h]) {
        if (strcmp(name_of(f, tab[h] - 1), name) == 0)
            return tab[h];
        h = (h + 1) & (cap - 1);
    }
    return 0;
}

static const char *kv_name(const gguf_file *f, size_t i)
{
    return f->kv[i].key;
}

static const char *tensor_name(const gguf_file *f, size_t i)
{
    return f->tensors[i].name;
}

/* ---- parsing ---- */

/* Parse one value of type t (not an array) at the cursor, checking bounds. */
static int skip_scalar(cursor *c, uint32_t t, const char *key)
{
    char what[GGUF_MAX_NAME + 64];
    snprintf(what, sizeof what, "the value of key '%s'", key);
    if (t == GGUF_TYPE_STRING) {
        const uint8_t *s;
        uint64_t len;
        return rd_str(c, &s, &len, what);
    }
    int rc = need(c, (uint64_t)gguf_type_size(t), what);
    if (rc)
        return rc;
    c->pos += (uint64_t)gguf_type_size(t);
    return 0;
}

static int parse_array(cursor *c, gguf_kv *kv)
{
    uint32_t et;
    uint64_t n;
    char what[GGUF_MAX_NAME + 64];
    snprintf(what, sizeof what, "the array header of key '%s'", kv->key);
    int rc = rd_u32(c, &et, what);
    if (rc || (rc = rd_u64(c, &n, what)))
        return rc;
    if (et == GGUF_TYPE_ARRAY)
        return fb_errf(c->err, c->errlen, FB_ECORRUPT,
                       "%s: key '%s': nested arrays are not supported", c->name, kv->key);
    int es = gguf_type_size(et);
    if (es < 0)
        return fb_errf(c->err, c->errlen, FB_ECORRUPT,
                       "%s: key '%s': array element type %u is unknown", c->name, kv->key, et);
    kv->arr_type = et;
    kv->arr_n = n;
    kv->val = c->p + c->pos;
    /* A string needs at least its 8-byte length, so n * 8 bounds both cases
     * (and the offsets table below) by the file size. */
    uint64_t min = es ? (uint64_t)es : 8;
    if (n > (c->size - c->pos) / min)
        return fb_errf(c->err, c->errlen, FB_ETRUNC,
                       "%s: key '%s': array of %llu %s elements at offset %llu runs past the end "
                       "of the file (%llu bytes)",
                       c->name, kv->key, (unsigned long long)n, gguf_type_name(et),
                       (unsigned long long)c->pos, (unsigned long long)c->size);
    if (es) {
        c->pos += n * (uint64_t)es;
        return 0;
    }
    /* Strings vary in length: record each element's offset for O(1) access. */
    uint64_t *off = malloc(n ? (size_t)n * sizeof *off : 1);
    if (!off)
        return fb_errf(c->err, c->errlen, FB_ENOMEM, "%s: out of memory", c->name);
    kv->str_off = off;
    uint64_t start = c->pos;
    for (uint64_t i = 0; i < n; i++) {
        off[i] = c->pos - start;
        const uint8_t *s;
        uint64_t len;
        snprintf(what, sizeof what, "string %llu of array '%s'", (unsigned long long)i, kv->key);
        if ((rc = rd_str(c, &s, &len, what)))
            return rc;
    }
    return 0;
}

static int parse_kvs(cursor *c, gguf_file *f)
{
    char what[64];
    for (size_t i = 0; i < f->n_kv; i++) {
        gguf_kv *kv = &f->kv[i];
        const uint8_t *s;
        uint64_t len;
        snprintf(what, sizeof what, "the key of key/value pair %zu", i);
        int rc = rd_str(c, &s, &len, what);
        if (rc || (rc = dup_name(c, s, len, what, (char **)&kv->key)))
            return rc;
        size_t dup = table_put(f->kv_hash, f->kv_cap, kv_name, f, kv->key, i);
        if (dup)
            return fb_errf(c->err, c->errlen, FB_ECORRUPT,
                           "%s: key '%s' appears twice (pairs %zu and %zu)", c->name, kv->key,
                           dup - 1, i);
        snprintf(what, sizeof what, "the value type of key/value pair %zu", i);
        if ((rc = rd_u32(c, &kv->type, what)))
            return rc;
        if (gguf_type_size(kv->type) < 0)
            return fb_errf(c->err, c->errlen, FB_ECORRUPT, "%s: key '%s': value type %u is unknown",
                           c->name, kv->key, kv->type);
        if (kv->type == GGUF_TYPE_ARRAY)
            rc = parse_array(c, kv);
        else {
            kv->val = c->p + c->pos;
            rc = skip_scalar(c, kv->type, kv->key);
        }
        if (rc)
            return rc;
    }
    return 0;
}

static int tensor_bytes(cursor *c, gguf_tensor *t)
{
    uint64_t n = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        if (t->ne[d] == 0)
            return fb_errf(c->err, c->errlen, FB_ECORRUPT, "%s: tensor '%s': dimension %u is 0",
                           c->name, t->name, d);
        /* ggml keeps element counts in int64_t */
        if (__builtin_mul_overflow(n, t->ne[d], &n) || n > (uint64_t)INT64_MAX)
            return fb_errf(c->err, c->errlen, FB_ECORRUPT,
                           "%s: tensor '%s': the element count overflows 64 bits", c->name,
                           t->name);
    }
    uint64_t bytes;
    int ovf;
    switch (t->type) {
    case GGUF_TENSOR_F32:
        ovf = __builtin_mul_overflow(n, 4, &bytes);
        break;
    case GGUF_TENSOR_F16:
        ovf = __builtin_mul_overflow(n, 2, &bytes);
        break;
    case GGUF_TENSOR_Q8_0:
        if (t->ne[0] % 32)
            return fb_errf(c->err, c->errlen, FB_ECORRUPT,
                           "%s: tensor '%s': Q8_0 rows must be a multiple of 32 elements, not "
                           "%llu",
                           c->name, t->name, (unsigned long long)t->ne[0]);
        ovf = __builtin_mul_overflow(n / 32, 34, &bytes);
        break;
    default:
        return fb_errf(c->err, c->errlen, FB_EINVAL,
                       "%s: tensor '%s': type %u (%s) is not supported (F32, F16 and Q8_0 are)",
                       c->name, t->name, t->type, gguf_tensor_type_name(t->type));
    }
    if (ovf)
        return fb_errf(c->err, c->errlen, FB_ECORRUPT, "%s: tensor '%s': byte size overflows",
                       c->name, t->name);
    t->nbytes = bytes;
    return 0;
}

static int parse_tensor_infos(cursor *c, gguf_file *f)
{
    char what[GGUF_MAX_NAME + 64];
    for (size_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        const uint8_t *s;
        uint64_t len;
        snprintf(what, sizeof what, "the name of tensor %zu", i);
        int rc = rd_str(c, &s, &len, what);
        if (rc || (rc = dup_name(c, s, len, what, (char **)&t->name)))
            return rc;
        size_t dup = table_put(f->t_hash, f->t_cap, tensor_name, f, t->name, i);
        if (dup)
            return fb_errf(c->err, c->errlen, FB_ECORRUPT,
                           "%s: tensor name '%s' appears twice (tensors %zu and %zu)", c->name,
                           t->name, dup - 1, i);
        snprintf(what, sizeof what, "the descriptor of tensor '%s'", t->name);
        if ((rc = rd_u32(c, &t->n_dims, what)))
            return rc;
        if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
            return fb_errf(c->err, c->errlen, FB_ECORRUPT,
                           "%s: tensor '%s': %u dimensions (must be 1 to %d)", c->name, t->name,
                           t->n_dims, GGUF_MAX_DIMS);
        for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++)
            t->ne[d] = 1;
        for (uint32_t d = 0; d < t->n_dims; d++)
            if ((rc = rd_u64(c, &t->ne[d], what)))
                return rc;
        if ((rc = rd_u32(c, &t->type, what)) || (rc = rd_u64(c, &t->offset, what)))
            return rc;
        if ((rc = tensor_bytes(c, t)))
            return rc;
        if (t->offset % f->alignment)
            return fb_errf(c->err, c->errlen, FB_ECORRUPT,
                           "%s: tensor '%s': data offset %llu is not a multiple of the alignment "
                           "%u",
                           c->name, t->name, (unsigned long long)t->offset, f->alignment);
    }
    return 0;
}

static int parse_alignment(cursor *c, gguf_file *f)
{
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    const gguf_kv *kv = gguf_find_kv(f, "general.alignment");
    if (!kv)
        return 0;
    uint32_t a = kv->type == GGUF_TYPE_UINT32 ? (uint32_t)le(kv->val, 4) : 0;
    if (kv->type != GGUF_TYPE_UINT32 || a == 0 || (a & (a - 1)))
        return fb_errf(c->err, c->errlen, FB_ECORRUPT,
                       "%s: general.alignment must be a uint32 power of two (got %s %u)", c->name,
                       gguf_type_name(kv->type), a);
    f->alignment = a;
    return 0;
}

/* Where the data section starts, and that every tensor lies inside the file. */
static int place_tensors(cursor *c, gguf_file *f)
{
    uint64_t start = c->pos + (f->alignment - c->pos % f->alignment) % f->alignment;
    f->data_start = start;
    for (size_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        uint64_t end;
        if (start > c->size || __builtin_add_overflow(start, t->offset, &end) ||
            __builtin_add_overflow(end, t->nbytes, &end) || end > c->size)
            return fb_errf(c->err, c->errlen, FB_ETRUNC,
                           "%s: tensor '%s': data at offset %llu + %llu bytes runs past the end "
                           "of the file (%llu bytes)",
                           c->name, t->name, (unsigned long long)(start + t->offset),
                           (unsigned long long)t->nbytes, (unsigned long long)c->size);
        t->data = c->p + start + t->offset;
    }
    return 0;
}

static int parse_header(cursor *c, gguf_file *f)
{
    uint32_t magic;
    int rc = rd_u32(c, &magic, "the magic");
    if (rc)
        return rc;
    if (memcmp(c->p, "GGUF", 4) != 0)
        return fb_errf(c->err, c->errlen, FB_ECORRUPT,
                       "%s: not a GGUF file (the first 4 bytes are not \"GGUF\")", c->name);
    if ((rc = rd_u32(c, &f->version, "the version")))
        return rc;
    /* v2 differs from v3 only in that v3 may be big-endian (which we'd see
     * as a huge version number); v1 used 32-bit counts. */
    if (f->version != 2 && f->version != 3)
        return fb_errf(c->err, c->errlen, FB_EVERSION,
                       "%s: GGUF version %u is not supported (2 and 3 are; a big-endian file "
                       "also shows up this way)",
                       c->name, f->version);
    uint64_t nt, nkv;
    if ((rc = rd_u64(c, &nt, "the tensor count")) || (rc = rd_u64(c, &nkv, "the key/value count")))
        return rc;
    /* Each pair takes >= 13 bytes (key length, type, 1-byte value) and each
     * tensor descriptor >= 32, so bigger counts cannot fit the file. */
    if (nt > GGUF_MAX_COUNT || nt > c->size / 32)
        return fb_errf(c->err, c->errlen, FB_ETOOBIG,
                       "%s: tensor count %llu is too large (limit %u, and it must fit in the "
                       "file)",
                       c->name, (unsigned long long)nt, GGUF_MAX_COUNT);
    if (nkv > GGUF_MAX_COUNT || nkv > c->size / 13)
        return fb_errf(c->err, c->errlen, FB_ETOOBIG,
                       "%s: key/value count %llu is too large (limit %u, and it must fit in the "
                       "file)",
                       c->name, (unsigned long long)nkv, GGUF_MAX_COUNT);
    f->n_tensors = (size_t)nt;
    f->n_kv = (size_t)nkv;
    f->kv = calloc(f->n_kv ? f->n_kv : 1, sizeof *f->kv);
    f->tensors = calloc(f->n_tensors ? f->n_tensors : 1, sizeof *f->tensors);
    f->kv_cap = table_cap(f->n_kv);
    f->t_cap = table_cap(f->n_tensors);
    f->kv_hash = calloc(f->kv_cap, sizeof *f->kv_hash);
    f->t_hash = calloc(f->t_cap, sizeof *f->t_hash);
    if (!f->kv || !f->tensors || !f->kv_hash || !f->t_hash)
        return fb_errf(c->err, c->errlen, FB_ENOMEM, "%s: out of memory", c->name);
    return 0;
}

static int parse(gguf_file *f, const char *name, char *err, size_t errlen)
{
    cursor c = {f->base, f->size, 0, name, err, errlen};
    int rc = parse_header(&c, f);
    if (!rc)
        rc = parse_kvs(&c, f);
    if (!rc)
        rc = parse_alignment(&c, f);
    if (!rc)
        rc = parse_tensor_infos(&c, f);
    if (!rc)
        rc = place_tensors(&c, f);
    return rc;
}

int gguf_open_mem(const void *buf, size_t len, const char *name, gguf_file **out, char *err,
                  size_t errlen)
{
    gguf_file *f = calloc(1, sizeof *f);
    if (!f)
        return fb_errf(err, errlen, FB_ENOMEM, "%s: out of memory", name);
    f->base = buf;
    f->size = len;
    int rc = parse(f, name, err, errlen);
    if (rc) {
        gguf_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

int gguf_open(const char *path, gguf_file **out, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fb_errf(err, errlen, errno == ENOENT ? FB_ENOENT : FB_EIO, "%s: cannot open: %s",
                       path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fb_errf(err, errlen, FB_EIO, "%s: not a regular file", path);
    }
    if (st.st_size == 0) {
        close(fd);
        return fb_errf(err, errlen, FB_ETRUNC, "%s: file is empty", path);
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file alive */
    if (m == MAP_FAILED)
        return fb_errf(err, errlen, FB_EIO, "%s: mmap failed: %s", path, strerror(e));
    gguf_file *f = NULL;
    int rc = gguf_open_mem(m, (size_t)st.st_size, path, &f, err, errlen);
    if (rc) {
        munmap(m, (size_t)st.st_size);
        return rc;
    }
    f->mapped = 1;
    *out = f;
    return 0;
}

void gguf_close(gguf_file *f)
{
    if (!f)
        return;
    for (size_t i = 0; f->kv && i < f->n_kv; i++) {
        free((char *)f->kv[i].key);
        free((uint64_t *)f->kv[i].str_off);
    }
    for (size_t i = 0; f->tensors && i < f->n_tensors; i++)
        free((char *)f->tensors[i].name);
    free(f->kv);
    free(f->tensors);
    free(f->kv_hash);
    free(f->t_hash);
    if (f->mapped)
        munmap((void *)f->base, (size_t)f->size);
    free(f);
}

/* ---- accessors ---- */

uint32_t gguf_version(const gguf_file *f)
{
    return f->version;
}

uint32_t gguf_alignment(const gguf_file *f)
{
    return f->alignment;
}

uint64_t gguf_data_offset(const gguf_file *f)
{
    return f->data_start;
}

size_t gguf_n_kv(const gguf_file *f)
{
    return f->n_kv;
}

const gguf_kv *gguf_kv_at(const gguf_file *f, size_t i)
{
    return i < f->n_kv ? &f->kv[i] : NULL;
}

const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key)
{
    size_t i = table_get(f->kv_hash, f->kv_cap, kv_name, f, key);
    return i ? &f->kv[i - 1] : NULL;
}

size_t gguf_n_tensors(const gguf_file *f)
{
    return f->n_tensors;
}

const gguf_tensor *gguf_tensor_at(const gguf_file *f, size_t i)
{
    return i < f->n_tensors ? &f->tensors[i] : NULL;
}

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name)
{
    size_t i = table_get(f->t_hash, f->t_cap, tensor_name, f, name);
    return i ? &f->tensors[i - 1] : NULL;
}

/* Numeric value of type t at p: integers as sign + magnitude (is_int set),
 * everything also as a double.  FB_EINVAL for non-numeric types. */
typedef struct num {
    int is_int, is_neg;
    uint64_t u; /* magnitude when is_int */
    double d;
} num;

static int read_num(uint32_t t, const uint8_t *p, num *n)
{
    memset(n, 0, sizeof *n);
    int64_t s;
    switch (t) {
    case GGUF_TYPE_UINT8:
    case GGUF_TYPE_BOOL:
    case GGUF_TYPE_UINT16:
    case GGUF_TYPE_UINT32:
    case GGUF_TYPE_UINT64:
        n->is_int = 1;
        n->u = le(p, gguf_type_size(t));
        n->d = (double)n->u;
        return 0;
    case GGUF_TYPE_INT8:
        s = (int8_t)p[0];
        break;
    case GGUF_TYPE_INT16:
        s = (int16_t)(uint16_t)le(p, 2);
        break;
    case GGUF_TYPE_INT32:
        s = (int32_t)(uint32_t)le(p, 4);
        break;
    case GGUF_TYPE_INT64:
        s = (int64_t)le(p, 8);
        break;
    case GGUF_TYPE_FLOAT32: {
        uint32_t b = (uint32_t)le(p, 4);
        float fl;
        memcpy(&fl, &b, 4);
        n->d = fl;
        return 0;
    }
    case GGUF_TYPE_FLOAT64: {
        uint64_t b = le(p, 8);
        memcpy(&n->d, &b, 8);
        return 0;
    }
    default:
        return FB_EINVAL;
    }
    n->is_int = 1;
    n->is_neg = s < 0;
    n->u = s < 0 ? (uint64_t)0 - (uint64_t)s : (uint64_t)s;
    n->d = (double)s;
    return 0;
}

static int num_i64(const num *n, int64_t *out)
{
    if (!n->is_int)
        return FB_EINVAL;
    if (n->is_neg) {
        if (n->u > (uint64_t)INT64_MAX + 1)
            return FB_EINVAL;
        *out = n->u == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)n->u;
        return 0;
    }
    if (n->u > (uint64_t)INT64_MAX)
        return FB_EINVAL;
    *out = (int64_t)n->u;
    return 0;
}

int gguf_kv_f64(const gguf_kv *kv, double *out)
{
    num n;
    if (kv->type == GGUF_TYPE_ARRAY || read_num(kv->type, kv->val, &n))
        return FB_EINVAL;
    *out = n.d;
    return 0;
}

int gguf_kv_i64(const gguf_kv *kv, int64_t *out)
{
    num n;
    if (kv->type == GGUF_TYPE_ARRAY || kv->type == GGUF_TYPE_BOOL ||
        read_num(kv->type, kv->val, &n))
        return FB_EINVAL;
    return num_i64(&n, out);
}

int gguf_kv_u64(const gguf_kv *kv, uint64_t *out)
{
    num n;
    if (kv->type == GGUF_TYPE_ARRAY || kv->type == GGUF_TYPE_BOOL ||
        read_num(kv->type, kv->val, &n) || !n.is_int || n.is_neg)
        return FB_EINVAL;
    *out = n.u;
    return 0;
}

int gguf_kv_str(const gguf_kv *kv, const char **s, size_t *len)
{
    if (kv->type != GGUF_TYPE_STRING)
        return FB_EINVAL;
    *len = (size_t)le(kv->val, 8);
    *s = (const char *)kv->val + 8;
    return 0;
}

int gguf_get_u64(const gguf_file *f, const char *key, uint64_t *out)
{
    const gguf_kv *kv = gguf_find_kv(f, key);
    return kv ? gguf_kv_u64(kv, out) : FB_ENOENT;
}

int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out)
{
    uint64_t v;
    int rc = gguf_get_u64(f, key, &v);
    if (rc)
        return rc;
    if (v > UINT32_MAX)
        return FB_EINVAL;
    *out = (uint32_t)v;
    return 0;
}

int gguf_get_i32(const gguf_file *f, const char *key, int32_t *out)
{
    const gguf_kv *kv = gguf_find_kv(f, key);
    int64_t v;
    if (!kv)
        return FB_ENOENT;
    if (gguf_kv_i64(kv, &v) || v < INT32_MIN || v > INT32_MAX)
        return FB_EINVAL;
    *out = (int32_t)v;
    return 0;
}

int gguf_get_f32(const gguf_file *f, const char *key, float *out)
{
    const gguf_kv *kv = gguf_find_kv(f, key);
    double d;
    if (!kv)
        return FB_ENOENT;
    if ((kv->type != GGUF_TYPE_FLOAT32 && kv->type != GGUF_TYPE_FLOAT64) || gguf_kv_f64(kv, &d))
        return FB_EINVAL;
    *out = (float)d;
    return 0;
}

int gguf_get_bool(const gguf_file *f, const char *key, int *out)
{
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv)
        return FB_ENOENT;
    if (kv->type != GGUF_TYPE_BOOL)
        return FB_EINVAL;
    *out = kv->val[0] != 0;
    return 0;
}

int gguf_get_str(const gguf_file *f, const char *key, const char **s, size_t *len)
{
    const gguf_kv *kv = gguf_find_kv(f, key);
    return kv ? gguf_kv_str(kv, s, len) : FB_ENOENT;
}

int gguf_get_arr(const gguf_file *f, const char *key, const gguf_kv **kvp, uint32_t *elem_type,
                 uint64_t *n)
{
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv)
        return FB_ENOENT;
    if (kv->type != GGUF_TYPE_ARRAY)
        return FB_EINVAL;
    if (kvp)
        *kvp = kv;
    if (elem_type)
        *elem_type = kv->arr_type;
    if (n)
        *n = kv->arr_n;
    return 0;
}

int gguf_arr_str(const gguf_kv *kv, uint64_t i, const char **s, size_t *len)
{
    if (kv->type != GGUF_TYPE_ARRAY || kv->arr_type != GGUF_TYPE_STRING || i >= kv->arr_n)
        return FB_EINVAL;
    const uint8_t *p = kv->val + kv->str_off[i];
    *len = (size_t)le(p, 8);
    *s = (const char *)p + 8;
    return 0;
}

static int arr_num(const gguf_kv *kv, uint64_t i, num *n)
{
    if (kv->type != GGUF_TYPE_ARRAY || i >= kv->arr_n || gguf_type_size(kv->arr_type) <= 0)
        return FB_EINVAL;
    return read_num(kv->arr_type, kv->val + i * (uint64_t)gguf_type_size(kv->arr_type), n);
}

int gguf_arr_f64(const gguf_kv *kv, uint64_t i, double *out)
{
    num n;
    int rc = arr_num(kv, i, &n);
    if (!rc)
        *out = n.d;
    return rc;
}

int gguf_arr_i64(const gguf_kv *kv, uint64_t i, int64_t *out)
{
    num n;
    int rc = arr_num(kv, i, &n);
    return rc ? rc : num_i64(&n, out);
}
