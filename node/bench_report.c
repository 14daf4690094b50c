/* bench_report.c - a bench run's figures: the JSON record, the text report,
 * the comparison with a baseline, and the ablation table. */
#include "bench_report.h"

#include "fb_error.h"
#include "pbft.h"

#include <math.h>
#include <string.h>
#include <unistd.h>

#ifndef FEDBFT_VERSION
#define FEDBFT_VERSION "unknown"
#endif

/* ------------------------------------------------------------ small helpers */

static json_t *num_or_null(bool have, double v)
{
    return have && isfinite(v) ? json_real(v) : json_null();
}

/* For counts read from metrics (which arrive as doubles). */
static json_t *count_or_null(bool have, double v)
{
    return have && isfinite(v) ? json_integer((json_int_t)llround(v)) : json_null();
}

/* A number at a dotted path ("latency_us.p99"), or NAN. */
static double jnum(json_t *o, const char *path)
{
    char buf[128];
    snprintf(buf, sizeof buf, "%s", path);
    json_t *v = o;
    for (char *save = NULL, *part = strtok_r(buf, ".", &save); part && v;
         part = strtok_r(NULL, ".", &save))
        v = json_is_object(v) ? json_object_get(v, part) : NULL;
    return json_is_number(v) ? json_number_value(v) : NAN;
}

static const char *jstr(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

static void fmt_us(double us, char *buf, size_t cap)
{
    if (!isfinite(us))
        snprintf(buf, cap, "n/a");
    else if (us < 1000)
        snprintf(buf, cap, "%.0f us", us);
    else if (us < 1e6)
        snprintf(buf, cap, "%.2f ms", us / 1e3);
    else
        snprintf(buf, cap, "%.2f s", us / 1e6);
}

static json_t *latency_json(const bench_hist *h)
{
    if (h->count == 0)
        return json_pack("{s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:i,s:i}", "p50", "p90", "p99", "p999",
                         "max", "min", "mean", "count", 0, "overflow", 0);
    return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:f,s:I,s:I}", "p50",
                     (json_int_t)bench_hist_percentile(h, 50), "p90",
                     (json_int_t)bench_hist_percentile(h, 90), "p99",
                     (json_int_t)bench_hist_percentile(h, 99), "p999",
                     (json_int_t)bench_hist_percentile(h, 99.9), "max", (json_int_t)h->max, "min",
                     (json_int_t)h->min, "mean", bench_hist_mean(h), "count", (json_int_t)h->count,
                     "overflow", (json_int_t)h->overflow);
}

/* ------------------------------------------------------------ the record */

static json_t *config_json(const bench_config *c)
{
    const char *verify[] = {"default", "inline", "batch"};
    json_t *sw = !c->local
                     ? json_null()
                     : json_pack("{s:o,s:s,s:b,s:b}", "batch_max_requests",
                                 c->sw.batch_max ? json_integer(c->sw.batch_max) : json_null(),
                                 "verify", verify[c->sw.verify], "digest_cache",
                                 !c->sw.no_digest_cache, "sig_cache", !c->sw.no_sig_cache);
    return json_pack("{s:s,s:o,s:i,s:i,s:i,s:s,s:o,s:o,s:i,s:f,s:f,s:f,s:I,s:o,s:o,s:o,s:i}",
                     "target", c->local ? "local" : "cluster", "cluster_file",
                     c->cluster_file ? json_string(c->cluster_file) : json_null(), "nodes",
                     (int)c->nodes, "f", (int)c->f, "clients", (int)c->clients, "load",
                     c->rate > 0 ? "open" : "closed", "rate",
                     c->rate > 0 ? json_real(c->rate) : json_null(), "arrivals",
                     c->rate > 0 ? json_string("poisson") : json_null(), "payload_bytes",
                     (int)c->payload, "warmup_s", c->warmup_s, "duration_s", c->duration_s,
                     "read_ratio", c->read_ratio, "timeout_ms", (json_int_t)c->timeout_ms,
                     "durability", c->local ? json_string(c->durability) : json_null(), "base_port",
                     c->local ? json_integer(c->base_port) : json_null(), "switches", sw, "cores",
                     (int)c->cores);
}

