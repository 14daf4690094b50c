/* config.c - load, validate and write cluster.json and node.json (config.h).
 *
 * Parsing goes JSON object -> plain struct through small table-driven
 * helpers, so every message has the same shape: "FILE: FIELD: what is wrong
 * (how to fix it)".  The writers run the same parser over what they are about
 * to write, so a file `fedbft cluster init` produces always loads. */
#include "config.h"

#include "fb_error.h"
#include "keys.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <sodium.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A config file larger than this is not a config file (cluster.json with
 * thousands of clients is still well under a megabyte). */
#define CFG_FILE_MAX (16u << 20)
#define FIELD_MAX 96

#define HINT_KEY "the 64 hex digits printed by 'fedbft keygen' or 'fedbft keyinfo KEYFILE'"
#define HINT_PORT "a TCP port, 1..65535"

/* Where messages go and which file they name. */
typedef struct pctx {
    const char *file;
    char *err;
    size_t errlen;
} pctx;

static int fail(const pctx *p, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(const pctx *p, const char *field, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (field && *field)
        return fb_errf(p->err, p->errlen, FB_EINVAL, "%s: %s: %s", p->file, field, msg);
    return fb_errf(p->err, p->errlen, FB_EINVAL, "%s: %s", p->file, msg);
}

/* "replicas[2]" + "port" -> "replicas[2].port"; "" + "id" -> "id". */
static void field_name(char *buf, size_t cap, const char *prefix, const char *key)
{
    if (prefix && *prefix)
        snprintf(buf, cap, "%s.%s", prefix, key);
    else
        snprintf(buf, cap, "%s", key);
}

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "a whole number";
    case JSON_REAL:
        return "a number with a fraction";
    case JSON_TRUE:
    case JSON_FALSE:
        return "true/false";
    default:
        return "null";
    }
}

/* ------------------------------------------------------------ reading */

/* Read and parse a JSON file whose top level must be an object.  File
 * problems are FB_ENOENT/FB_EIO, content problems FB_EINVAL. */
static int read_json_object(const char *path, const char *what, json_t **out, char *err,
                            size_t errlen)
{
    FILE *fp = fopen(path, "rbe");
    if (!fp) {
        if (errno == ENOENT)
            return fb_errf(err, errlen, FB_ENOENT,
                           "%s: no such file (check the path; 'fedbft cluster init' writes a "
                           "%s for a test cluster)",
                           path, what);
        return fb_errf(err, errlen, FB_EIO, "%s: cannot open: %s", path, strerror(errno));
    }
    struct stat st;
    int rc = 0;
    if (fstat(fileno(fp), &st) != 0)
        rc = fb_errf(err, errlen, FB_EIO, "%s: cannot stat: %s", path, strerror(errno));
    else if (!S_ISREG(st.st_mode))
        rc = fb_errf(err, errlen, FB_EIO, "%s: not a regular file (expected a %s)", path, what);
    else if ((unsigned long long)st.st_size > CFG_FILE_MAX)
        rc = fb_errf(err, errlen, FB_EINVAL, "%s: %lld bytes is too large for a %s (limit %u)",
                     path, (long long)st.st_size, what, CFG_FILE_MAX);
    json_t *root = NULL;
    if (rc == 0) {
        json_error_t jerr;
        /* Duplicate keys are rejected: with two "port"s, which one wins? */
        root = json_loadf(fp, JSON_REJECT_DUPLICATES, &jerr);
        if (!root)
            rc = fb_errf(err, errlen, FB_EINVAL, "%s:%d:%d: invalid JSON: %s", path, jerr.line,
                         jerr.column, jerr.text);
        else if (!json_is_object(root))
            rc = fb_errf(err, errlen, FB_EINVAL,
                         "%s: the top level must be a JSON object { ... }, not %s", path,
                         json_kind(root));
    }
    fclose(fp);
    if (rc != 0) {
        json_decref(root);
        return rc;
    }
    *out = root;
    return 0;
}

/* Every key of obj must be in allowed (NULL-terminated): a typo such as
 * "chekpoint_interval" must not silently leave the default in force. */
static int check_fields(const pctx *p, json_t *obj, const char *prefix, const char *const *allowed)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        size_t i = 0;
        while (allowed[i] && strcmp(allowed[i], key) != 0)
            i++;
        if (allowed[i])
            continue;
        char list[512] = "", name[FIELD_MAX];
        size_t used = 0;
        for (i = 0; allowed[i] && used < sizeof list; i++)
            used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "",
                                     allowed[i]);
        field_name(name, sizeof name, prefix, key);
        return fail(p, name, "unknown field (allowed here: %s); fix the spelling or remove it",
                    list);
    }
    return 0;
}

/* An unsigned integer in [min, max].  An absent optional field leaves *out
 * as it was (the default). */
static int get_uint(const pctx *p, json_t *obj, const char *prefix, const char *key, bool required,
                    uint64_t min, uint64_t max, const char *hint, uint64_t *out)
{
    char name[FIELD_MAX];
    field_name(name, sizeof name, prefix, key);
    json_t *v = json_object_get(obj, key);
    if (!v)
        return required ? fail(p, name, "missing (add \"%s\": %s)", key, hint) : 0;
    if (!json_is_integer(v))
        return fail(p, name, "must be a whole number, not %s (%s)", json_kind(v), hint);
    json_int_t x = json_integer_value(v);
    if (x < 0 || (uint64_t)x < min || (uint64_t)x > max)
        return fail(p, name, "%lld is out of range (must be %llu..%llu)", (long long)x,
                    (unsigned long long)min, (unsigned long long)max);
    *out = (uint64_t)x;
    return 0;
}

/* A string that fits in cap bytes with its NUL.  Absent optional fields leave
 * out as it was. */
