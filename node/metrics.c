/* metrics.c - a fixed registry of counters, gauges and histograms with
 * lock-free updates, rendered as Prometheus text (0.0.4) or JSON. */
#include "metrics.h"

#include "fb_error.h"

#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_MAX_LEN 128
#define HELP_MAX_LEN 256
#define LABELS_MAX_LEN 256

typedef enum { KIND_COUNTER, KIND_GAUGE, KIND_GAUGE_FN, KIND_HISTOGRAM } metric_kind;

struct fb_metric {
    metric_kind kind;
    char name[NAME_MAX_LEN];
    char help[HELP_MAX_LEN];
    char labels[LABELS_MAX_LEN];
    /* Counter value, or a gauge's double as its IEEE-754 bit pattern: C11 has
     * no portable atomic double, but a 64-bit integer is lock-free here. */
    atomic_uint_least64_t value;
    double (*fn)(void *arg);
    void *arg;
    size_t nbounds;
    double bounds[METRICS_MAX_BUCKETS];
    /* Per-bucket (not cumulative) counts; the last slot is +Inf.  Exposition
     * sums them, so the cumulative series and _count always agree even while
     * other threads observe concurrently. */
    atomic_uint_least64_t buckets[METRICS_MAX_BUCKETS + 1];
    atomic_uint_least64_t sum_bits;
};

struct fb_metrics {
    size_t n;
    fb_metric series[METRICS_MAX];
};

static uint64_t double_bits(double v)
{
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    return u;
}

static double bits_double(uint64_t u)
{
    double v;
    memcpy(&v, &u, sizeof v);
    return v;
}

int fb_metrics_new(fb_metrics **out)
{
    fb_metrics *m = calloc(1, sizeof *m);
    if (m == NULL)
        return FB_ENOMEM;
    *out = m;
    return FB_OK;
}

void fb_metrics_free(fb_metrics *m)
{
    free(m);
}

static bool valid_name(const char *name)
{
    if (name == NULL || name[0] == '\0' || strlen(name) >= NAME_MAX_LEN)
        return false;
    for (const char *p = name; *p != '\0'; p++) {
        char c = *p;
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        bool digit = c >= '0' && c <= '9';
        if (!alpha && !(digit && p != name))
            return false;
    }
    return true;
}

/* Labels are passed pre-formatted (`a="x",b="y"`); a newline would break the
 * line-oriented exposition, so refuse rather than emit a corrupt scrape. */
static bool valid_labels(const char *labels)
{
    return labels == NULL || (strlen(labels) < LABELS_MAX_LEN && strchr(labels, '\n') == NULL);
}

static fb_metric *find_name(fb_metrics *m, const char *name)
{
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->series[i].name, name) == 0)
            return &m->series[i];
    return NULL;
}

static fb_metric *register_series(fb_metrics *m, metric_kind kind, const char *name,
                                  const char *help, const char *labels)
{
    if (m == NULL || m->n >= METRICS_MAX || !valid_name(name) || !valid_labels(labels))
        return NULL;
    const char *lab = labels != NULL ? labels : "";
    for (size_t i = 0; i < m->n; i++) {
        fb_metric *s = &m->series[i];
        if (strcmp(s->name, name) != 0)
            continue;
        bool s_gauge = s->kind == KIND_GAUGE || s->kind == KIND_GAUGE_FN;
        bool k_gauge = kind == KIND_GAUGE || kind == KIND_GAUGE_FN;
        /* Series sharing a name share one TYPE line, and a name+labels pair
         * identifies exactly one series. */
        if ((s->kind != kind && !(s_gauge && k_gauge)) || strcmp(s->labels, lab) == 0)
            return NULL;
    }
    fb_metric *s = &m->series[m->n];
    memset(s, 0, sizeof *s);
    s->kind = kind;
    snprintf(s->name, sizeof s->name, "%s", name);
    fb_metric *first = find_name(m, name);
    /* The first registration's HELP is the one exposed for the name. */
    snprintf(s->help, sizeof s->help, "%s",
             first != NULL ? first->help : (help != NULL ? help : ""));
    snprintf(s->labels, sizeof s->labels, "%s", lab);
    atomic_init(&s->value, 0);
    atomic_init(&s->sum_bits, double_bits(0.0));
    for (size_t i = 0; i <= METRICS_MAX_BUCKETS; i++)
        atomic_init(&s->buckets[i], 0);
    m->n++;
    return s;
}

fb_metric *fb_metrics_counter(fb_metrics *m, const char *name, const char *help, const char *labels)
{
    return register_series(m, KIND_COUNTER, name, help, labels);
}

fb_metric *fb_metrics_gauge(fb_metrics *m, const char *name, const char *help, const char *labels)
{
    fb_metric *g = register_series(m, KIND_GAUGE, name, help, labels);
    if (g != NULL)
        atomic_store(&g->value, double_bits(0.0));
    return g;
}