static bool both(const bench_sample *a, const bench_sample *b, uint32_t i)
{
    return a && b && a->taken && b->taken && i < a->n && i < b->n;
}

/* A node's CPU by thread kind over the window, in % of one core. */
static json_t *threads_json(const bench_node_sample *x, const bench_node_sample *y, double dt)
{
    static const char *names[BENCH_THREAD_KINDS] = {"loop", "verify", "store", "other"};
    if (!x->have_threads || !y->have_threads || dt <= 0)
        return json_null();
    double hz = (double)sysconf(_SC_CLK_TCK);
    json_t *o = json_object();
    for (int k = 0; k < BENCH_THREAD_KINDS; k++) {
        /* a thread that ended takes its ticks along: never below zero */
        double d = y->thread_ticks[k] >= x->thread_ticks[k]
                       ? (double)(y->thread_ticks[k] - x->thread_ticks[k])
                       : 0;
        json_object_set_new(o, names[k], json_real(d / hz / dt * 100));
    }
    return o;
}

/* The mean of a histogram over the window, in ms; null if nothing was timed. */
static json_t *mean_ms(bench_hist_total a, bench_hist_total b)
{
    double n = b.count - a.count;
    return n > 0 ? json_real((b.sum - a.sum) / n * 1e3) : json_null();
}

/* A node's time per hand-off and per request phase over the window. */
static json_t *timing_json(const bench_node_sample *x, const bench_node_sample *y)
{
    if (!x->have_timing || !y->have_timing)
        return json_null();
    json_t *phases = json_object();
    for (int p = 0; p < BENCH_PHASES; p++)
        json_object_set_new(phases, bench_phase_names[p], mean_ms(x->phase[p], y->phase[p]));
    return json_pack("{s:o,s:o,s:o}", "verify_job_ms", mean_ms(x->verify_job, y->verify_job),
                     "store_commit_ms", mean_ms(x->store_commit, y->store_commit), "phase_ms",
                     phases);
}

/* Per-node CPU, memory and verifications over the window. */
static json_t *nodes_json(const bench_run *r, bool use_verified)
{
    const bench_sample *a = r->open, *b = r->close;
    double hz = (double)sysconf(_SC_CLK_TCK);
    json_t *arr = json_array();
    for (uint32_t i = 0; i < r->cfg.nodes; i++) {
        bool ok = both(a, b, i);
        const bench_node_sample *x = ok ? &a->node[i] : NULL, *y = ok ? &b->node[i] : NULL;
        double dt = ok ? (double)(b->t_us - a->t_us) / 1e6 : 0;
        bool proc = ok && x->have_proc && y->have_proc && dt > 0 && y->cpu_ticks >= x->cpu_ticks;
        bool met = ok && x->have_metrics && y->have_metrics;
        double cpu = proc ? (double)(y->cpu_ticks - x->cpu_ticks) / hz / dt * 100 : 0;
        double sigs = met ? (use_verified ? y->sigs_verified - x->sigs_verified
                                          : y->sig_misses - x->sig_misses)
                          : 0;
        json_array_append_new(
            arr,
            json_pack("{s:i,s:o,s:o,s:o,s:o,s:o,s:o}", "id", (int)i, "cpu_percent",
                      num_or_null(proc, cpu), "rss_mib",
                      num_or_null(proc, (double)(proc ? y->rss_kib : 0) / 1024), "rss_peak_mib",
                      num_or_null(proc, (double)(proc ? y->hwm_kib : 0) / 1024),
                      "signatures_verified", count_or_null(met, sigs), "threads_cpu_percent",
                      proc ? threads_json(x, y, dt) : json_null(), "timing",
                      ok ? timing_json(x, y) : json_null()));
    }
    return arr;
}

/* View changes over the whole run (before the warmup to the window's end):
 * each replica counts the view changes it completed, so take the largest
 * increase, not the sum. */
