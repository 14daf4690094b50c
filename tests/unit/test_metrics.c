/* test_metrics.c - the metrics registry, checked by parsing its Prometheus
 * output with a strict little parser and by reading its JSON form. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- a strict parser for the subset of exposition 0.0.4 we emit */

#define MAX_SAMPLES 512

typedef struct sample {
    char name[128];
    char labels[256]; /* inside the braces, as written */
    double value;
} sample;

typedef struct parsed {
    sample s[MAX_SAMPLES];
    size_t n;
    char typed[64][128]; /* names with a TYPE line, in order */
    char types[64][16];
    size_t ntyped;
} parsed;

static bool is_name_char(char c, bool first)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
           (!first && c >= '0' && c <= '9');
}

static double parse_value(const char *v)
{
    if (strcmp(v, "+Inf") == 0)
        return INFINITY;
    if (strcmp(v, "-Inf") == 0)
        return -INFINITY;
    if (strcmp(v, "NaN") == 0)
        return NAN;
    char *end;
    double d = strtod(v, &end);
    assert_true(end != v && *end == '\0');
    return d;
}

static const char *type_of(const parsed *p, const char *name)
{
    for (size_t i = 0; i < p->ntyped; i++)
        if (strcmp(p->typed[i], name) == 0)
            return p->types[i];
    return NULL;
}

/* A sample's family: histogram series carry _bucket/_sum/_count suffixes. */
static const char *family_type(const parsed *p, const char *name)
{
    const char *t = type_of(p, name);
    if (t != NULL)
        return t;
    static const char *suffixes[] = {"_bucket", "_sum", "_count"};
    for (size_t i = 0; i < 3; i++) {
        size_t nl = strlen(name), sl = strlen(suffixes[i]);
        if (nl > sl && strcmp(name + nl - sl, suffixes[i]) == 0) {
            char base[128];
            snprintf(base, sizeof base, "%.*s", (int)(nl - sl), name);
            t = type_of(p, base);
            if (t != NULL && strcmp(t, "histogram") == 0)
                return t;
        }
    }
    return NULL;
}

static void parse_line(parsed *p, const char *line)
{
    if (line[0] == '#') {
        char kw[8], name[128], rest[300];
        assert_int_equal(sscanf(line, "# %7s %127s %299[^\n]", kw, name, rest), 3);
        if (strcmp(kw, "TYPE") == 0) {
            assert_true(strcmp(rest, "counter") == 0 || strcmp(rest, "gauge") == 0 ||
                        strcmp(rest, "histogram") == 0);
            assert_null(type_of(p, name)); /* once per name */
            assert_true(p->ntyped < 64);
            snprintf(p->typed[p->ntyped], 128, "%s", name);
            memcpy(p->types[p->ntyped], rest, strlen(rest) + 1); /* one of three short words */
            p->ntyped++;
        } else {
            assert_string_equal(kw, "HELP");
            assert_null(type_of(p, name)); /* HELP precedes TYPE */
        }
        return;
    }
    assert_true(p->n < MAX_SAMPLES);
    sample *s = &p->s[p->n];
    size_t i = 0;
    assert_true(is_name_char(line[0], true));
    while (is_name_char(line[i], i == 0))
        i++;
    assert_true(i < sizeof s->name);
    memcpy(s->name, line, i);
    s->name[i] = '\0';
    s->labels[0] = '\0';
    if (line[i] == '{') {
        /* name="value" pairs, comma separated, values with \\ \" \n escapes. */
        size_t start = ++i;
        for (;;) {
            assert_true(is_name_char(line[i], true));
            while (is_name_char(line[i], false))
                i++;
            assert_int_equal(line[i++], '=');
            assert_int_equal(line[i++], '"');
            while (line[i] != '"') {
                assert_true(line[i] != '\0');
                if (line[i] == '\\') {
                    i++;
                    assert_true(line[i] == '\\' || line[i] == '"' || line[i] == 'n');
                }
                i++;
            }
            i++;
            if (line[i] == ',') {
                i++;
                continue;
            }
            assert_int_equal(line[i], '}');
            break;
        }
        snprintf(s->labels, sizeof s->labels, "%.*s", (int)(i - start), line + start);
        i++;
    }
    assert_int_equal(line[i], ' ');
    s->value = parse_value(line + i + 1);
    assert_non_null(family_type(p, s->name)); /* TYPE appears before samples */
    p->n++;
}