fb_metric *fb_metrics_gauge_fn(fb_metrics *m, const char *name, const char *help,
                               const char *labels, double (*fn)(void *arg), void *arg)
{
    if (fn == NULL)
        return NULL;
    fb_metric *g = register_series(m, KIND_GAUGE_FN, name, help, labels);
    if (g != NULL) {
        g->fn = fn;
        g->arg = arg;
    }
    return g;
}

fb_metric *fb_metrics_histogram(fb_metrics *m, const char *name, const char *help,
                                const char *labels, const double *bounds, size_t nbounds)
{
    if (nbounds > METRICS_MAX_BUCKETS || (nbounds > 0 && bounds == NULL))
        return NULL;
    for (size_t i = 0; i < nbounds; i++) {
        /* Strictly ascending finite bounds; +Inf is always added. */
        if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1])))
            return NULL;
    }
    fb_metric *h = register_series(m, KIND_HISTOGRAM, name, help, labels);
    if (h != NULL) {
        h->nbounds = nbounds;
        if (nbounds > 0)
            memcpy(h->bounds, bounds, nbounds * sizeof *bounds);
    }
    return h;
}

void fb_metric_add(fb_metric *c, uint64_t n)
{
    if (c != NULL && c->kind == KIND_COUNTER)
        atomic_fetch_add_explicit(&c->value, n, memory_order_relaxed);
}

void fb_metric_set(fb_metric *g, double v)
{
    if (g != NULL && g->kind == KIND_GAUGE)
        atomic_store_explicit(&g->value, double_bits(v), memory_order_relaxed);
}

void fb_metric_observe(fb_metric *h, double v)
{
    if (h == NULL || h->kind != KIND_HISTOGRAM)
        return;
    size_t i = 0;
    while (i < h->nbounds && !(v <= h->bounds[i]))
        i++;
    atomic_fetch_add_explicit(&h->buckets[i], 1, memory_order_relaxed);
    uint64_t old = atomic_load_explicit(&h->sum_bits, memory_order_relaxed);
    /* On failure the CAS reloads old, so each retry adds to the latest sum. */
    while (!atomic_compare_exchange_weak_explicit(&h->sum_bits, &old,
                                                  double_bits(bits_double(old) + v),
                                                  memory_order_relaxed, memory_order_relaxed)) {
    }
}

/* ---- exposition */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool failed;
} sbuf;

static void sb_reserve(sbuf *b, size_t extra)
{
    if (b->failed || b->len + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (p == NULL) {
        b->failed = true;
        return;
    }
    b->p = p;
    b->cap = cap;
}

__attribute__((format(printf, 2, 3))) static void sb_printf(sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char tmp[512];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = true;
        return;
    }
    if ((size_t)n >= sizeof tmp) {
        /* Rare long line: format again straight into the buffer. */
        sb_reserve(b, (size_t)n);
        if (b->failed)
            return;
        va_start(ap, fmt);
        vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
        va_end(ap);
    } else {
        sb_reserve(b, (size_t)n);
        if (b->failed)
            return;
        memcpy(b->p + b->len, tmp, (size_t)n + 1);
    }
    b->len += (size_t)n;
}

/* Shortest of %.15g..%.17g that reads back as the same double, so values
 * round-trip without printing 0.1 as 0.10000000000000001. */
