/* gguf_writer.c - serialise key/values and tensor descriptors into a GGUF v3
 * file and write it atomically, streaming tensor data one tensor at a time. */
#include "gguf_writer.h"

#include "fb_error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_W_VERSION 3
#define GGUF_W_IOBUF (1u << 20) /* stdio buffer for the output file */

typedef struct wtensor {
    char *name;
    uint32_t type, n_dims;
    uint64_t ne[GGUF_MAX_DIMS];
    uint64_t nbytes;
    uint64_t offset; /* from the start of the data section, set by the write */
    const void *data;
    gguf_w_fill_fn fill;
    void *arg;
} wtensor;

typedef struct wbuf {
    uint8_t *p;
    size_t len, cap;
} wbuf;

struct gguf_w {
    wbuf kv; /* the serialised key/value section */
    char **keys;
    size_t n_kv, keys_cap;
    wtensor *t;
    size_t n_t, t_cap;
    uint32_t alignment;
    int err_code; /* first failed add, sticky */
    char errmsg[512];
    bool written;
};

int gguf_w_new(gguf_w **out)
{
    gguf_w *w = calloc(1, sizeof *w);
    if (!w)
        return FB_ENOMEM;
    w->alignment = GGUF_DEFAULT_ALIGNMENT;
    *out = w;
    return 0;
}

void gguf_w_free(gguf_w *w)
{
    if (!w)
        return;
    free(w->kv.p);
    for (size_t i = 0; i < w->n_kv; i++)
        free(w->keys[i]);
    free(w->keys);
    for (size_t i = 0; i < w->n_t; i++)
        free(w->t[i].name);
    free(w->t);
    free(w);
}

const char *gguf_w_errmsg(const gguf_w *w)
{
    return w->errmsg;
}

/* Remember the first failure; later adds return its code. */
__attribute__((format(printf, 3, 4))) static int fail(gguf_w *w, int code, const char *fmt, ...)
{
    if (w->err_code)
        return w->err_code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->errmsg, sizeof w->errmsg, fmt, ap);
    va_end(ap);
    w->err_code = code;
    return code;
}

/* ---- little-endian serialisation into a growing buffer ---- */

static int put(wbuf *b, const void *d, size_t n)
{
    if (n > SIZE_MAX / 2 - b->len)
        return FB_ENOMEM;
    if (b->len + n > b->cap) {
        size_t cap = (b->len + n) * 2 + 256;
        uint8_t *p = realloc(b->p, cap);
        if (!p)
            return FB_ENOMEM;
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, d, n);
    b->len += n;
    return 0;
}

static int put_u32(wbuf *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    return put(b, x, 4);
}

static int put_u64(wbuf *b, uint64_t v)
{
    int rc = put_u32(b, (uint32_t)v);
    return rc ? rc : put_u32(b, (uint32_t)(v >> 32));
}

static int put_str(wbuf *b, const char *s, size_t len)
{
    int rc = put_u64(b, len);
    return rc ? rc : put(b, s, len);
}

/* ---- key/values ---- */

/* Check the key and start its entry (key string and type); the caller
 * appends the value, then calls kv_end.  On failure kv_abort undoes it. */