static json_t *views_json(const bench_run *r)
{
    double vc = -1, v0 = -1, v1 = -1;
    for (uint32_t i = 0; i < r->cfg.nodes; i++) {
        if (!both(r->before, r->close, i))
            continue;
        const bench_node_sample *x = &r->before->node[i], *y = &r->close->node[i];
        if (!x->have_metrics || !y->have_metrics)
            continue;
        vc = fmax(vc, y->view_changes - x->view_changes);
        v0 = fmax(v0, x->view);
        v1 = fmax(v1, y->view);
    }
    return json_pack("{s:o,s:o,s:o}", "view_changes", count_or_null(vc >= 0, vc), "view_start",
                     count_or_null(v0 >= 0, v0), "view_end", count_or_null(v1 >= 0, v1));
}

/* Ed25519 verifications, summed over all n replicas, that one operation
 * costs in this protocol (PBFT, section 4.2, with signed requests,
 * PRE-PREPAREs and PREPAREs; a COMMIT is authenticated by its link and
 * carries no signature), b = the mean batch size, q = the quorum (2f+1 when
 * n = 3f+1):
 *   per request: every replica checks the client's signature       n
 *   per batch:   the n-1 backups check the PRE-PREPARE              n-1
 *     every vote checked (the reference formula):
 *                every replica checks the PREPAREs of the backups
 *                other than itself (the primary sends none)         (n-1)^2
 *       => n + n(n-1)/b per ordered request
 *     the minimum (a replica needs only its quorum; the node drops votes
 *     that arrive after their slot completed, unverified):
 *                the primary q-1 PREPAREs, each backup q-2 others'  (q-1) + (n-1)(q-2)
 *   a read on the fast path is not ordered: n.
 * Checkpoints, view changes and retransmissions are left out. */
static double protocol_per_op(uint32_t n, double batch, double write_share, bool all_votes)
{
    double q = pbft_quorum(n), nn = n;
    double per_batch =
        all_votes ? (nn - 1) + (nn - 1) * (nn - 1) : (nn - 1) + (q - 1) + (nn - 1) * (q - 2);
    return nn + write_share * per_batch / batch;
}

static json_t *signatures_json(const bench_run *r, double throughput, bool *use_verified)
{
    const bench_sample *a = r->open, *b = r->close;
    bool all_verified = true, all_metrics = r->cfg.nodes > 0;
    double sigs_v = 0, sigs_m = 0, bsum = 0, bcount = 0;
    for (uint32_t i = 0; i < r->cfg.nodes; i++) {
        bool ok = both(a, b, i) && a->node[i].have_metrics && b->node[i].have_metrics;
        if (!ok) {
            all_metrics = false;
            continue;
        }
        const bench_node_sample *x = &a->node[i], *y = &b->node[i];
        all_verified &= x->have_sigs_verified && y->have_sigs_verified;
        sigs_v += y->sigs_verified - x->sigs_verified;
        sigs_m += y->sig_misses - x->sig_misses;
        if (x->have_batch && y->have_batch) {
            bsum += y->batch_sum - x->batch_sum;
            bcount += y->batch_count - x->batch_count;
        }
    }
    *use_verified = all_verified;
    const bench_load_result *l = r->load;
    bool have_vpo = all_metrics && l->ops > 0;
    double sigs = all_verified ? sigs_v : sigs_m;
    double vpo = have_vpo ? sigs / (double)l->ops : NAN;
    double batch = bcount > 0 ? bsum / bcount : NAN;
    double writes = l->ops ? (double)l->writes / (double)l->ops : 1;
    bool have_min = isfinite(batch) || (l->ops > 0 && l->writes == 0);
    double b1 = isfinite(batch) ? batch : 1;
    double pmin = have_min ? protocol_per_op(r->cfg.nodes, b1, writes, false) : NAN;
    double pall = have_min ? protocol_per_op(r->cfg.nodes, b1, writes, true) : NAN;
    double t = r->verify_us * 1e-6;
    bool have_bound = have_vpo && vpo > 0 && t > 0;
    double bound = have_bound ? r->cfg.cores / (vpo * t) : NAN;
    double bound_min = have_min && t > 0 ? r->cfg.cores / (pmin * t) : NAN;
    json_t *o = json_object();
    json_object_set_new(o, "verify_us", json_real(r->verify_us));
    json_object_set_new(o, "verify_us_before", json_real(r->verify_us_before));
    json_object_set_new(o, "verify_us_after", json_real(r->verify_us_after));
    json_object_set_new(o, "verify_threads", json_integer(r->verify_threads));
    json_object_set_new(o, "verify_samples", json_integer(r->verify_samples));
    json_object_set_new(o, "counter",
                        all_metrics ? json_string(all_verified ? "fedbft_signatures_verified_total"
                                                               : "fedbft_sigcache_misses_total")
                                    : json_null());
    json_object_set_new(o, "counter_fallback", json_boolean(all_metrics && !all_verified));
    json_object_set_new(o, "verifications", count_or_null(all_metrics, sigs));
    json_object_set_new(o, "verifications_per_op", num_or_null(have_vpo, vpo));
    json_object_set_new(o, "mean_batch_size", num_or_null(isfinite(batch), batch));
    json_object_set_new(o, "protocol_min_per_op", num_or_null(have_min, pmin));
    json_object_set_new(o, "protocol_all_votes_per_op", num_or_null(have_min, pall));
    json_object_set_new(o, "cores", json_integer(r->cfg.cores));
    json_object_set_new(o, "bound_ops_s", num_or_null(have_bound, bound));
    json_object_set_new(o, "bound_at_protocol_min_ops_s",
                        num_or_null(isfinite(bound_min), bound_min));
    json_object_set_new(o, "fraction_of_bound", num_or_null(have_bound, throughput / bound));
    return o;
}