static int get_string(const pctx *p, json_t *obj, const char *prefix, const char *key,
                      bool required, bool allow_empty, char *out, size_t cap, const char *hint)
{
    char name[FIELD_MAX];
    field_name(name, sizeof name, prefix, key);
    json_t *v = json_object_get(obj, key);
    if (!v)
        return required ? fail(p, name, "missing (add \"%s\": %s)", key, hint) : 0;
    if (!json_is_string(v))
        return fail(p, name, "must be a string, not %s (%s)", json_kind(v), hint);
    size_t len = json_string_length(v);
    if (len == 0 && !allow_empty)
        return fail(p, name, "must not be empty (%s)", hint);
    if (len >= cap)
        return fail(p, name, "too long: %zu bytes, at most %zu", len, cap - 1);
    memcpy(out, json_string_value(v), len + 1);
    return 0;
}

/* A JSON boolean.  An absent field leaves *out as it was (the default). */
static int get_bool(const pctx *p, json_t *obj, const char *key, bool *out, const char *hint)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return 0;
    if (!json_is_boolean(v))
        return fail(p, key, "must be true or false, not %s (%s)", json_kind(v), hint);
    *out = json_is_true(v);
    return 0;
}

/* A host name or address: only the characters names and IPv4/IPv6
 * addresses use (it becomes a socket address, and a stray space or quote
 * would only fail much later, at bind or connect time). */
int cfg_check_host(const char *host, char *err, size_t errlen)
{
    if (!*host)
        return fb_errf(err, errlen, FB_EINVAL,
                       "empty; give a host name or address such as \"127.0.0.1\"");
    if (strlen(host) >= CFG_HOST_MAX)
        return fb_errf(err, errlen, FB_EINVAL, "too long: %zu bytes, at most %d", strlen(host),
                       CFG_HOST_MAX - 1);
    size_t bad =
        strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:_%");
    if (host[bad])
        return fb_errf(err, errlen, FB_EINVAL,
                       "\"%s\" is not a host name or address (character %zu); use e.g. "
                       "\"127.0.0.1\", \"::1\" or \"node1.example.org\"",
                       host, bad + 1);
    return 0;
}

static int get_host(const pctx *p, json_t *obj, const char *prefix, const char *key, bool required,
                    bool allow_empty, char *out)
{
    int rc = get_string(p, obj, prefix, key, required, allow_empty, out, CFG_HOST_MAX,
                        "an address such as \"127.0.0.1\"");
    if (rc || !*out)
        return rc;
    char msg[512];
    if (cfg_check_host(out, msg, sizeof msg) != 0) {
        char name[FIELD_MAX];
        field_name(name, sizeof name, prefix, key);
        return fail(p, name, "%s", msg);
    }
    return 0;
}

static int get_pubkey(const pctx *p, json_t *obj, const char *prefix, uint8_t pk[FB_PK_LEN])
{
    char name[FIELD_MAX];
    field_name(name, sizeof name, prefix, "public_key");
    json_t *v = json_object_get(obj, "public_key");
    if (!v)
        return fail(p, name, "missing (add \"public_key\": %s)", HINT_KEY);
    if (!json_is_string(v))
        return fail(p, name, "must be a string, not %s (%s)", json_kind(v), HINT_KEY);
    if (fb_pubkey_parse(json_string_value(v), pk) != 0)
        return fail(p, name, "not 64 hex digits (%s)", HINT_KEY);
    return 0;
}

/* ------------------------------------------------------------ cluster.json */

static const char *const cluster_fields[] = {"replicas", "clients", "model_digest", NULL};
static const char *const replica_fields[] = {"id",          "host",       "port",
                                             "client_port", "public_key", NULL};
static const char *const client_fields[] = {"id", "name", "public_key", NULL};

static int parse_replica(const pctx *p, json_t *o, size_t idx, size_t n, cfg_replica *r)
{
    char pre[32];
    snprintf(pre, sizeof pre, "replicas[%zu]", idx);
    if (!json_is_object(o))
        return fail(p, pre, "must be an object {\"id\": ..., \"host\": ..., ...}, not %s",
                    json_kind(o));
    uint64_t id = 0, port = 0, cport = 0;
    int rc = check_fields(p, o, pre, replica_fields);
    if (!rc)
        rc = get_uint(p, o, pre, "id", true, 0, UINT32_MAX, "the replica id, 0..n-1", &id);
    if (!rc && id >= n) {
        char name[FIELD_MAX];
        field_name(name, sizeof name, pre, "id");
        return fail(p, name,
                    "%llu is out of range: with %zu replicas listed the ids must be exactly "
                    "0..%zu, each once",
                    (unsigned long long)id, n, n - 1);
    }
    if (!rc)
        rc = get_host(p, o, pre, "host", true, false, r->host);
    if (!rc)
        rc = get_uint(p, o, pre, "port", true, 1, 65535, HINT_PORT, &port);
    if (!rc)
        rc = get_uint(p, o, pre, "client_port", true, 1, 65535, HINT_PORT, &cport);
    if (!rc && port == cport) {
        char name[FIELD_MAX];
        field_name(name, sizeof name, pre, "client_port");
        return fail(p, name, "%llu is also this replica's port; use a different port",
                    (unsigned long long)cport);
    }
    if (!rc)
        rc = get_pubkey(p, o, pre, r->pk);
    r->id = (uint32_t)id;
    r->port = (uint16_t)port;
    r->client_port = (uint16_t)cport;
    return rc;
}

/* Two replicas on the same host cannot listen on the same port.  (Hosts are
 * compared as written: "localhost" and "127.0.0.1" are not matched.) */
static int check_port_clash(const pctx *p, const cfg_replica *a, size_t ia, const cfg_replica *b,
                            size_t ib)
{
    const uint16_t pa[2] = {a->port, a->client_port}, pb[2] = {b->port, b->client_port};
    static const char *const names[2] = {"port", "client_port"};
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            if (pa[i] == pb[j]) {
                char name[FIELD_MAX];
                snprintf(name, sizeof name, "replicas[%zu].%s", ib, names[j]);
                return fail(p, name,
                            "port %u on host %s is already used by replicas[%zu].%s; every "
                            "port on one host must be different",
                            pb[j], b->host, ia, names[i]);
            }
    return 0;
}