static int kv_begin(gguf_w *w, const char *key, uint32_t type, size_t *mark)
{
    if (w->err_code)
        return w->err_code;
    if (!key || !*key)
        return fail(w, FB_EINVAL, "gguf writer: a key must not be empty");
    size_t len = strlen(key);
    if (len > GGUF_W_MAX_KEY)
        return fail(w, FB_EINVAL, "gguf writer: key '%.64s...' is %zu bytes (at most %d)", key, len,
                    GGUF_W_MAX_KEY);
    for (size_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->keys[i], key) == 0)
            return fail(w, FB_EINVAL, "gguf writer: key '%s' added twice", key);
    if (type != GGUF_TYPE_UINT32 && strcmp(key, "general.alignment") == 0)
        return fail(w, FB_EINVAL, "gguf writer: general.alignment must be a uint32, not %s",
                    gguf_type_name(type));
    if (w->n_kv >= GGUF_MAX_COUNT)
        return fail(w, FB_ETOOBIG, "gguf writer: more than %u key/values", GGUF_MAX_COUNT);
    if (w->n_kv == w->keys_cap) {
        size_t cap = w->keys_cap ? w->keys_cap * 2 : 32;
        char **k = realloc(w->keys, cap * sizeof *k);
        if (!k)
            return fail(w, FB_ENOMEM, "gguf writer: out of memory adding key '%s'", key);
        w->keys = k;
        w->keys_cap = cap;
    }
    *mark = w->kv.len;
    if (put_str(&w->kv, key, len) || put_u32(&w->kv, type)) {
        w->kv.len = *mark;
        return fail(w, FB_ENOMEM, "gguf writer: out of memory adding key '%s'", key);
    }
    return 0;
}

static int kv_end(gguf_w *w, const char *key, size_t mark, int rc)
{
    char *copy = NULL;
    if (rc == 0 && !(copy = strdup(key)))
        rc = FB_ENOMEM;
    if (rc) {
        w->kv.len = mark;
        return fail(w, rc, "gguf writer: cannot add key '%s': %s", key, fb_strerror(rc));
    }
    w->keys[w->n_kv++] = copy;
    return 0;
}

/* A scalar whose little-endian bytes are given. */
static int add_scalar(gguf_w *w, const char *key, uint32_t type, const void *le_bytes)
{
    size_t mark;
    int rc = kv_begin(w, key, type, &mark);
    if (rc)
        return rc;
    return kv_end(w, key, mark, put(&w->kv, le_bytes, (size_t)gguf_type_size(type)));
}

int gguf_w_add_str(gguf_w *w, const char *key, const char *s)
{
    size_t mark;
    int rc = kv_begin(w, key, GGUF_TYPE_STRING, &mark);
    if (rc)
        return rc;
    return kv_end(w, key, mark, put_str(&w->kv, s, strlen(s)));
}

int gguf_w_add_u32(gguf_w *w, const char *key, uint32_t v)
{
    bool align = !w->err_code && key && strcmp(key, "general.alignment") == 0;
    if (align && (v == 0 || (v & (v - 1))))
        return fail(w, FB_EINVAL, "gguf writer: general.alignment must be a power of two, not %u",
                    v);
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    int rc = add_scalar(w, key, GGUF_TYPE_UINT32, b);
    if (rc == 0 && align)
        w->alignment = v;
    return rc;
}

int gguf_w_add_i32(gguf_w *w, const char *key, int32_t v)
{
    uint32_t u = (uint32_t)v;
    uint8_t b[4] = {(uint8_t)u, (uint8_t)(u >> 8), (uint8_t)(u >> 16), (uint8_t)(u >> 24)};
    return add_scalar(w, key, GGUF_TYPE_INT32, b);
}

int gguf_w_add_f32(gguf_w *w, const char *key, float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    uint8_t b[4] = {(uint8_t)u, (uint8_t)(u >> 8), (uint8_t)(u >> 16), (uint8_t)(u >> 24)};
    return add_scalar(w, key, GGUF_TYPE_FLOAT32, b);
}

int gguf_w_add_bool(gguf_w *w, const char *key, bool v)
{
    uint8_t b = v ? 1 : 0;
    return add_scalar(w, key, GGUF_TYPE_BOOL, &b);
}

static int arr_head(gguf_w *w, const char *key, uint32_t elem, size_t n, size_t *mark)
{
    int rc = kv_begin(w, key, GGUF_TYPE_ARRAY, mark);
    if (rc)
        return rc;
    if ((rc = put_u32(&w->kv, elem)) || (rc = put_u64(&w->kv, n)))
        return kv_end(w, key, *mark, rc);
    return 0;
}