json_t *bench_report_json(const bench_run *r)
{
    const bench_load_result *l = r->load;
    double tput = l->measured_s > 0 ? (double)l->ops / l->measured_s : 0;
    json_t *rec = json_pack("{s:i,s:s}", "fedbft_bench", 1, "version", FEDBFT_VERSION);
    if (!rec)
        return NULL;
    if (r->cfg.label)
        json_object_set_new(rec, "label", json_string(r->cfg.label));
    json_object_set_new(rec, "config", config_json(&r->cfg));
    json_object_set_new(rec, "interrupted", json_boolean(l->interrupted));
    json_object_set_new(rec, "measured_s", json_real(l->measured_s));
    json_object_set_new(rec, "ops", json_integer((json_int_t)l->ops));
    json_object_set_new(rec, "reads", json_integer((json_int_t)l->reads));
    json_object_set_new(rec, "writes", json_integer((json_int_t)l->writes));
    json_object_set_new(rec, "throughput_ops_s", json_real(tput));
    json_object_set_new(rec, "latency_us", latency_json(&l->all));
    if (l->reads && l->writes) {
        json_object_set_new(rec, "read_latency_us", latency_json(&l->read));
        json_object_set_new(rec, "write_latency_us", latency_json(&l->write));
    }
    json_object_update_new(
        rec, json_pack("{s:I,s:I,s:I,s:I,s:I,s:I}", "errors", (json_int_t)l->errors, "timeouts",
                       (json_int_t)l->timeouts, "missed", (json_int_t)l->missed, "unfinished",
                       (json_int_t)l->unfinished, "retransmits", (json_int_t)l->retransmits,
                       "read_fallbacks", (json_int_t)l->fallbacks));
    json_object_update_new(rec, views_json(r));
    bool use_verified = false;
    json_t *sig = signatures_json(r, tput, &use_verified);
    json_object_set_new(rec, "nodes", nodes_json(r, use_verified));
    const bench_sample *a = r->open, *b = r->close;
    bool self = a && b && a->taken && b->taken && b->t_us > a->t_us;
    double self_cpu = self
                          ? (double)(b->self_ticks - a->self_ticks) / (double)sysconf(_SC_CLK_TCK) /
                                ((double)(b->t_us - a->t_us) / 1e6) * 100
                          : 0;
    json_object_set_new(rec, "bench_cpu_percent", num_or_null(self, self_cpu));
    json_object_set_new(rec, "signatures", sig);
    return rec;
}