static void parse_exposition(parsed *p, const char *text, size_t len)
{
    memset(p, 0, sizeof *p);
    assert_true(len > 0 && text[len - 1] == '\n');
    assert_int_equal(strlen(text), len);
    const char *line = text;
    while (*line != '\0') {
        const char *nl = strchr(line, '\n');
        assert_non_null(nl);
        char buf[1024];
        assert_true((size_t)(nl - line) < sizeof buf);
        memcpy(buf, line, (size_t)(nl - line));
        buf[nl - line] = '\0';
        parse_line(p, buf);
        line = nl + 1;
    }
}

static const sample *find_sample(const parsed *p, const char *name, const char *labels)
{
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->s[i].name, name) == 0 && strcmp(p->s[i].labels, labels) == 0)
            return &p->s[i];
    return NULL;
}

static double value_of(const parsed *p, const char *name, const char *labels)
{
    const sample *s = find_sample(p, name, labels);
    if (s == NULL)
        fail_msg("no sample %s{%s}", name, labels);
    return s->value;
}

/* Buckets of one histogram series (labels without le) are cumulative and
 * monotone, and +Inf equals _count. */
static void check_histogram(const parsed *p, const char *name, const char *labels)
{
    char bname[160], cname[160];
    snprintf(bname, sizeof bname, "%s_bucket", name);
    snprintf(cname, sizeof cname, "%s_count", name);
    double prev = -1, prev_le = -INFINITY, inf = -1;
    size_t nb = 0;
    for (size_t i = 0; i < p->n; i++) {
        const sample *s = &p->s[i];
        if (strcmp(s->name, bname) != 0)
            continue;
        const char *le = strstr(s->labels, "le=\"");
        assert_non_null(le);
        if ((size_t)(le - s->labels) != (labels[0] ? strlen(labels) + 1 : 0) ||
            strncmp(s->labels, labels, strlen(labels)) != 0)
            continue;
        double bound = parse_value(strtok(strdupa(le + 4), "\""));
        assert_true(bound > prev_le);
        assert_true(s->value >= prev);
        prev_le = bound;
        prev = s->value;
        if (isinf(bound))
            inf = s->value;
        nb++;
    }
    assert_true(nb > 0);
    assert_true(isinf(prev_le)); /* +Inf is last */
    assert_true(inf == value_of(p, cname, labels));
}

/* ---- tests */

static double fn_value(void *arg)
{
    return *(double *)arg;
}