int gguf_w_add_arr_str(gguf_w *w, const char *key, const char *const *s, const size_t *lens,
                       size_t n)
{
    size_t mark;
    int rc = arr_head(w, key, GGUF_TYPE_STRING, n, &mark);
    if (rc)
        return rc;
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = put_str(&w->kv, s[i], lens ? lens[i] : strlen(s[i]));
    return kv_end(w, key, mark, rc);
}

int gguf_w_add_arr_f32(gguf_w *w, const char *key, const float *v, size_t n)
{
    size_t mark;
    int rc = arr_head(w, key, GGUF_TYPE_FLOAT32, n, &mark);
    if (rc)
        return rc;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        rc = put_u32(&w->kv, u);
    }
    return kv_end(w, key, mark, rc);
}

int gguf_w_add_arr_i32(gguf_w *w, const char *key, const int32_t *v, size_t n)
{
    size_t mark;
    int rc = arr_head(w, key, GGUF_TYPE_INT32, n, &mark);
    if (rc)
        return rc;
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = put_u32(&w->kv, (uint32_t)v[i]);
    return kv_end(w, key, mark, rc);
}

int gguf_w_copy_kv(gguf_w *w, const gguf_kv *kv)
{
    if (w->err_code)
        return w->err_code;
    if (kv->type == GGUF_TYPE_STRING) {
        const char *s;
        size_t len;
        size_t mark;
        int rc = gguf_kv_str(kv, &s, &len);
        if (rc)
            return fail(w, rc, "gguf writer: cannot read string key '%s'", kv->key);
        if ((rc = kv_begin(w, kv->key, GGUF_TYPE_STRING, &mark)))
            return rc;
        return kv_end(w, kv->key, mark, put_str(&w->kv, s, len));
    }
    if (kv->type == GGUF_TYPE_UINT32 && strcmp(kv->key, "general.alignment") == 0) {
        uint32_t v = (uint32_t)kv->val[0] | (uint32_t)kv->val[1] << 8 | (uint32_t)kv->val[2] << 16 |
                     (uint32_t)kv->val[3] << 24;
        return gguf_w_add_u32(w, kv->key, v);
    }
    if (kv->type != GGUF_TYPE_ARRAY) {
        if (gguf_type_size(kv->type) <= 0)
            return fail(w, FB_EINVAL, "gguf writer: key '%s' has unknown type %u", kv->key,
                        kv->type);
        /* the reader's value bytes are little-endian already */
        return add_scalar(w, kv->key, kv->type, kv->val);
    }
    size_t mark;
    int rc = arr_head(w, kv->key, kv->arr_type, kv->arr_n, &mark);
    if (rc)
        return rc;
    if (kv->arr_type == GGUF_TYPE_STRING) {
        for (uint64_t i = 0; rc == 0 && i < kv->arr_n; i++) {
            const char *s;
            size_t len;
            rc = gguf_arr_str(kv, i, &s, &len);
            if (rc == 0)
                rc = put_str(&w->kv, s, len);
        }
    } else {
        int es = gguf_type_size(kv->arr_type);
        if (es <= 0)
            rc = FB_EINVAL;
        else if (kv->arr_n > SIZE_MAX / (size_t)es)
            rc = FB_ENOMEM;
        else
            rc = put(&w->kv, kv->val, (size_t)kv->arr_n * (size_t)es);
    }
    return kv_end(w, kv->key, mark, rc);
}

/* ---- tensors ---- */

uint64_t gguf_w_tensor_nbytes(uint32_t type, uint32_t n_dims, const uint64_t *ne)
{
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return 0;
    uint64_t n = 1, bytes;
    for (uint32_t d = 0; d < n_dims; d++)
        if (ne[d] == 0 || __builtin_mul_overflow(n, ne[d], &n) || n > (uint64_t)INT64_MAX)
            return 0;
    switch (type) {
    case GGUF_TENSOR_F32:
        return __builtin_mul_overflow(n, 4, &bytes) ? 0 : bytes;
    case GGUF_TENSOR_F16:
        return __builtin_mul_overflow(n, 2, &bytes) ? 0 : bytes;
    case GGUF_TENSOR_Q8_0:
        if (ne[0] % 32)
            return 0;
        return __builtin_mul_overflow(n / 32, 34, &bytes) ? 0 : bytes;
    default:
        return 0;
    }
}