/* ------------------------------------------------------------ text */

static void print_latency_line(FILE *out, const char *name, json_t *lat)
{
    static const char *keys[] = {"p50", "p90", "p99", "p999", "max", "mean"};
    static const char *names[] = {"p50", "p90", "p99", "p99.9", "max", "mean"};
    fprintf(out, "%-14s", name);
    for (size_t k = 0; k < 6; k++) {
        char v[32], item[48];
        fmt_us(jnum(lat, keys[k]), v, sizeof v);
        snprintf(item, sizeof item, "%s %s", names[k], v);
        if (k < 5)
            fprintf(out, "%-17s", item);
        else
            fprintf(out, "%s\n", item);
    }
}

static void print_config(FILE *out, json_t *rec)
{
    json_t *c = json_object_get(rec, "config");
    fprintf(out, "fedbft bench: %.0f replicas (f=%.0f), ", jnum(c, "nodes"), jnum(c, "f"));
    if (strcmp(jstr(c, "target"), "local") == 0)
        fprintf(out, "a local cluster (durability %s)", jstr(c, "durability"));
    else
        fprintf(out, "cluster %s", jstr(c, "cluster_file"));
    fprintf(out, ", %.0f clients, ", jnum(c, "clients"));
    if (strcmp(jstr(c, "load"), "open") == 0)
        fprintf(out, "open loop at %.0f ops/s (Poisson arrivals)\n", jnum(c, "rate"));
    else
        fprintf(out, "closed loop\n");
    fprintf(out, "              %.0f-byte values, %.0f%% reads; warmup %g s, measured %.2f s\n",
            jnum(c, "payload_bytes"), jnum(c, "read_ratio") * 100, jnum(c, "warmup_s"),
            jnum(rec, "measured_s"));
    if (json_object_get(rec, "label"))
        fprintf(out, "              configuration: %s\n", jstr(rec, "label"));
}

static void print_nodes(FILE *out, json_t *rec)
{
    json_t *nodes = json_object_get(rec, "nodes");
    size_t i;
    json_t *nd;
    bool any = false;
    json_array_foreach(nodes, i, nd) any |=
        isfinite(jnum(nd, "cpu_percent")) || isfinite(jnum(nd, "signatures_verified"));
    if (!any) {
        fprintf(out, "nodes         n/a (no pid files or admin sockets readable here)\n");
        return;
    }
    fprintf(out, "nodes         %-5s %-8s %-9s %-9s %s\n", "node", "cpu%", "rss MiB", "peak MiB",
            "signatures verified");
    json_array_foreach(nodes, i, nd)
    {
        char cpu[16] = "n/a", rss[16] = "n/a", peak[16] = "n/a", sigs[24] = "n/a";
        if (isfinite(jnum(nd, "cpu_percent"))) {
            snprintf(cpu, sizeof cpu, "%.1f", jnum(nd, "cpu_percent"));
            snprintf(rss, sizeof rss, "%.1f", jnum(nd, "rss_mib"));
            snprintf(peak, sizeof peak, "%.1f", jnum(nd, "rss_peak_mib"));
        }
        if (isfinite(jnum(nd, "signatures_verified")))
            snprintf(sigs, sizeof sigs, "%.0f", jnum(nd, "signatures_verified"));
        fprintf(out, "              %-5zu %-8s %-9s %-9s %s\n", i, cpu, rss, peak, sigs);
    }
}