static void test_prometheus_roundtrip(void **state)
{
    (void)state;
    fb_metrics *m;
    assert_int_equal(fb_metrics_new(&m), 0);
    fb_metric *req = fb_metrics_counter(m, "fedbft_requests_total", "Requests served.", NULL);
    fb_metric *g = fb_metrics_gauge(m, "fedbft_view", "Current view.", NULL);
    fb_metric *rej1 =
        fb_metrics_counter(m, "fedbft_rejected_total", "Rejected frames.", "reason=\"garbage\"");
    double fnv = 0.25;
    fb_metric *fg =
        fb_metrics_gauge_fn(m, "fedbft_queue_depth", "Depth \\ of\nqueue.", NULL, fn_value, &fnv);
    double bounds[] = {0.001, 0.01, 0.1, 1};
    fb_metric *h =
        fb_metrics_histogram(m, "fedbft_commit_seconds", "Commit latency.", NULL, bounds, 4);
    fb_metric *hl =
        fb_metrics_histogram(m, "fedbft_commit_seconds", "ignored", "phase=\"x\"", bounds, 4);
    /* Same name registered later: exposed together with the first series. */
    fb_metric *rej2 = fb_metrics_counter(m, "fedbft_rejected_total", "ignored",
                                         "reason=\"replay\",peer=\"a\\\"b\"");
    assert_non_null(req);
    assert_non_null(g);
    assert_non_null(rej1);
    assert_non_null(fg);
    assert_non_null(h);
    assert_non_null(hl);
    assert_non_null(rej2);

    fb_metric_add(req, 3);
    fb_metric_add(req, 4);
    fb_metric_set(g, 17);
    fb_metric_set(g, -2.5);
    fb_metric_add(rej1, 1);
    fb_metric_add(rej2, 9);
    fb_metric_observe(h, 0.0005);
    fb_metric_observe(h, 0.05);
    fb_metric_observe(h, 0.05);
    fb_metric_observe(h, 5);
    fb_metric_observe(hl, 0.1); /* le is inclusive */
    fb_metric_add(NULL, 1);     /* NULL metrics are no-ops */
    fb_metric_set(NULL, 1);
    fb_metric_observe(NULL, 1);

    char *text;
    size_t len;
    assert_int_equal(fb_metrics_prometheus(m, &text, &len), 0);
    parsed *p = malloc(sizeof *p);
    assert_non_null(p);
    parse_exposition(p, text, len);

    assert_true(value_of(p, "fedbft_requests_total", "") == 7);
    assert_true(value_of(p, "fedbft_view", "") == -2.5);
    assert_true(value_of(p, "fedbft_rejected_total", "reason=\"garbage\"") == 1);
    assert_true(value_of(p, "fedbft_rejected_total", "reason=\"replay\",peer=\"a\\\"b\"") == 9);
    assert_true(value_of(p, "fedbft_queue_depth", "") == 0.25);
    check_histogram(p, "fedbft_commit_seconds", "");
    check_histogram(p, "fedbft_commit_seconds", "phase=\"x\"");
    assert_true(value_of(p, "fedbft_commit_seconds_bucket", "le=\"0.001\"") == 1);
    assert_true(value_of(p, "fedbft_commit_seconds_bucket", "le=\"0.1\"") == 3);
    assert_true(value_of(p, "fedbft_commit_seconds_bucket", "le=\"+Inf\"") == 4);
    assert_true(value_of(p, "fedbft_commit_seconds_count", "") == 4);
    assert_true(fabs(value_of(p, "fedbft_commit_seconds_sum", "") - 5.1005) < 1e-12);
    assert_true(value_of(p, "fedbft_commit_seconds_bucket", "phase=\"x\",le=\"0.1\"") == 1);
    assert_true(value_of(p, "fedbft_commit_seconds_bucket", "phase=\"x\",le=\"0.01\"") == 0);

    /* Grouping and escaping, checked on the raw text. */
    assert_non_null(strstr(text, "# HELP fedbft_queue_depth Depth \\\\ of\\nqueue.\n"));
    assert_non_null(strstr(text, "# TYPE fedbft_rejected_total counter\n"
                                 "fedbft_rejected_total{reason=\"garbage\"} 1\n"
                                 "fedbft_rejected_total{reason=\"replay\",peer=\"a\\\"b\"} 9\n"));
    assert_non_null(strstr(text, "# TYPE fedbft_commit_seconds histogram\n"));
    assert_null(strstr(text, "ignored"));
    assert_int_equal(p->ntyped, 5);

    /* gauge_fn is read at exposition time. */
    free(text);
    fnv = 1e300;
    assert_int_equal(fb_metrics_prometheus(m, &text, &len), 0);
    parse_exposition(p, text, len);
    assert_true(value_of(p, "fedbft_queue_depth", "") == 1e300);

    free(text);
    free(p);
    fb_metrics_free(m);
}

static void test_json(void **state)
{
    (void)state;
    fb_metrics *m;
    assert_int_equal(fb_metrics_new(&m), 0);
    fb_metric *c = fb_metrics_counter(m, "a_total", "A.", NULL);
    fb_metric *cl = fb_metrics_counter(m, "a_total", "A.", "k=\"v\"");
    fb_metric *g = fb_metrics_gauge(m, "b", "B.", NULL);
    double b[] = {1, 2};
    fb_metric *h = fb_metrics_histogram(m, "c_seconds", "C.", NULL, b, 2);
    fb_metric_add(c, 5);
    fb_metric_add(cl, 2);
    fb_metric_set(g, 1.5);
    fb_metric_observe(h, 1.5);
    fb_metric_observe(h, 3);

    json_t *j = fb_metrics_json(m);
    assert_non_null(j);
    assert_int_equal(json_integer_value(json_object_get(j, "a_total")), 5);
    assert_int_equal(json_integer_value(json_object_get(j, "a_total{k=\"v\"}")), 2);
    assert_true(json_real_value(json_object_get(j, "b")) == 1.5);
    json_t *hj = json_object_get(j, "c_seconds");
    assert_true(json_is_object(hj));
    assert_int_equal(json_integer_value(json_object_get(hj, "count")), 2);
    assert_true(json_real_value(json_object_get(hj, "sum")) == 4.5);
    json_t *bk = json_object_get(hj, "buckets");
    assert_int_equal(json_integer_value(json_object_get(bk, "1")), 0);
    assert_int_equal(json_integer_value(json_object_get(bk, "2")), 1);
    assert_int_equal(json_integer_value(json_object_get(bk, "+Inf")), 2);
    assert_int_equal(json_object_size(j), 4);
    json_decref(j);
    fb_metrics_free(m);
}