static int add_tensor(gguf_w *w, const char *name, uint32_t type, uint32_t n_dims,
                      const uint64_t *ne, uint64_t nbytes, const void *data, gguf_w_fill_fn fill,
                      void *arg)
{
    if (w->err_code)
        return w->err_code;
    if (!name || !*name)
        return fail(w, FB_EINVAL, "gguf writer: a tensor name must not be empty");
    if (strlen(name) > GGUF_W_MAX_TENSOR_NAME)
        return fail(w, FB_EINVAL, "gguf writer: tensor name '%s' is longer than %d bytes", name,
                    GGUF_W_MAX_TENSOR_NAME);
    for (size_t i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return fail(w, FB_EINVAL, "gguf writer: tensor '%s' added twice", name);
    if (type != GGUF_TENSOR_F32 && type != GGUF_TENSOR_F16 && type != GGUF_TENSOR_Q8_0)
        return fail(w, FB_EINVAL, "gguf writer: tensor '%s': type %u (%s) is not supported", name,
                    type, gguf_tensor_type_name(type));
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return fail(w, FB_EINVAL, "gguf writer: tensor '%s': %u dimensions (must be 1 to %d)", name,
                    n_dims, GGUF_MAX_DIMS);
    for (uint32_t d = 0; d < n_dims; d++)
        if (ne[d] == 0)
            return fail(w, FB_EINVAL, "gguf writer: tensor '%s': dimension %u is 0", name, d);
    if (type == GGUF_TENSOR_Q8_0 && ne[0] % 32)
        return fail(w, FB_EINVAL,
                    "gguf writer: tensor '%s': Q8_0 rows must be a multiple of 32 elements, not "
                    "%llu",
                    name, (unsigned long long)ne[0]);
    uint64_t want = gguf_w_tensor_nbytes(type, n_dims, ne);
    if (want == 0)
        return fail(w, FB_EINVAL, "gguf writer: tensor '%s': the size overflows", name);
    if (nbytes != want)
        return fail(w, FB_EINVAL,
                    "gguf writer: tensor '%s': %llu bytes given, but a %s tensor of this shape "
                    "holds %llu",
                    name, (unsigned long long)nbytes, gguf_tensor_type_name(type),
                    (unsigned long long)want);
    if (!data && !fill)
        return fail(w, FB_EINVAL, "gguf writer: tensor '%s': no data", name);
    if (w->n_t >= GGUF_MAX_COUNT)
        return fail(w, FB_ETOOBIG, "gguf writer: more than %u tensors", GGUF_MAX_COUNT);
    if (w->n_t == w->t_cap) {
        size_t cap = w->t_cap ? w->t_cap * 2 : 32;
        wtensor *t = realloc(w->t, cap * sizeof *t);
        if (!t)
            return fail(w, FB_ENOMEM, "gguf writer: out of memory adding tensor '%s'", name);
        w->t = t;
        w->t_cap = cap;
    }
    wtensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name)))
        return fail(w, FB_ENOMEM, "gguf writer: out of memory adding tensor '%s'", name);
    t->type = type;
    t->n_dims = n_dims;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++)
        t->ne[d] = d < n_dims ? ne[d] : 1;
    t->nbytes = nbytes;
    t->data = data;
    t->fill = fill;
    t->arg = arg;
    w->n_t++;
    return 0;
}

int gguf_w_add_tensor(gguf_w *w, const char *name, uint32_t type, uint32_t n_dims,
                      const uint64_t *ne, const void *data, uint64_t nbytes)
{
    if (!data && !w->err_code)
        return fail(w, FB_EINVAL, "gguf writer: tensor '%s': data is NULL", name ? name : "");
    return add_tensor(w, name, type, n_dims, ne, nbytes, data, NULL, NULL);
}