/* Where each node's CPU and each request's time went. */
static void print_where(FILE *out, json_t *rec)
{
    json_t *nodes = json_object_get(rec, "nodes"), *nd;
    size_t i;
    bool threads = false, timing = false;
    json_array_foreach(nodes, i, nd)
    {
        threads |= json_is_object(json_object_get(nd, "threads_cpu_percent"));
        timing |= json_is_object(json_object_get(nd, "timing"));
    }
    if (threads) {
        fprintf(out, "threads       %-5s %-8s %-8s %-8s %-8s (cpu%% of one core, by thread)\n",
                "node", "loop", "verify", "store", "other");
        json_array_foreach(nodes, i, nd)
        {
            json_t *t = json_object_get(nd, "threads_cpu_percent");
            if (!json_is_object(t))
                continue;
            fprintf(out, "              %-5zu %-8.1f %-8.1f %-8.1f %-8.1f\n", i, jnum(t, "loop"),
                    jnum(t, "verify"), jnum(t, "store"), jnum(t, "other"));
        }
    }
    if (!timing)
        return;
    fprintf(out, "timing        %-5s %-9s %-9s| %-9s %-9s %-9s %-9s %s\n", "node", "verify",
            "store", "pre-prep", "prepared", "committed", "executed", "replied");
    json_array_foreach(nodes, i, nd)
    {
        json_t *t = json_object_get(nd, "timing");
        if (!json_is_object(t))
            continue;
        char v[7][16];
        const char *keys[7] = {"verify_job_ms",     "store_commit_ms",    "phase_ms.pre_prepared",
                               "phase_ms.prepared", "phase_ms.committed", "phase_ms.executed",
                               "phase_ms.replied"};
        for (int k = 0; k < 7; k++)
            fmt_us(jnum(t, keys[k]) * 1e3, v[k], sizeof v[k]);
        fprintf(out, "              %-5zu %-9s %-9s| %-9s %-9s %-9s %-9s %s\n", i, v[0], v[1], v[2],
                v[3], v[4], v[5], v[6]);
    }
    fprintf(out, "              (means: a verification job from the turn's end to its messages "
                 "stepped, a store\n              commit from submission to completion | each "
                 "request phase from the one before;\n              a phase a replica never "
                 "sees is n/a: only the primary receives requests)\n");
}

static void print_signatures(FILE *out, json_t *rec)
{
    json_t *s = json_object_get(rec, "signatures");
    fprintf(out,
            "signatures    Ed25519 verify %.1f us of a core with %.0f cores verifying (%.1f "
            "before the load,\n              %.1f after; %.0f signatures)\n",
            jnum(s, "verify_us"), jnum(s, "verify_threads"), jnum(s, "verify_us_before"),
            jnum(s, "verify_us_after"), jnum(s, "verify_samples"));
    double vpo = jnum(s, "verifications_per_op"), pmin = jnum(s, "protocol_min_per_op");
    double n = jnum(rec, "config.nodes");
    if (isfinite(vpo))
        fprintf(out, "              verifications per op (all replicas): %.2f measured (%s%s)\n",
                vpo, jstr(s, "counter"),
                json_is_true(json_object_get(s, "counter_fallback"))
                    ? ": fallback, these nodes do not export fedbft_signatures_verified_total"
                    : "");
    else
        fprintf(out, "              verifications per op: n/a (the nodes' metrics are not "
                     "readable here)\n");
    if (isfinite(pmin))
        fprintf(out,
                "              protocol: %.2f per op at the minimum (quorums only), %.2f if "
                "every vote\n              is checked (n=%.0f, mean batch %.2f; formulas in "
                "bench_report.c)\n",
                pmin, jnum(s, "protocol_all_votes_per_op"), n, jnum(s, "mean_batch_size"));
    double bound = jnum(s, "bound_ops_s");
    if (isfinite(bound)) {
        fprintf(out, "              bound: %.0f cores / (%.2f x %.1f us) = %.0f ops/s",
                jnum(s, "cores"), vpo, jnum(s, "verify_us"), bound);
        if (isfinite(jnum(s, "bound_at_protocol_min_ops_s")))
            fprintf(out, " (%.0f ops/s at the protocol minimum)",
                    jnum(s, "bound_at_protocol_min_ops_s"));
        fprintf(out, "\n              measured throughput is %.1f%% of the bound\n",
                jnum(s, "fraction_of_bound") * 100);
    } else {
        fprintf(out, "              bound: n/a\n");
    }
}

