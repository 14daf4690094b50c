/* metrics.h - the node's counters, gauges and histograms, exposed in the
 * Prometheus text format (GET /metrics) and as JSON (admin `metrics`).
 *
 * Names follow Prometheus conventions: `fedbft_` prefix, counters end in
 * `_total`, durations are `_seconds` histograms.  A metric is registered once
 * at start-up (so every metric exists, reading 0, from the first scrape);
 * several series may share a name with different label sets (e.g.
 * `reason="garbage"`), and then share HELP and TYPE.
 *
 * Updates (add/set/observe) are lock-free atomics, safe from any thread.
 * Registration and exposition: loop thread only.  Memory is fixed after
 * registration (at most METRICS_MAX series, METRICS_MAX_BUCKETS buckets).
 */
#ifndef FB_METRICS_H
#define FB_METRICS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define METRICS_MAX 256
#define METRICS_MAX_BUCKETS 24

typedef struct fb_metrics fb_metrics;
typedef struct fb_metric fb_metric; /* one series */

int fb_metrics_new(fb_metrics **out);
void fb_metrics_free(fb_metrics *m);

/* labels: NULL, or Prometheus label pairs without braces, e.g.
 * "reason=\"garbage\"".  Returns NULL if the registry is full or the name
 * is not a valid metric name. */
fb_metric *fb_metrics_counter(fb_metrics *m, const char *name, const char *help,
                              const char *labels);
fb_metric *fb_metrics_gauge(fb_metrics *m, const char *name, const char *help, const char *labels);
/* A gauge read at exposition time from fn(arg). */
fb_metric *fb_metrics_gauge_fn(fb_metrics *m, const char *name, const char *help,
                               const char *labels, double (*fn)(void *arg), void *arg);
/* bounds: ascending upper bounds (le), at most METRICS_MAX_BUCKETS; +Inf is implied. */
fb_metric *fb_metrics_histogram(fb_metrics *m, const char *name, const char *help,
                                const char *labels, const double *bounds, size_t nbounds);

/* All accept NULL (a metric that failed to register is a no-op). */
void fb_metric_add(fb_metric *c, uint64_t n);   /* counters */
void fb_metric_set(fb_metric *g, double v);     /* gauges */
void fb_metric_observe(fb_metric *h, double v); /* histograms */
/* A counter kept elsewhere: advance c by how much `now` grew since *last. */
void fb_metric_sync(fb_metric *c, uint64_t now, uint64_t *last);

/* The whole registry in the Prometheus text exposition format 0.0.4
 * (malloc'd; caller frees). */
int fb_metrics_prometheus(fb_metrics *m, char **out, size_t *len);

/* {"name{labels}": value, ...; histograms as {"count","sum","buckets":{le:count}}}. */
json_t *fb_metrics_json(fb_metrics *m);

#endif