int gguf_w_add_tensor_fn(gguf_w *w, const char *name, uint32_t type, uint32_t n_dims,
                         const uint64_t *ne, uint64_t nbytes, gguf_w_fill_fn fill, void *arg)
{
    if (!fill && !w->err_code)
        return fail(w, FB_EINVAL, "gguf writer: tensor '%s': fill is NULL", name ? name : "");
    return add_tensor(w, name, type, n_dims, ne, nbytes, NULL, fill, arg);
}

/* ---- the write ---- */

static int errno_code(int e)
{
    switch (e) {
    case ENOENT:
    case ENOTDIR:
        return FB_ENOENT;
    case EACCES:
    case EPERM:
    case EROFS:
        return FB_EPERM;
    case EEXIST:
        return FB_EEXIST;
    case ENOMEM:
        return FB_ENOMEM;
    default:
        return FB_EIO;
    }
}

static uint64_t pad_to(uint64_t x, uint32_t align)
{
    return (align - x % align) % align;
}

/* Header, key/values and tensor infos, padded to the alignment; assigns the
 * tensors' data offsets. */
static int build_head(gguf_w *w, wbuf *h, uint64_t *data_bytes)
{
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        w->t[i].offset = off;
        off += w->t[i].nbytes;
        off += pad_to(off, w->alignment);
    }
    *data_bytes = off;
    int rc = put(h, "GGUF", 4);
    if (!rc)
        rc = put_u32(h, GGUF_W_VERSION);
    if (!rc)
        rc = put_u64(h, w->n_t);
    if (!rc)
        rc = put_u64(h, w->n_kv);
    if (!rc)
        rc = put(h, w->kv.p, w->kv.len);
    for (size_t i = 0; !rc && i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        rc = put_str(h, t->name, strlen(t->name));
        if (!rc)
            rc = put_u32(h, t->n_dims);
        for (uint32_t d = 0; !rc && d < t->n_dims; d++)
            rc = put_u64(h, t->ne[d]);
        if (!rc)
            rc = put_u32(h, t->type);
        if (!rc)
            rc = put_u64(h, t->offset);
    }
    static const uint8_t zero[256];
    if (!rc)
        rc = put(h, zero, (size_t)pad_to(h->len, w->alignment));
    return rc;
}

static int write_zeros(FILE *fp, uint64_t n)
{
    static const uint8_t zero[256];
    while (n) {
        size_t k = n < sizeof zero ? (size_t)n : sizeof zero;
        if (fwrite(zero, 1, k, fp) != k)
            return -1;
        n -= k;
    }
    return 0;
}

/* Stream the data section: borrowed tensors directly, produced ones through
 * one scratch buffer sized for the largest of them. */
static int write_data(gguf_w *w, FILE *fp, const char *tmp, char *err, size_t errlen)
{
    uint64_t scratch_len = 0;
    for (size_t i = 0; i < w->n_t; i++)
        if (w->t[i].fill && w->t[i].nbytes > scratch_len)
            scratch_len = w->t[i].nbytes;
    if (scratch_len > SIZE_MAX)
        return fb_errf(err, errlen, FB_ENOMEM, "%s: a tensor is too large for memory", tmp);
    void *scratch = NULL;
    if (scratch_len && !(scratch = malloc((size_t)scratch_len)))
        return fb_errf(err, errlen, FB_ENOMEM,
                       "out of memory for a %llu-byte tensor buffer while writing %s",
                       (unsigned long long)scratch_len, tmp);
    int rc = 0;
    for (size_t i = 0; !rc && i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        const void *src = t->data;
        if (t->fill) {
            rc = t->fill(t->arg, scratch, t->nbytes, err, errlen);
            if (rc)
                break;
            src = scratch;
        }
        if (fwrite(src, 1, (size_t)t->nbytes, fp) != t->nbytes ||
            write_zeros(fp, pad_to(t->offset + t->nbytes, w->alignment)))
            rc = fb_errf(err, errlen, errno_code(errno), "%s: write failed: %s", tmp,
                         strerror(errno));
    }
    free(scratch);
    return rc;
}