void bench_report_text(FILE *out, json_t *rec)
{
    print_config(out, rec);
    if (json_is_true(json_object_get(rec, "interrupted")))
        fprintf(out, "              (interrupted: figures cover the part that ran)\n");
    fprintf(out, "throughput    %.1f ops/s (%.0f ops: %.0f writes, %.0f reads)\n",
            jnum(rec, "throughput_ops_s"), jnum(rec, "ops"), jnum(rec, "writes"),
            jnum(rec, "reads"));
    print_latency_line(out, "latency", json_object_get(rec, "latency_us"));
    if (json_object_get(rec, "read_latency_us")) {
        print_latency_line(out, "  writes", json_object_get(rec, "write_latency_us"));
        print_latency_line(out, "  reads", json_object_get(rec, "read_latency_us"));
    }
    fprintf(out,
            "failures      %.0f errors, %.0f timeouts, %.0f missed, %.0f unfinished "
            "(%.0f retransmits, %.0f read fallbacks)\n",
            jnum(rec, "errors"), jnum(rec, "timeouts"), jnum(rec, "missed"),
            jnum(rec, "unfinished"), jnum(rec, "retransmits"), jnum(rec, "read_fallbacks"));
    if (isfinite(jnum(rec, "view_changes")))
        fprintf(out,
                "view changes  %.0f during the run (view %.0f at the start, %.0f at the end)\n",
                jnum(rec, "view_changes"), jnum(rec, "view_start"), jnum(rec, "view_end"));
    else
        fprintf(out, "view changes  n/a (no admin socket readable here)\n");
    print_nodes(out, rec);
    if (isfinite(jnum(rec, "bench_cpu_percent")))
        fprintf(out, "bench client  cpu %.1f%% (all clients, one thread, this machine)\n",
                jnum(rec, "bench_cpu_percent"));
    print_where(out, rec);
    print_signatures(out, rec);
}

/* ------------------------------------------------------------ compare */

typedef struct figure {
    const char *path, *name;
    int better; /* +1 higher is better, -1 lower is better, 0 neither */
    bool time;
} figure;

static const figure FIGURES[] = {
    {"throughput_ops_s", "throughput ops/s", +1, false},
    {"latency_us.p50", "latency p50", -1, true},
    {"latency_us.p90", "latency p90", -1, true},
    {"latency_us.p99", "latency p99", -1, true},
    {"latency_us.p999", "latency p99.9", -1, true},
    {"latency_us.max", "latency max", -1, true},
    {"errors", "errors", -1, false},
    {"timeouts", "timeouts", -1, false},
    {"missed", "missed", -1, false},
    {"view_changes", "view changes", -1, false},
    {"signatures.verifications_per_op", "verifications/op", -1, false},
    {"signatures.verify_us", "verify us", -1, false},
    {"signatures.bound_ops_s", "bound ops/s", +1, false},
    {"signatures.fraction_of_bound", "fraction of bound", +1, false},
    {"bench_cpu_percent", "bench client cpu%", 0, false},
};

static void fmt_figure(const figure *f, double v, char *buf, size_t cap)
{
    if (!isfinite(v))
        snprintf(buf, cap, "n/a");
    else if (f->time)
        fmt_us(v, buf, cap);
    else
        snprintf(buf, cap, "%.4g", v);
}