static void format_double(double v, char *out, size_t outlen)
{
    if (isnan(v)) {
        snprintf(out, outlen, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(out, outlen, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(out, outlen, "%.*g", prec, v);
        if (strtod(out, NULL) == v)
            return;
    }
}

static double gauge_value(const fb_metric *s)
{
    if (s->kind == KIND_GAUGE_FN)
        return s->fn(s->arg);
    return bits_double(atomic_load_explicit(&s->value, memory_order_relaxed));
}

/* HELP text escapes only backslash and newline (exposition format 0.0.4). */
static void sb_help(sbuf *b, const char *help)
{
    for (const char *p = help; *p != '\0'; p++) {
        if (*p == '\\')
            sb_printf(b, "\\\\");
        else if (*p == '\n')
            sb_printf(b, "\\n");
        else
            sb_printf(b, "%c", *p);
    }
}

static const char *type_name(metric_kind k)
{
    switch (k) {
    case KIND_COUNTER:
        return "counter";
    case KIND_HISTOGRAM:
        return "histogram";
    default:
        return "gauge";
    }
}

static void sb_histogram(sbuf *b, const fb_metric *s)
{
    const char *sep = s->labels[0] ? "," : "";
    uint64_t cum = 0;
    char num[64];
    for (size_t i = 0; i <= s->nbounds; i++) {
        cum += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
        if (i < s->nbounds)
            format_double(s->bounds[i], num, sizeof num);
        else
            snprintf(num, sizeof num, "+Inf");
        sb_printf(b, "%s_bucket{%s%sle=\"%s\"} %llu\n", s->name, s->labels, sep, num,
                  (unsigned long long)cum);
    }
    format_double(bits_double(atomic_load_explicit(&s->sum_bits, memory_order_relaxed)), num,
                  sizeof num);
    const char *lo = s->labels[0] ? "{" : "";
    const char *lc = s->labels[0] ? "}" : "";
    sb_printf(b, "%s_sum%s%s%s %s\n", s->name, lo, s->labels, lc, num);
    sb_printf(b, "%s_count%s%s%s %llu\n", s->name, lo, s->labels, lc, (unsigned long long)cum);
}

static void sb_series(sbuf *b, const fb_metric *s)
{
    const char *lo = s->labels[0] ? "{" : "";
    const char *lc = s->labels[0] ? "}" : "";
    char num[64];
    switch (s->kind) {
    case KIND_COUNTER:
        sb_printf(b, "%s%s%s%s %llu\n", s->name, lo, s->labels, lc,
                  (unsigned long long)atomic_load_explicit(&s->value, memory_order_relaxed));
        break;
    case KIND_GAUGE:
    case KIND_GAUGE_FN:
        format_double(gauge_value(s), num, sizeof num);
        sb_printf(b, "%s%s%s%s %s\n", s->name, lo, s->labels, lc, num);
        break;
    case KIND_HISTOGRAM:
        sb_histogram(b, s);
        break;
    }
}

int fb_metrics_prometheus(fb_metrics *m, char **out, size_t *len)
{
    if (m == NULL || out == NULL || len == NULL)
        return FB_EINVAL;
    sbuf b = {0};
    sb_reserve(&b, 0);
    for (size_t i = 0; i < m->n; i++) {
        const fb_metric *s = &m->series[i];
        if (find_name(m, s->name) != s)
            continue; /* already written with the first series of its name */
        sb_printf(&b, "# HELP %s ", s->name);
        sb_help(&b, s->help);
        sb_printf(&b, "\n# TYPE %s %s\n", s->name, type_name(s->kind));
        for (size_t j = i; j < m->n; j++)
            if (strcmp(m->series[j].name, s->name) == 0)
                sb_series(&b, &m->series[j]);
    }
    if (b.failed) {
        free(b.p);
        return FB_ENOMEM;
    }
    *out = b.p;
    *len = b.len;
    return FB_OK;
}

/* JSON has no NaN or infinities; those read as null. */
static json_t *json_double(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

static json_t *json_histogram(const fb_metric *s)
{
    json_t *buckets = json_object();
    uint64_t cum = 0;
    char num[64];
    for (size_t i = 0; i <= s->nbounds; i++) {
        cum += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
        if (i < s->nbounds)
            format_double(s->bounds[i], num, sizeof num);
        else
            snprintf(num, sizeof num, "+Inf");
        json_object_set_new(buckets, num, json_integer((json_int_t)cum));
    }
    double sum = bits_double(atomic_load_explicit(&s->sum_bits, memory_order_relaxed));
    return json_pack("{s:I,s:o,s:o}", "count", (json_int_t)cum, "sum", json_double(sum), "buckets",
                     buckets);
}

json_t *fb_metrics_json(fb_metrics *m)
{
    if (m == NULL)
        return NULL;
    json_t *root = json_object();
    if (root == NULL)
        return NULL;
    for (size_t i = 0; i < m->n; i++) {
        const fb_metric *s = &m->series[i];
        char key[NAME_MAX_LEN + LABELS_MAX_LEN + 2];
        if (s->labels[0])
            snprintf(key, sizeof key, "%s{%s}", s->name, s->labels);
        else
            snprintf(key, sizeof key, "%s", s->name);
        json_t *v = NULL;
        switch (s->kind) {
        case KIND_COUNTER: {
            uint64_t c = atomic_load_explicit(&s->value, memory_order_relaxed);
            /* json_int_t is signed; a counter past INT64_MAX saturates. */
            v = json_integer(c > INT64_MAX ? INT64_MAX : (json_int_t)c);
            break;
        }
        case KIND_GAUGE:
        case KIND_GAUGE_FN:
            v = json_double(gauge_value(s));
            break;
        case KIND_HISTOGRAM:
            v = json_histogram(s);
            break;
        }
        if (v == NULL || json_object_set_new(root, key, v) != 0) {
            json_decref(root);
            return NULL;
        }
    }
    return root;
}

void fb_metric_sync(fb_metric *c, uint64_t now, uint64_t *last)
{
    if (now > *last)
        fb_metric_add(c, now - *last);
    *last = now;
}