static int parse_replicas(const pctx *p, json_t *root, cfg_replica **out, uint32_t *nout)
{
    json_t *arr = json_object_get(root, "replicas");
    if (!arr)
        return fail(p, "replicas", "missing (add \"replicas\": [ {\"id\": 0, ...}, ... ])");
    if (!json_is_array(arr))
        return fail(p, "replicas", "must be an array of replica objects, not %s", json_kind(arr));
    size_t n = json_array_size(arr);
    if (n < 4)
        return fail(p, "replicas",
                    "%zu replica(s) listed; PBFT needs at least 4 (n = 3f+1 tolerates f faulty)",
                    n);
    if (n > UINT32_MAX)
        return fail(p, "replicas", "too many replicas");
    /* Parsed in file order; placed by id once the ids are known to be a
     * permutation of 0..n-1. */
    cfg_replica *tmp = calloc(n, sizeof *tmp), *byid = calloc(n, sizeof *byid);
    size_t *where = calloc(n, sizeof *where); /* file index + 1 of each id */
    int rc = (tmp && byid && where) ? 0 : fb_errf(p->err, p->errlen, FB_ENOMEM, "out of memory");
    for (size_t i = 0; !rc && i < n; i++) {
        rc = parse_replica(p, json_array_get(arr, i), i, n, &tmp[i]);
        if (!rc && where[tmp[i].id]) {
            char name[FIELD_MAX];
            snprintf(name, sizeof name, "replicas[%zu].id", i);
            rc = fail(p, name,
                      "replica id %u is listed twice (also replicas[%zu]); ids must be exactly "
                      "0..%zu, each once",
                      tmp[i].id, where[tmp[i].id] - 1, n - 1);
        }
        if (!rc)
            where[tmp[i].id] = i + 1;
    }
    for (size_t i = 0; !rc && i < n; i++)
        for (size_t j = i + 1; !rc && j < n; j++)
            if (strcmp(tmp[i].host, tmp[j].host) == 0)
                rc = check_port_clash(p, &tmp[i], i, &tmp[j], j);
    for (size_t i = 0; !rc && i < n; i++)
        byid[tmp[i].id] = tmp[i];
    free(tmp);
    free(where);
    if (rc) {
        free(byid);
        return rc;
    }
    *out = byid;
    *nout = (uint32_t)n;
    return 0;
}

static int parse_client(const pctx *p, json_t *o, size_t idx, cfg_client *c)
{
    char pre[32];
    snprintf(pre, sizeof pre, "clients[%zu]", idx);
    if (!json_is_object(o))
        return fail(p, pre, "must be an object {\"id\": ..., \"public_key\": ...}, not %s",
                    json_kind(o));
    uint64_t id = 0;
    int rc = check_fields(p, o, pre, client_fields);
    if (!rc)
        rc = get_uint(p, o, pre, "id", true, 0, UINT32_MAX, "a client id, any 32-bit number", &id);
    if (!rc)
        rc = get_string(p, o, pre, "name", false, true, c->name, sizeof c->name,
                        "a label such as \"alice\"");
    if (!rc)
        rc = get_pubkey(p, o, pre, c->pk);
    c->id = (uint32_t)id;
    return rc;
}

typedef struct idref {
    uint64_t id;
    size_t idx;
} idref;