static void test_full_and_invalid(void **state)
{
    (void)state;
    fb_metrics *m;
    assert_int_equal(fb_metrics_new(&m), 0);
    assert_null(fb_metrics_counter(m, "", "x", NULL));
    assert_null(fb_metrics_counter(m, "9abc", "x", NULL));
    assert_null(fb_metrics_counter(m, "a-b", "x", NULL));
    assert_null(fb_metrics_counter(m, "a b", "x", NULL));
    assert_null(fb_metrics_counter(m, NULL, "x", NULL));
    assert_null(fb_metrics_counter(m, "ok", "x", "a=\"1\"\nb=\"2\""));
    double bad[] = {2, 1};
    assert_null(fb_metrics_histogram(m, "h", "x", NULL, bad, 2));
    double many[METRICS_MAX_BUCKETS + 1];
    for (size_t i = 0; i <= METRICS_MAX_BUCKETS; i++)
        many[i] = (double)i;
    assert_null(fb_metrics_histogram(m, "h", "x", NULL, many, METRICS_MAX_BUCKETS + 1));
    assert_non_null(fb_metrics_histogram(m, "h", "x", NULL, many, METRICS_MAX_BUCKETS));
    assert_non_null(fb_metrics_counter(m, "_ok:name9", "x", NULL));
    /* Same name+labels twice, or one name with two types, is refused. */
    assert_null(fb_metrics_counter(m, "_ok:name9", "x", NULL));
    assert_null(fb_metrics_gauge(m, "_ok:name9", "x", "a=\"1\""));

    for (size_t i = 2; i < METRICS_MAX; i++) {
        char labels[32];
        snprintf(labels, sizeof labels, "i=\"%zu\"", i);
        assert_non_null(fb_metrics_counter(m, "fill_total", "x", labels));
    }
    assert_null(fb_metrics_counter(m, "more_total", "x", NULL));
    assert_null(fb_metrics_gauge(m, "more", "x", NULL));

    char *text;
    size_t len;
    assert_int_equal(fb_metrics_prometheus(m, &text, &len), 0);
    parsed *p = malloc(sizeof *p);
    assert_non_null(p);
    parse_exposition(p, text, len);
    check_histogram(p, "h", "");
    assert_true(value_of(p, "fill_total", "i=\"255\"") == 0);
    free(p);
    free(text);
    fb_metrics_free(m);
}

#define THREADS 4
#define ITERS 100000

typedef struct worker {
    fb_metric *c, *h;
} worker;

static void *hammer(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < ITERS; i++) {
        fb_metric_add(w->c, 1);
        fb_metric_observe(w->h, 0.5);
    }
    return NULL;
}

static void test_concurrent(void **state)
{
    (void)state;
    fb_metrics *m;
    assert_int_equal(fb_metrics_new(&m), 0);
    double b[] = {1};
    worker w = {fb_metrics_counter(m, "hits_total", "x", NULL),
                fb_metrics_histogram(m, "lat_seconds", "x", NULL, b, 1)};
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, hammer, &w), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    json_t *j = fb_metrics_json(m);
    assert_int_equal(json_integer_value(json_object_get(j, "hits_total")), THREADS * ITERS);
    json_t *h = json_object_get(j, "lat_seconds");
    assert_int_equal(json_integer_value(json_object_get(h, "count")), THREADS * ITERS);
    /* 0.5 is exact in binary, so the CAS-accumulated sum is exact too. */
    assert_true(json_real_value(json_object_get(h, "sum")) == 0.5 * THREADS * ITERS);
    json_decref(j);
    fb_metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prometheus_roundtrip),
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_full_and_invalid),
        cmocka_unit_test(test_concurrent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