/* Make the rename durable; some filesystems cannot fsync a directory, which
 * is not worth failing a finished write for. */
static void sync_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir)
        return;
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(dir);
}

/* Move tmp to path: rename when overwriting, else link (which fails if path
 * exists, with no window between a check and the move), falling back to a
 * check and rename on filesystems without hard links. */
static int publish(const char *tmp, const char *path, unsigned flags, char *err, size_t errlen)
{
    if (!(flags & GGUF_W_OVERWRITE)) {
        if (link(tmp, path) == 0) {
            unlink(tmp);
            return 0;
        }
        int e = errno;
        if (e == EEXIST)
            return fb_errf(err, errlen, FB_EEXIST, "refusing to overwrite %s (it exists)", path);
        if (e != EPERM && e != ENOTSUP && e != ENOSYS && e != EMLINK)
            return fb_errf(err, errlen, errno_code(e), "%s: cannot create: %s", path, strerror(e));
        struct stat st;
        if (lstat(path, &st) == 0)
            return fb_errf(err, errlen, FB_EEXIST, "refusing to overwrite %s (it exists)", path);
    }
    if (rename(tmp, path) != 0)
        return fb_errf(err, errlen, errno_code(errno), "%s: cannot rename %s into place: %s", path,
                       tmp, strerror(errno));
    return 0;
}

int gguf_w_write(gguf_w *w, const char *path, unsigned flags, uint64_t *size, char *err,
                 size_t errlen)
{
    if (w->err_code)
        return fb_errf(err, errlen, w->err_code, "%s: %s", path, w->errmsg);
    if (w->written)
        return fb_errf(err, errlen, FB_ESTATE, "%s: this gguf writer has already written", path);
    w->written = true;
    struct stat st;
    if (!(flags & GGUF_W_OVERWRITE) && lstat(path, &st) == 0)
        return fb_errf(err, errlen, FB_EEXIST, "refusing to overwrite %s (it exists)", path);

    wbuf head = {0};
    uint64_t data_bytes;
    if (build_head(w, &head, &data_bytes)) {
        free(head.p);
        return fb_errf(err, errlen, FB_ENOMEM, "%s: out of memory building the header", path);
    }
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    if (!tmp) {
        free(head.p);
        return fb_errf(err, errlen, FB_ENOMEM, "%s: out of memory", path);
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp-XXXXXX", 12);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int e = errno;
        free(head.p);
        free(tmp);
        return fb_errf(err, errlen, errno_code(e), "%s: cannot create a file in its directory: %s",
                       path, strerror(e));
    }
    /* mkstemp makes 0600; a model file is not secret */
    (void)fchmod(fd, 0644);
    int rc = 0;
    FILE *fp = fdopen(fd, "wb");
    if (!fp) {
        rc = fb_errf(err, errlen, errno_code(errno), "%s: %s", tmp, strerror(errno));
        close(fd);
    } else {
        setvbuf(fp, NULL, _IOFBF, GGUF_W_IOBUF);
        if (fwrite(head.p, 1, head.len, fp) != head.len)
            rc = fb_errf(err, errlen, errno_code(errno), "%s: write failed: %s", tmp,
                         strerror(errno));
        if (!rc)
            rc = write_data(w, fp, tmp, err, errlen);
        if (!rc && (fflush(fp) != 0 || fsync(fileno(fp)) != 0))
            rc = fb_errf(err, errlen, errno_code(errno), "%s: write failed: %s", tmp,
                         strerror(errno));
        if (fclose(fp) != 0 && !rc)
            rc = fb_errf(err, errlen, errno_code(errno), "%s: close failed: %s", tmp,
                         strerror(errno));
    }
    if (!rc)
        rc = publish(tmp, path, flags, err, errlen);
    if (rc)
        unlink(tmp);
    else
        sync_dir(path);
    if (!rc && size)
        *size = head.len + data_bytes;
    free(head.p);
    free(tmp);
    return rc;
}