int bench_report_compare(FILE *out, json_t *baseline, json_t *current, double threshold_pct,
                         json_t **changes, char *err, size_t errlen)
{
    if (json_is_array(baseline))
        return fb_errf(err, errlen, FB_EINVAL,
                       "it holds an ablation (a JSON array); compare with a single run's --json");
    if (!json_is_object(baseline) || !isfinite(jnum(baseline, "throughput_ops_s")) ||
        !isfinite(jnum(baseline, "latency_us.p99")))
        return fb_errf(err, errlen, FB_EINVAL,
                       "not a 'fedbft bench --json' record (no throughput_ops_s / latency_us.p99)");
    json_t *ch = json_object();
    int regression = 0;
    if (out)
        fprintf(out, "\ncompared with the baseline (threshold %g%%):\n  %-20s %-12s %-12s %s\n",
                threshold_pct, "figure", "baseline", "current", "change");
    for (size_t k = 0; k < sizeof FIGURES / sizeof FIGURES[0]; k++) {
        const figure *f = &FIGURES[k];
        double b = jnum(baseline, f->path), c = jnum(current, f->path);
        bool have = isfinite(b) && isfinite(c);
        double pct = !have ? NAN : b != 0 ? (c - b) / fabs(b) * 100 : (c == 0 ? 0 : NAN);
        bool bad = false;
        if (isfinite(pct) && strcmp(f->path, "throughput_ops_s") == 0)
            bad = pct < -threshold_pct;
        else if (isfinite(pct) && strcmp(f->path, "latency_us.p99") == 0)
            bad = pct > threshold_pct;
        regression |= bad;
        json_object_set_new(ch, f->path,
                            json_pack("{s:o,s:o,s:o,s:b}", "baseline", num_or_null(isfinite(b), b),
                                      "current", num_or_null(isfinite(c), c), "change_percent",
                                      num_or_null(isfinite(pct), pct), "regression", bad));
        if (!out)
            continue;
        char bs[32], cs[32], ps[32];
        fmt_figure(f, b, bs, sizeof bs);
        fmt_figure(f, c, cs, sizeof cs);
        if (isfinite(pct))
            snprintf(ps, sizeof ps, "%+.1f%%", pct);
        else
            snprintf(ps, sizeof ps, "%s", have ? "(from 0)" : "n/a");
        const char *note = bad ? "  REGRESSION"
                           : isfinite(pct) && f->better && pct * f->better > threshold_pct
                               ? "  better"
                               : "";
        fprintf(out, "  %-20s %-12s %-12s %s%s\n", f->name, bs, cs, ps, note);
    }
    if (out)
        fprintf(out, "result: %s\n",
                regression ? "REGRESSION (throughput fell or p99 latency rose by more than the "
                             "threshold)"
                           : "no regression beyond the threshold");
    json_object_set_new(ch, "threshold_percent", json_real(threshold_pct));
    json_object_set_new(ch, "regression", json_boolean(regression));
    if (changes)
        *changes = ch;
    else
        json_decref(ch);
    return regression;
}

/* ------------------------------------------------------------ ablation */

void bench_report_ablation(FILE *out, json_t *rows)
{
    json_t *base = json_array_get(rows, 0), *any = NULL, *r;
    size_t i;
    json_array_foreach(rows, i, r)
    {
        if (!any && json_object_get(r, "config"))
            any = r;
    }
    bool base_ok = base && !json_object_get(base, "error");
    double t0 = base_ok ? jnum(base, "throughput_ops_s") : NAN;
    double p0 = base_ok ? jnum(base, "latency_us.p99") : NAN;
    if (any)
        fprintf(out,
                "\nablation: %.0f replicas, %.0f clients, %.0f-byte values, measured %g s each\n",
                jnum(any, "config.nodes"), jnum(any, "config.clients"),
                jnum(any, "config.payload_bytes"), jnum(any, "config.duration_s"));
    else
        fprintf(out, "\nablation: no configuration ran\n");
    fprintf(out, "%-18s %14s %10s %10s %14s %12s\n", "configuration", "throughput", "p50", "p99",
            "tput/default", "p99/default");
    json_array_foreach(rows, i, r)
    {
        const char *label = jstr(r, "label");
        if (json_object_get(r, "error")) {
            fprintf(out, "%-18s FAILED: %s\n", label, jstr(r, "error"));
            continue;
        }
        char tput[24], p50[24], p99[24], rt[16] = "n/a", rp[16] = "n/a";
        snprintf(tput, sizeof tput, "%.1f ops/s", jnum(r, "throughput_ops_s"));
        fmt_us(jnum(r, "latency_us.p50"), p50, sizeof p50);
        fmt_us(jnum(r, "latency_us.p99"), p99, sizeof p99);
        if (isfinite(t0) && t0 > 0)
            snprintf(rt, sizeof rt, "%.2f", jnum(r, "throughput_ops_s") / t0);
        if (isfinite(p0) && p0 > 0)
            snprintf(rp, sizeof rp, "%.2f", jnum(r, "latency_us.p99") / p0);
        fprintf(out, "%-18s %14s %10s %10s %14s %12s\n", label, tput, p50, p99, rt, rp);
    }
}