static int idref_cmp(const void *a, const void *b)
{
    const idref *x = a, *y = b;
    if (x->id != y->id)
        return x->id < y->id ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* Client ids must be distinct: replies are matched to clients by id.
 * Sorting keeps this O(m log m) for clusters with many clients. */
static int check_client_ids(const pctx *p, const cfg_client *cl, size_t m)
{
    if (m < 2)
        return 0;
    idref *refs = calloc(m, sizeof *refs);
    if (!refs)
        return fb_errf(p->err, p->errlen, FB_ENOMEM, "out of memory");
    for (size_t i = 0; i < m; i++)
        refs[i] = (idref){cl[i].id, i};
    qsort(refs, m, sizeof *refs, idref_cmp);
    int rc = 0;
    for (size_t i = 1; !rc && i < m; i++)
        if (refs[i].id == refs[i - 1].id) {
            char name[FIELD_MAX];
            snprintf(name, sizeof name, "clients[%zu].id", refs[i].idx);
            rc = fail(p, name,
                      "client id %llu is listed twice (also clients[%zu]); give each "
                      "client its own id",
                      (unsigned long long)refs[i].id, refs[i - 1].idx);
        }
    free(refs);
    return rc;
}

typedef struct keyref {
    const uint8_t *pk;
    size_t idx; /* replicas first, then clients */
} keyref;

static int keyref_cmp(const void *a, const void *b)
{
    const keyref *x = a, *y = b;
    int c = memcmp(x->pk, y->pk, FB_PK_LEN);
    if (c)
        return c;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

static void keyref_name(size_t idx, uint32_t n, char *buf, size_t cap)
{
    if (idx < n)
        snprintf(buf, cap, "replicas[%zu]", idx);
    else
        snprintf(buf, cap, "clients[%zu]", idx - n);
}

/* Every replica and client needs its own key: the key is how a peer is
 * recognised, so two entries sharing one would be indistinguishable. */
static int check_unique_keys(const pctx *p, const cfg_replica *byid, uint32_t n,
                             const cfg_client *cl, uint32_t m)
{
    size_t total = (size_t)n + m;
    keyref *refs = calloc(total, sizeof *refs);
    if (!refs)
        return fb_errf(p->err, p->errlen, FB_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        refs[i] = (keyref){byid[i].pk, i};
    for (size_t i = 0; i < m; i++)
        refs[n + i] = (keyref){cl[i].pk, n + i};
    qsort(refs, total, sizeof *refs, keyref_cmp);
    int rc = 0;
    for (size_t i = 1; !rc && i < total; i++)
        if (memcmp(refs[i].pk, refs[i - 1].pk, FB_PK_LEN) == 0) {
            char a[32], b[32], name[FIELD_MAX];
            keyref_name(refs[i - 1].idx, n, a, sizeof a);
            keyref_name(refs[i].idx, n, b, sizeof b);
            snprintf(name, sizeof name, "%s.public_key", b);
            rc = fail(p, name,
                      "same key as %s; every replica and client needs its own identity "
                      "(make one with 'fedbft keygen --out DIR')",
                      a);
        }
    free(refs);
    return rc;
}

static int parse_clients(const pctx *p, json_t *root, cfg_client **out, uint32_t *mout)
{
    json_t *arr = json_object_get(root, "clients");
    *out = NULL;
    *mout = 0;
    if (!arr) /* a cluster nobody may use yet is still a valid cluster */
        return 0;
    if (!json_is_array(arr))
        return fail(p, "clients", "must be an array of client objects, not %s", json_kind(arr));
    size_t m = json_array_size(arr);
    if (m == 0)
        return 0;
    if (m > UINT32_MAX)
        return fail(p, "clients", "too many clients");
    cfg_client *cl = calloc(m, sizeof *cl);
    if (!cl)
        return fb_errf(p->err, p->errlen, FB_ENOMEM, "out of memory");
    int rc = 0;
    for (size_t i = 0; !rc && i < m; i++)
        rc = parse_client(p, json_array_get(arr, i), i, &cl[i]);
    if (!rc)
        rc = check_client_ids(p, cl, m);
    if (rc) {
        free(cl);
        return rc;
    }
    *out = cl;
    *mout = (uint32_t)m;
    return 0;
}

static int parse_cluster(const pctx *p, json_t *root, cfg_cluster *out)
{
    cfg_cluster c = {0};
    int rc = check_fields(p, root, "", cluster_fields);
    if (!rc)
        rc = parse_replicas(p, root, &c.replicas, &c.n);
    if (!rc)
        rc = parse_clients(p, root, &c.clients, &c.nclients);
    if (!rc)
        rc = check_unique_keys(p, c.replicas, c.n, c.clients, c.nclients);
    json_t *md = json_object_get(root, "model_digest");
    if (!rc && md) {
        size_t bin_len = 0;
        if (!json_is_string(md) || json_string_length(md) != 32 ||
            sodium_hex2bin(c.model_digest, sizeof c.model_digest, json_string_value(md), 32, NULL,
                           &bin_len, NULL) != 0 ||
            bin_len != 16)
            rc = fail(p, "model_digest",
                      "must be 32 hex digits: the XXH3-128 digest of the model every replica "
                      "serves (fedbft model info prints it)");
        c.has_model_digest = rc == 0;
    }
    if (rc) {
        cfg_cluster_free(&c);
        return rc;
    }
    c.f = (c.n - 1) / 3;
    *out = c;
    return 0;
}

int cfg_cluster_load(const char *path, cfg_cluster *out, char *err, size_t errlen)
{
    json_t *root;
    int rc = read_json_object(path, "cluster.json", &root, err, errlen);
    if (rc)
        return rc;
    pctx p = {path, err, errlen};
    rc = parse_cluster(&p, root, out);
    json_decref(root);
    return rc;
}

void cfg_cluster_free(cfg_cluster *c)
{
    if (!c)
        return;
    free(c->replicas);
    free(c->clients);
    memset(c, 0, sizeof *c);
}

const cfg_client *cfg_find_client(const cfg_cluster *c, uint32_t id)
{
    for (uint32_t i = 0; c && i < c->nclients; i++)
        if (c->clients[i].id == id)
            return &c->clients[i];
    return NULL;
}

/* ------------------------------------------------------------ node.json */

/* The numeric knobs, with their bounds.  The bounds keep values sane (a
 * 0 ms timeout or a 0-byte frame limit can only be a mistake) and match
 * what pbft_config_check accepts (log_window <= 65536). */
typedef struct knob {
    const char *name;
    size_t off, size; /* a uint32_t or uint64_t in cfg_node */
    uint64_t min, max;
} knob;

#define KNOB(f, lo, hi)                                                                            \
    {                                                                                              \
#f, offsetof(cfg_node, f), sizeof(((cfg_node *)0)->f), lo, hi                              \
    }
static const knob knobs[] = {
    KNOB(batch_max_requests, 1, 1u << 16),
    KNOB(batch_max_bytes, 1, 1u << 30),
    KNOB(batch_max_delay_ms, 1, 10000),
    KNOB(checkpoint_interval, 1, 1u << 15),
    KNOB(log_window, 2, 1u << 16),
    KNOB(request_timeout_ms, 10, 3600000),
    KNOB(view_change_timeout_ms, 10, 3600000),
    KNOB(worker_threads, 0, 1024),
    KNOB(max_frame, 4096, 1u << 30),
    KNOB(send_queue_bytes, 4096, 1ull << 40),
};
#define NKNOBS (sizeof knobs / sizeof knobs[0])

static const char *const node_fields[] = {"id",
                                          "cluster",
                                          "key",
                                          "data_dir",
                                          "listen",
                                          "batch_max_requests",
                                          "batch_max_bytes",
                                          "batch_max_delay_ms",
                                          "checkpoint_interval",
                                          "log_window",
                                          "request_timeout_ms",
                                          "view_change_timeout_ms",
                                          "worker_threads",
                                          "durability",
                                          "max_frame",
                                          "send_queue_bytes",
                                          "log_level",
                                          "fault_injection",
                                          "http_port",
                                          "log_file",
                                          "inference",
                                          "verify",
                                          "sig_cache",
                                          "digest_cache",
                                          NULL};

static const char *const log_levels[] = {"error", "warn", "info", "debug", NULL};

/* node.json "inference" knobs, bounded like the others. */
#define IKNOB(f, lo, hi)                                                                           \
    {                                                                                              \
#f, offsetof(cfg_inference, f), sizeof(((cfg_inference *)0)->f), lo, hi                    \
    }
static const knob inference_knobs[] = {
    IKNOB(threads, 1, 256),
    IKNOB(nice, 0, 19),
    IKNOB(max_batch, 1, 256),
    IKNOB(max_queue, 1, 1u << 16),
    IKNOB(max_queue_delay_ms, 0, 10000),
    IKNOB(prefill_chunk, 1, 4096),
    IKNOB(max_tokens, 1, 1u << 16),
    IKNOB(n_ctx, 0, 1u << 20),
    IKNOB(deadline_ms, 10, 3600000),
    IKNOB(cache_entries, 0, 1u << 24),
    IKNOB(cache_bytes, 0, 1ull << 40),
    IKNOB(cache_ttl_ms, 1, 1u << 31),
    IKNOB(rate_per_s, 0, 1u << 20),
    IKNOB(rate_burst, 1, 1u << 20),
};
#define NIKNOBS (sizeof inference_knobs / sizeof inference_knobs[0])
static const char *const inference_fields[] = {
    "model",       "threads",      "sched_idle",         "nice",
    "max_batch",   "max_queue",    "max_queue_delay_ms", "prefill_chunk",
    "max_tokens",  "n_ctx",        "deadline_ms",        "cache_entries",
    "cache_bytes", "cache_ttl_ms", "rate_per_s",         "rate_burst",
    NULL};

/* A knob's value in the struct at obj (a cfg_node or a cfg_inference). */
static uint64_t knob_get(const void *obj, const knob *k)
{
    const char *base = (const char *)obj + k->off;
    if (k->size == sizeof(uint32_t)) {
        uint32_t v;
        memcpy(&v, base, sizeof v);
        return v;
    }
    uint64_t v;
    memcpy(&v, base, sizeof v);
    return v;
}

static void knob_set(void *obj, const knob *k, uint64_t v)
{
    char *base = (char *)obj + k->off;
    if (k->size == sizeof(uint32_t)) {
        uint32_t v32 = (uint32_t)v; /* bounds above keep it in range */
        memcpy(base, &v32, sizeof v32);
    } else {
        memcpy(base, &v, sizeof v);
    }
}

void cfg_node_defaults(cfg_node *n)
{
    memset(n, 0, sizeof *n);
    n->batch_max_requests = 64;
    n->batch_max_bytes = 262144;
    n->batch_max_delay_ms = 2;
    n->checkpoint_interval = 16;
    n->log_window = 64;
    n->request_timeout_ms = 2000;
    n->view_change_timeout_ms = 2000;
    n->worker_threads = 0;
    n->durability = CFG_DURABILITY_FSYNC;
    n->max_frame = 4194304;
    n->send_queue_bytes = 16777216;
    snprintf(n->log_level, sizeof n->log_level, "info");
    n->verify = CFG_VERIFY_BATCH;
    n->sig_cache = true;
    n->digest_cache = true;
    cfg_inference *in = &n->inference;
    in->threads = 2;
    in->nice = 5;
    in->sched_idle = true;
    in->max_batch = 8;
    in->max_queue = 64;
    in->max_queue_delay_ms = 5;
    in->prefill_chunk = 64;
    in->max_tokens = 512;
    in->n_ctx = 2048;
    in->deadline_ms = 120000;
    in->cache_entries = 1024;
    in->cache_bytes = 16u << 20;
    in->cache_ttl_ms = 600000;
    in->rate_per_s = 0;
    in->rate_burst = 20;
}

static const char *durability_name(cfg_durability d)
{
    return d == CFG_DURABILITY_OS ? "os" : "fsync";
}

static const char *verify_name(cfg_verify v)
{
    return v == CFG_VERIFY_INLINE ? "inline" : "batch";
}

/* The benchmark switches (config.h): each turns one mechanism off. */
static int parse_switches(const pctx *p, json_t *root, cfg_node *n)
{
    char mode[16] = "";
    int rc = get_string(p, root, "", "verify", false, false, mode, sizeof mode,
                        "\"batch\" or \"inline\"");
    if (!rc && *mode) {
        if (strcmp(mode, "batch") == 0)
            n->verify = CFG_VERIFY_BATCH;
        else if (strcmp(mode, "inline") == 0)
            n->verify = CFG_VERIFY_INLINE;
        else
            return fail(p, "verify",
                        "\"%s\" is not a verification mode; use \"batch\" (signatures checked "
                        "in parallel on worker threads, the default) or \"inline\" (one by one on "
                        "the event loop, for benchmarks)",
                        mode);
    }
    if (!rc)
        rc = get_bool(p, root, "sig_cache", &n->sig_cache,
                      "true (default) remembers verified signatures; false checks every one");
    if (!rc)
        rc = get_bool(p, root, "digest_cache", &n->digest_cache,
                      "true (default) reuses a known request's digest; false recomputes it");
    return rc;
}

static int parse_enums(const pctx *p, json_t *root, cfg_node *n)
{
    char dur[16] = "";
    int rc =
        get_string(p, root, "", "durability", false, false, dur, sizeof dur, "\"fsync\" or \"os\"");
    if (!rc && *dur) {
        if (strcmp(dur, "fsync") == 0)
            n->durability = CFG_DURABILITY_FSYNC;
        else if (strcmp(dur, "os") == 0)
            n->durability = CFG_DURABILITY_OS;
        else
            return fail(p, "durability",
                        "\"%s\" is not a durability mode; use \"fsync\" (survives power loss) "
                        "or \"os\" (survives a process crash only)",
                        dur);
    }
    if (!rc)
        rc = get_string(p, root, "", "log_level", false, false, n->log_level, sizeof n->log_level,
                        "one of \"error\", \"warn\", \"info\", \"debug\"");
    size_t i = 0;
    while (log_levels[i] && strcmp(log_levels[i], n->log_level) != 0)
        i++;
    if (!rc && !log_levels[i])
        return fail(p, "log_level",
                    "\"%s\" is not a log level; use \"error\", \"warn\", \"info\" or \"debug\"",
                    n->log_level);
    return rc;
}

/* Rules between knobs (PBFT section 4.3: the log window L holds whole
 * checkpoint intervals, and at least two so that a new checkpoint can become
 * stable while the previous one still bounds the log). */
static int check_knob_relations(const pctx *p, const cfg_node *n)
{
    if (n->log_window % n->checkpoint_interval != 0 || n->log_window < 2 * n->checkpoint_interval)
        return fail(p, "log_window",
                    "%u must be a multiple of checkpoint_interval (%u) and at least twice it "
                    "(e.g. %u)",
                    n->log_window, n->checkpoint_interval, 4 * n->checkpoint_interval);
    if (n->batch_max_bytes >= n->max_frame)
        return fail(p, "batch_max_bytes",
                    "%u must be smaller than max_frame (%u): a PRE-PREPARE carries its whole "
                    "batch in one frame",
                    n->batch_max_bytes, n->max_frame);
    if (n->send_queue_bytes < n->max_frame)
        return fail(p, "send_queue_bytes",
                    "%llu must be at least max_frame (%u) so that one full frame fits",
                    (unsigned long long)n->send_queue_bytes, n->max_frame);
    return 0;
}

/* node.json "inference" (optional): the model path and serving knobs. */
static int parse_inference(const pctx *p, json_t *root, cfg_inference *in)
{
    json_t *o = json_object_get(root, "inference");
    if (!o)
        return 0;
    if (!json_is_object(o))
        return fail(p, "inference", "must be an object, e.g. {\"model\": \"model.gguf\"}");
    int rc = check_fields(p, o, "inference", inference_fields);
    if (!rc)
        rc = get_string(p, o, "inference", "model", false, true, in->model, sizeof in->model,
                        "a GGUF model file, e.g. \"model.gguf\", or \"\" for none");
    for (size_t i = 0; !rc && i < NIKNOBS; i++) {
        uint64_t v = knob_get(in, &inference_knobs[i]);
        char hint[64];
        snprintf(hint, sizeof hint, "default %llu", (unsigned long long)v);
        rc = get_uint(p, o, "inference", inference_knobs[i].name, false, inference_knobs[i].min,
                      inference_knobs[i].max, hint, &v);
        knob_set(in, &inference_knobs[i], v);
    }
    if (!rc)
        rc = get_bool(p, o, "sched_idle", &in->sched_idle,
                      "true runs inference only on otherwise idle cores (SCHED_IDLE)");
    return rc;
}

/* Parse node.json's fields into n (already holding the defaults).  Paths
 * are left as written; cfg_node_load resolves them. */
static int parse_node(const pctx *p, json_t *root, cfg_node *n)
{
    uint64_t id = 0;
    int rc = check_fields(p, root, "", node_fields);
    if (!rc)
        rc = get_uint(p, root, "", "id", true, 0, UINT32_MAX,
                      "this node's replica id in cluster.json", &id);
    n->id = (uint32_t)id;
    if (!rc)
        rc = get_string(p, root, "", "cluster", true, false, n->cluster_path,
                        sizeof n->cluster_path, "the path of cluster.json");
    if (!rc)
        rc = get_string(p, root, "", "key", true, false, n->key_path, sizeof n->key_path,
                        "the path of this node's node.key from 'fedbft keygen'");
    if (!rc)
        rc = get_string(p, root, "", "data_dir", true, false, n->data_dir, sizeof n->data_dir,
                        "a directory for this node's state, e.g. \"data\"");
    if (!rc)
        rc = get_host(p, root, "", "listen", false, true, n->listen);
    if (!rc)
        rc = get_string(p, root, "", "log_file", false, false, n->log_file, sizeof n->log_file,
                        "a file to append the log to, e.g. \"node.log\"");
    for (size_t i = 0; !rc && i < NKNOBS; i++) {
        uint64_t v = knob_get(n, &knobs[i]);
        char hint[64];
        snprintf(hint, sizeof hint, "default %llu", (unsigned long long)v);
        rc = get_uint(p, root, "", knobs[i].name, false, knobs[i].min, knobs[i].max, hint, &v);
        knob_set(n, &knobs[i], v);
    }
    if (!rc)
        rc = parse_enums(p, root, n);
    if (!rc)
        rc = get_bool(p, root, "fault_injection", &n->fault_injection,
                      "true only for test clusters: it lets the admin socket break links");
    uint64_t http_port = n->http_port;
    if (!rc)
        rc = get_uint(p, root, "", "http_port", false, 0, 65535,
                      "a TCP port, or 0 for no HTTP server", &http_port);
    n->http_port = (uint16_t)http_port;
    if (!rc)
        rc = parse_switches(p, root, n);
    if (!rc)
        rc = parse_inference(p, root, &n->inference);
    if (!rc)
        rc = check_knob_relations(p, n);
    return rc;
}

/* The canonical directory holding node.json. */
static int node_base_dir(const pctx *p, char *out, size_t cap)
{
    char copy[CFG_PATH_MAX];
    if (strlen(p->file) >= sizeof copy)
        return fail(p, NULL, "path too long (at most %d bytes)", CFG_PATH_MAX - 1);
    snprintf(copy, sizeof copy, "%s", p->file);
    char *real = realpath(dirname(copy), NULL);
    if (!real)
        return fb_errf(p->err, p->errlen, FB_EIO, "%s: cannot resolve its directory: %s", p->file,
                       strerror(errno));
    int rc = 0;
    if (strlen(real) >= cap)
        rc = fail(p, NULL, "directory path too long (at most %zu bytes)", cap - 1);
    else
        snprintf(out, cap, "%s", real);
    free(real);
    return rc;
}

/* Resolve rel against base (canonical, so no symlinks in it): leading "./"
 * and "../" are folded in lexically, which is exact because base's parent is
 * its real parent.  Later components are kept as written. */
static int resolve_path(const pctx *p, const char *field, const char *base, char *path)
{
    if (path[0] == '/')
        return 0;
    char dir[CFG_PATH_MAX];
    snprintf(dir, sizeof dir, "%s", base);
    const char *rel = path;
    for (;;) {
        if (strcmp(rel, ".") == 0 || strncmp(rel, "./", 2) == 0) {
            rel += rel[1] ? 2 : 1;
        } else if (strcmp(rel, "..") == 0 || strncmp(rel, "../", 3) == 0) {
            char *slash = strrchr(dir, '/');
            if (slash && slash != dir)
                *slash = '\0';
            else
                snprintf(dir, sizeof dir, "/");
            rel += rel[2] ? 3 : 2;
        } else {
            break;
        }
        while (*rel == '/')
            rel++;
    }
    char out[CFG_PATH_MAX];
    const char *sep = (strcmp(dir, "/") == 0 || !*rel) ? "" : "/";
    if ((size_t)snprintf(out, sizeof out, "%s%s%s", dir, sep, rel) >= sizeof out)
        return fail(p, field, "\"%s\" resolves to a path longer than %d bytes", path,
                    CFG_PATH_MAX - 1);
    memcpy(path, out, strlen(out) + 1);
    return 0;
}

int cfg_node_load(const char *path, cfg_node *out, char *err, size_t errlen)
{
    if (strlen(path) >= CFG_PATH_MAX)
        return fb_errf(err, errlen, FB_EINVAL, "%s: path too long (at most %d bytes)", path,
                       CFG_PATH_MAX - 1);
    json_t *root;
    int rc = read_json_object(path, "node.json", &root, err, errlen);
    if (rc)
        return rc;
    pctx p = {path, err, errlen};
    cfg_node *n = malloc(sizeof *n); /* ~3 KiB: keep it off small thread stacks */
    char *base = malloc(CFG_PATH_MAX);
    if (!n || !base)
        rc = fb_errf(err, errlen, FB_ENOMEM, "out of memory");
    if (!rc) {
        cfg_node_defaults(n);
        rc = parse_node(&p, root, n);
    }
    if (!rc)
        rc = node_base_dir(&p, base, CFG_PATH_MAX);
    if (!rc)
        rc = resolve_path(&p, "cluster", base, n->cluster_path);
    if (!rc)
        rc = resolve_path(&p, "key", base, n->key_path);
    if (!rc)
        rc = resolve_path(&p, "data_dir", base, n->data_dir);
    if (!rc && n->log_file[0])
        rc = resolve_path(&p, "log_file", base, n->log_file);
    if (!rc && n->inference.model[0])
        rc = resolve_path(&p, "inference.model", base, n->inference.model);
    if (!rc) {
        snprintf(n->path, sizeof n->path, "%s", path);
        *out = *n;
    }
    free(base);
    free(n);
    json_decref(root);
    return rc;
}

int cfg_check_node_in_cluster(const cfg_node *node, const cfg_cluster *cluster,
                              const uint8_t node_pk[FB_PK_LEN], char *err, size_t errlen)
{
    pctx p = {node->path, err, errlen};
    if (node->id >= cluster->n)
        return fail(&p, "id",
                    "node %u is not in %s (it lists replicas 0..%u); fix \"id\" or point "
                    "\"cluster\" at the cluster this node belongs to",
                    node->id, node->cluster_path, cluster->n - 1);
    const uint8_t *want = cluster->replicas[node->id].pk;
    if (memcmp(want, node_pk, FB_PK_LEN) != 0) {
        char have_hex[FB_PK_HEX_LEN + 1], want_hex[FB_PK_HEX_LEN + 1];
        fb_pubkey_format(node_pk, have_hex);
        fb_pubkey_format(want, want_hex);
        return fail(&p, "key",
                    "%s has public key %.16s..., but %s lists %.16s... for replica %u; point "
                    "\"key\" at replica %u's own key, or put the output of 'fedbft keyinfo %s' "
                    "in replicas[%u].public_key",
                    node->key_path, have_hex, node->cluster_path, want_hex, node->id, node->id,
                    node->key_path, node->id);
    }
    const cfg_replica *me = &cluster->replicas[node->id];
    if (node->http_port && (node->http_port == me->port || node->http_port == me->client_port))
        return fail(&p, "http_port",
                    "%u is already replica %u's %s in %s; choose another port or 0 for no "
                    "HTTP server",
                    node->http_port, node->id, node->http_port == me->port ? "port" : "client_port",
                    node->cluster_path);
    return 0;
}

/* ------------------------------------------------------------ writing */

/* Write text to path via a temporary file, fsync and rename, so a reader
 * (or a crash) never sees half a config. */
static int write_atomic(const char *path, const char *text, char *err, size_t errlen)
{
    char tmp[CFG_PATH_MAX + 16];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmpXXXXXX", path) >= sizeof tmp)
        return fb_errf(err, errlen, FB_EINVAL, "%s: path too long", path);
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return fb_errf(err, errlen, FB_EIO, "%s: cannot create a temporary file: %s", path,
                       strerror(errno));
    size_t len = strlen(text), done = 0;
    int rc = fchmod(fd, 0644) == 0 ? 0 : -1;
    while (rc == 0 && done < len) {
        ssize_t w = write(fd, text + done, len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            rc = -1;
        else
            done += (size_t)w;
    }
    if (rc == 0 && fsync(fd) != 0)
        rc = -1;
    int saved = errno;
    if (close(fd) != 0 && rc == 0) {
        rc = -1;
        saved = errno;
    }
    if (rc == 0 && rename(tmp, path) != 0) {
        rc = -1;
        saved = errno;
    }
    if (rc != 0) {
        unlink(tmp);
        return fb_errf(err, errlen, FB_EIO, "%s: cannot write: %s", path, strerror(saved));
    }
    char dcopy[CFG_PATH_MAX + 16];
    snprintf(dcopy, sizeof dcopy, "%s", path);
    int dfd = open(dirname(dcopy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) { /* make the rename itself durable */
        (void)fsync(dfd);
        close(dfd);
    }
    return 0;
}

/* Dump, check with the loader's own parser, write. */
static int dump_checked(const char *path, json_t *root, int (*check)(const pctx *, json_t *),
                        char *err, size_t errlen)
{
    if (!root)
        return fb_errf(err, errlen, FB_ENOMEM,
                       "%s: cannot encode (out of memory, or a name or host that is not UTF-8)",
                       path);
    pctx p = {path, err, errlen};
    int rc = check(&p, root);
    char *text = NULL;
    if (!rc) {
        text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        if (!text)
            rc = fb_errf(err, errlen, FB_ENOMEM, "out of memory writing %s", path);
    }
    if (!rc) {
        size_t len = strlen(text);
        char *line = malloc(len + 2); /* a trailing newline, as editors expect */
        if (!line) {
            rc = fb_errf(err, errlen, FB_ENOMEM, "out of memory writing %s", path);
        } else {
            memcpy(line, text, len);
            memcpy(line + len, "\n", 2);
            rc = write_atomic(path, line, err, errlen);
            free(line);
        }
    }
    free(text);
    json_decref(root);
    return rc;
}

static json_t *pk_json(const uint8_t pk[FB_PK_LEN])
{
    char hex[FB_PK_HEX_LEN + 1];
    fb_pubkey_format(pk, hex);
    return json_string(hex);
}

static json_t *cluster_to_json(const cfg_cluster *c)
{
    json_t *reps = json_array(), *cls = json_array();
    for (uint32_t i = 0; reps && i < c->n; i++) {
        const cfg_replica *r = &c->replicas[i];
        json_array_append_new(reps, json_pack("{s:I, s:s, s:i, s:i, s:o}", "id", (json_int_t)r->id,
                                              "host", r->host, "port", (int)r->port, "client_port",
                                              (int)r->client_port, "public_key", pk_json(r->pk)));
    }
    for (uint32_t i = 0; cls && i < c->nclients; i++) {
        const cfg_client *cl = &c->clients[i];
        json_array_append_new(cls, json_pack("{s:I, s:s, s:o}", "id", (json_int_t)cl->id, "name",
                                             cl->name, "public_key", pk_json(cl->pk)));
    }
    if (!reps || !cls) {
        json_decref(reps);
        json_decref(cls);
        return NULL;
    }
    json_t *o = json_pack("{s:o, s:o}", "replicas", reps, "clients", cls);
    if (o && c->has_model_digest) {
        char hex[33];
        sodium_bin2hex(hex, sizeof hex, c->model_digest, sizeof c->model_digest);
        json_object_set_new(o, "model_digest", json_string(hex));
    }
    return o;
}

static int check_cluster_json(const pctx *p, json_t *root)
{
    cfg_cluster c;
    int rc = parse_cluster(p, root, &c);
    if (!rc)
        cfg_cluster_free(&c);
    return rc;
}

int cfg_cluster_write(const char *path, const cfg_cluster *c, char *err, size_t errlen)
{
    return dump_checked(path, cluster_to_json(c), check_cluster_json, err, errlen);
}

/* Every knob is written, defaults included, so node.json documents them. */
static json_t *node_to_json(const cfg_node *n)
{
    json_t *o = json_pack("{s:I, s:s, s:s, s:s}", "id", (json_int_t)n->id, "cluster",
                          n->cluster_path, "key", n->key_path, "data_dir", n->data_dir);
    if (!o)
        return NULL;
    if (n->listen[0])
        json_object_set_new(o, "listen", json_string(n->listen));
    if (n->log_file[0])
        json_object_set_new(o, "log_file", json_string(n->log_file));
    for (size_t i = 0; i < NKNOBS; i++)
        json_object_set_new(o, knobs[i].name, json_integer((json_int_t)knob_get(n, &knobs[i])));
    json_object_set_new(o, "durability", json_string(durability_name(n->durability)));
    json_object_set_new(o, "log_level", json_string(n->log_level));
    json_object_set_new(o, "fault_injection", json_boolean(n->fault_injection));
    json_object_set_new(o, "http_port", json_integer(n->http_port));
    json_object_set_new(o, "verify", json_string(verify_name(n->verify)));
    json_object_set_new(o, "sig_cache", json_boolean(n->sig_cache));
    json_object_set_new(o, "digest_cache", json_boolean(n->digest_cache));
    json_t *in = json_object();
    json_object_set_new(in, "model", json_string(n->inference.model));
    json_object_set_new(in, "sched_idle", json_boolean(n->inference.sched_idle));
    for (size_t i = 0; i < NIKNOBS; i++)
        json_object_set_new(in, inference_knobs[i].name,
                            json_integer((json_int_t)knob_get(&n->inference, &inference_knobs[i])));
    json_object_set_new(o, "inference", in);
    return o;
}

static int check_node_json(const pctx *p, json_t *root)
{
    cfg_node *n = malloc(sizeof *n);
    if (!n)
        return fb_errf(p->err, p->errlen, FB_ENOMEM, "out of memory");
    cfg_node_defaults(n);
    int rc = parse_node(p, root, n);
    free(n);
    return rc;
}

int cfg_node_write(const char *path, const cfg_node *n, char *err, size_t errlen)
{
    return dump_checked(path, node_to_json(n), check_node_json, err, errlen);
}
