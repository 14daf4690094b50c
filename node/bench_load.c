/* bench_load.c - closed- and open-loop BFT client load on one libuv loop,
 * with the warmup / measured window / drain phases and the progress line. */
#include "bench_load.h"

#include "client.h"
#include "fb_error.h"

#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define TICK_MS 100 /* interrupt check and progress clock */
#define CONNECT_POLL_MS 10
#define CONNECT_WAIT_S 10 /* for every client's links before the warm-up */

typedef enum phase { PH_WARMUP, PH_MEASURE, PH_DRAIN, PH_CLOSING } phase;

typedef struct lclient {
    struct bload *ld;
    fb_client *c;
    fb_identity id;
    uint32_t idx;
    bool busy, is_read;
    uint64_t t0;                /* submit time, us */
    uint64_t next_key, written; /* puts issued; puts agreed (one outstanding: in order) */
    char key[96];
} lclient;

typedef struct bload {
    const bench_load_config *cfg;
    bench_load_result *res;
    uv_loop_t loop;
    lclient *cl;
    uint32_t n, inflight;
    uint32_t *idle, nidle; /* open loop: clients free to take an arrival */
    phase ph;
    bool drain_expired;
    uv_timer_t phase_t, tick_t, arrive_t;
    int open_handles;
    /* snapshots on a worker thread, one at a time, in order */
    uv_work_t work;
    bool work_busy;
    int snaps_queued, snaps_started;
    int snap_which[2];
    uint64_t t_connect, t_start, t_measure;
    uint8_t *value;
    uint64_t rng;
    double next_arrival; /* mono us */
    char runid[17];
    /* progress */
    bool tty, shown;
    uint32_t ticks;
    uint64_t done_total, last_done, last_t;
} bload;

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* splitmix64: the arrival gaps and the read choices (no need for crypto). */
static uint64_t next_rand(bload *ld)
{
    uint64_t z = (ld->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double unit_rand(bload *ld)
{
    return (double)(next_rand(ld) >> 11) / 9007199254740992.0; /* [0, 1) */
}

static void schedule_finish(bload *ld);
static void issue(lclient *lc);

/* ------------------------------------------------------------ snapshots */

static void snap_work(uv_work_t *w)
{
    bload *ld = w->data;
    ld->cfg->snapshot(ld->cfg->snapshot_arg, ld->snap_which[ld->snaps_started - 1]);
}

static void start_snapshot(bload *ld);

static void snap_done(uv_work_t *w, int status)
{
    (void)status;
    bload *ld = w->data;
    ld->work_busy = false;
    start_snapshot(ld);
    schedule_finish(ld);
}

static void start_snapshot(bload *ld)
{
    if (ld->work_busy || ld->snaps_started == ld->snaps_queued)
        return;
    ld->snaps_started++;
    ld->work.data = ld;
    ld->work_busy = uv_queue_work(&ld->loop, &ld->work, snap_work, snap_done) == 0;
}

static void queue_snapshot(bload *ld, int which)
{
    if (!ld->cfg->snapshot || ld->snaps_queued == 2)
        return;
    ld->snap_which[ld->snaps_queued++] = which;
    start_snapshot(ld);
}

/* ------------------------------------------------------------ progress */

static void progress(bload *ld, bool final)
{
    uint64_t now = mono_us();
    double dt = (double)(now - ld->last_t) / 1e6;
    double rate = dt > 0 ? (double)(ld->done_total - ld->last_done) / dt : 0;
    ld->last_done = ld->done_total;
    ld->last_t = now;
    if (final) {
        if (ld->tty && ld->shown)
            fprintf(stderr, "\r\033[K");
        return;
    }
    static const char *names[] = {"warmup", "measure", "drain", "drain"};
    const bench_load_result *r = ld->res;
    fprintf(stderr, "%s%s: %5.1f s %-7s committed %llu (%llu in window), %.0f ops/s now",
            ld->tty ? "\r\033[K" : "", ld->cfg->label, (double)(now - ld->t_start) / 1e6,
            names[ld->ph], (unsigned long long)ld->done_total, (unsigned long long)r->ops, rate);
    if (r->errors + r->timeouts + r->missed)
        fprintf(stderr, ", %llu errors, %llu timeouts, %llu missed", (unsigned long long)r->errors,
                (unsigned long long)r->timeouts, (unsigned long long)r->missed);
    fputs(ld->tty ? "" : "\n", stderr);
    fflush(stderr);
    ld->shown = true;
}

/* ------------------------------------------------------------ requests */

static void make_idle(bload *ld, lclient *lc)
{
    if (ld->cfg->rate > 0)
        ld->idle[ld->nidle++] = lc->idx;
}

static void on_done(void *arg, int status, const Fedbft__Result *res, uint64_t seq)
{
    (void)seq;
    lclient *lc = arg;
    bload *ld = lc->ld;
    uint64_t now = mono_us();
    lc->busy = false;
    ld->inflight--;
    ld->done_total++;
    bool ok = status == 0 && res &&
              (res->status == FEDBFT__RESULT__STATUS__STATUS_OK ||
               (lc->is_read && res->status == FEDBFT__RESULT__STATUS__STATUS_NOT_FOUND));
    if (ok && !lc->is_read)
        lc->written++;
    if (ld->ph == PH_MEASURE) {
        bench_load_result *r = ld->res;
        if (status == FB_EIO)
            r->timeouts++;
        else if (!ok)
            r->errors++;
        else {
            uint64_t lat = now - lc->t0;
            r->ops++;
            bench_hist_record(&r->all, lat);
            if (lc->is_read) {
                r->reads++;
                bench_hist_record(&r->read, lat);
            } else {
                r->writes++;
                bench_hist_record(&r->write, lat);
            }
        }
    }
    if (ld->ph >= PH_DRAIN) {
        schedule_finish(ld);
        return;
    }
    if (ld->cfg->rate > 0)
        make_idle(ld, lc);
    else
        issue(lc);
}

/* A key some client of this run has written, or one nobody has. */
static void pick_read_key(bload *ld, lclient *lc)
{
    lclient *from = &ld->cl[next_rand(ld) % ld->n];
    if (from->written == 0)
        from = lc;
    if (from->written == 0)
        snprintf(lc->key, sizeof lc->key, "bench/%s/none", ld->runid);
    else
        snprintf(lc->key, sizeof lc->key, "bench/%s/%u/%llu", ld->runid, from->idx,
                 (unsigned long long)(next_rand(ld) % from->written));
}

static void issue(lclient *lc)
{
    bload *ld = lc->ld;
    Fedbft__Operation op = FEDBFT__OPERATION__INIT;
    lc->is_read = ld->cfg->read_ratio > 0 && unit_rand(ld) < ld->cfg->read_ratio;
    if (lc->is_read) {
        pick_read_key(ld, lc);
        op.kind = FEDBFT__OPERATION__KIND__OP_GET;
    } else {
        snprintf(lc->key, sizeof lc->key, "bench/%s/%u/%llu", ld->runid, lc->idx,
                 (unsigned long long)lc->next_key++);
        op.kind = FEDBFT__OPERATION__KIND__OP_PUT;
        op.value = (ProtobufCBinaryData){ld->cfg->payload, ld->value};
    }
    op.key = (ProtobufCBinaryData){strlen(lc->key), (uint8_t *)lc->key};
    lc->t0 = mono_us();
    if (fb_client_submit(lc->c, &op, lc->is_read, on_done, lc) != 0) {
        if (ld->ph == PH_MEASURE)
            ld->res->errors++;
        make_idle(ld, lc);
        return;
    }
    lc->busy = true;
    ld->inflight++;
}

/* ------------------------------------------------------------ open loop */

static void schedule_arrival(bload *ld);

static void on_arrival(uv_timer_t *t)
{
    bload *ld = t->data;
    uint64_t now = mono_us();
    double mean_gap = 1e6 / ld->cfg->rate;
    while (ld->ph < PH_DRAIN && ld->next_arrival <= (double)now) {
        if (ld->nidle == 0) {
            /* Every client is busy: the arrivals due by now are all missed.
             * Count them at their expected number instead of drawing each
             * one (at a high rate that loop would eat the bench's CPU). */
            double k = floor(((double)now - ld->next_arrival) / mean_gap) + 1;
            if (ld->ph == PH_MEASURE)
                ld->res->missed += (uint64_t)k;
            ld->next_arrival += k * mean_gap;
            break;
        }
        issue(&ld->cl[ld->idle[--ld->nidle]]);
        ld->next_arrival += -log(1.0 - unit_rand(ld)) * mean_gap;
    }
    schedule_arrival(ld);
}

static void schedule_arrival(bload *ld)
{
    if (ld->ph >= PH_DRAIN)
        return;
    double wait_us = ld->next_arrival - (double)mono_us();
    uint64_t ms = wait_us <= 0 ? 0 : (uint64_t)ceil(wait_us / 1000.0);
    uv_timer_start(&ld->arrive_t, on_arrival, ms, 0);
}

/* ------------------------------------------------------------ phases */

static void on_drain_over(uv_timer_t *t)
{
    bload *ld = t->data;
    ld->drain_expired = true;
    schedule_finish(ld);
}

static void close_window(uv_timer_t *t)
{
    bload *ld = t->data;
    uint64_t now = mono_us();
    ld->ph = PH_DRAIN;
    ld->res->measured_s = (double)(now - ld->t_measure) / 1e6;
    uv_timer_stop(&ld->arrive_t);
    queue_snapshot(ld, 1);
    uv_timer_start(&ld->phase_t, on_drain_over, BENCH_DRAIN_MS, 0);
    schedule_finish(ld);
}

static void open_window(uv_timer_t *t)
{
    bload *ld = t->data;
    ld->ph = PH_MEASURE;
    ld->t_measure = mono_us();
    queue_snapshot(ld, 0);
    uv_timer_start(&ld->phase_t, close_window, (uint64_t)(ld->cfg->duration_s * 1000 + 0.5), 0);
}

static void on_handle_closed(uv_handle_t *h)
{
    ((bload *)h->data)->open_handles--;
}

static void on_client_closed(void *arg)
{
    ((bload *)arg)->open_handles--;
}

static void close_all(bload *ld)
{
    ld->ph = PH_CLOSING;
    uv_close((uv_handle_t *)&ld->phase_t, on_handle_closed);
    uv_close((uv_handle_t *)&ld->tick_t, on_handle_closed);
    uv_close((uv_handle_t *)&ld->arrive_t, on_handle_closed);
    ld->open_handles += 3;
    for (uint32_t i = 0; i < ld->n; i++)
        if (ld->cl[i].c) {
            ld->open_handles++;
            fb_client_close(ld->cl[i].c, on_client_closed, ld);
        }
}

static void finish_check(uv_timer_t *t)
{
    bload *ld = t->data;
    if (ld->ph != PH_DRAIN || ld->work_busy || ld->snaps_started < ld->snaps_queued)
        return;
    if (ld->inflight > 0 && !ld->drain_expired)
        return;
    bench_load_result *r = ld->res;
    r->unfinished = ld->inflight;
    for (uint32_t i = 0; i < ld->n; i++) {
        fb_client_stats st;
        fb_client_get_stats(ld->cl[i].c, &st);
        r->retransmits += st.retransmits;
        r->fallbacks += st.fallbacks;
    }
    progress(ld, true);
    close_all(ld);
}

/* Finish from a timer callback, never from inside a client's callback (the
 * client is still using itself there). */
static void schedule_finish(bload *ld)
{
    if (ld->ph == PH_DRAIN && !uv_is_closing((uv_handle_t *)&ld->phase_t) &&
        (ld->inflight == 0 || ld->drain_expired))
        uv_timer_start(&ld->phase_t, finish_check, 0, 0);
}

static void on_tick(uv_timer_t *t)
{
    bload *ld = t->data;
    if (ld->ph >= PH_CLOSING)
        return;
    if (ld->cfg->interrupted && ld->cfg->interrupted() && !ld->res->interrupted) {
        ld->res->interrupted = true;
        if (ld->ph == PH_MEASURE)
            ld->res->measured_s = (double)(mono_us() - ld->t_measure) / 1e6;
        ld->ph = PH_DRAIN;
        ld->drain_expired = true;
        uv_timer_stop(&ld->arrive_t);
        uv_timer_start(&ld->phase_t, finish_check, 0, 0);
        return;
    }
    ld->ticks++;
    uint32_t every = ld->tty ? 1000 / TICK_MS : BENCH_PROGRESS_PLAIN_S * 1000 / TICK_MS;
    if (ld->ph < PH_DRAIN && ld->ticks % every == 0)
        progress(ld, false);
}

/* ------------------------------------------------------------ setup */

static int make_clients(bload *ld, char *err, size_t errlen)
{
    const bench_load_config *cfg = ld->cfg;
    for (uint32_t i = 0; i < ld->n; i++) {
        lclient *lc = &ld->cl[i];
        lc->ld = ld;
        lc->idx = i;
        char path[1200];
        snprintf(path, sizeof path, "%s/client%u/node.key", cfg->keys_dir, i);
        char why[512];
        int rc = fb_key_load(path, &lc->id, why, sizeof why);
        if (rc)
            return fb_errf(err, errlen, rc,
                           "%s; --clients %u needs client keys client0..client%u in %s", why, ld->n,
                           ld->n - 1, cfg->keys_dir);
        fb_client_config cc = {.loop = &ld->loop,
                               .cluster = cfg->cluster,
                               .id = &lc->id,
                               .timeout_ms = cfg->timeout_ms};
        rc = fb_client_new(&cc, &lc->c, why, sizeof why);
        if (rc == 0)
            rc = fb_client_start(lc->c, why, sizeof why);
        if (rc)
            return fb_errf(err, errlen, rc, "client %u (%s): %s", i, path, why);
    }
    return 0;
}

static void start_load(bload *ld);

/* Before the warm-up: every client's links to every replica authenticated
 * (or CONNECT_WAIT_S passed).  Hundreds of clients handshaking at once keep
 * the replicas busy for a while; requests sent meanwhile would wait behind
 * the handshakes, some past the clients' 1 s retransmit, and a request
 * re-sent to every replica starts the backups' view-change timers. */
static void await_links(uv_timer_t *t)
{
    bload *ld = t->data;
    uint32_t ready = 0;
    for (uint32_t i = 0; i < ld->n; i++)
        ready += fb_client_links_up(ld->cl[i].c) == ld->cfg->cluster->n;
    bool late = mono_us() - ld->t_connect > (uint64_t)CONNECT_WAIT_S * 1000000;
    bool stop = ld->cfg->interrupted && ld->cfg->interrupted();
    if (ready < ld->n && !late && !stop)
        return;
    uv_timer_stop(t);
    if (ready < ld->n && !stop)
        fprintf(stderr,
                "%s: %u of %u clients have no link to every replica after %d s; starting anyway\n",
                ld->cfg->label, ld->n - ready, ld->n, CONNECT_WAIT_S);
    start_load(ld);
}

static void start_load(bload *ld)
{
    ld->t_start = ld->last_t = mono_us();
    ld->ph = PH_WARMUP;
    uv_timer_start(&ld->tick_t, on_tick, TICK_MS, TICK_MS);
    uv_timer_start(&ld->phase_t, open_window, (uint64_t)(ld->cfg->warmup_s * 1000 + 0.5), 0);
    if (ld->cfg->rate > 0) {
        for (uint32_t i = ld->n; i-- > 0;)
            make_idle(ld, &ld->cl[i]);
        ld->next_arrival = (double)ld->t_start;
        schedule_arrival(ld);
    } else {
        for (uint32_t i = 0; i < ld->n; i++)
            issue(&ld->cl[i]);
    }
}

int bench_load_run(const bench_load_config *cfg, bench_load_result *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    bench_hist_init(&out->all);
    bench_hist_init(&out->read);
    bench_hist_init(&out->write);
    bload *ld = calloc(1, sizeof *ld);
    if (!ld)
        return fb_errf(err, errlen, FB_ENOMEM, "out of memory");
    ld->cfg = cfg;
    ld->res = out;
    ld->n = cfg->clients;
    ld->tty = isatty(STDERR_FILENO);
    ld->cl = calloc(ld->n, sizeof *ld->cl);
    ld->idle = calloc(ld->n, sizeof *ld->idle);
    ld->value = malloc(cfg->payload ? cfg->payload : 1);
    int rc = ld->cl && ld->idle && ld->value ? 0 : fb_errf(err, errlen, FB_ENOMEM, "out of memory");
    uint8_t seed[8];
    randombytes_buf(seed, sizeof seed);
    memcpy(&ld->rng, seed, sizeof seed);
    sodium_bin2hex(ld->runid, sizeof ld->runid, seed, sizeof seed);
    if (rc == 0) {
        randombytes_buf(ld->value, cfg->payload);
        uv_loop_init(&ld->loop);
        uv_timer_init(&ld->loop, &ld->phase_t);
        uv_timer_init(&ld->loop, &ld->tick_t);
        uv_timer_init(&ld->loop, &ld->arrive_t);
        ld->phase_t.data = ld->tick_t.data = ld->arrive_t.data = ld;
        rc = make_clients(ld, err, errlen);
        if (rc == 0) {
            ld->t_connect = mono_us();
            uv_timer_start(&ld->phase_t, await_links, CONNECT_POLL_MS, CONNECT_POLL_MS);
        } else {
            close_all(ld);
        }
        uv_run(&ld->loop, UV_RUN_DEFAULT);
        uv_loop_close(&ld->loop);
    }
    for (uint32_t i = 0; ld->cl && i < ld->n; i++) {
        fb_client_free(ld->cl[i].c);
        fb_key_wipe(&ld->cl[i].id);
    }
    free(ld->cl);
    free(ld->idle);
    free(ld->value);
    free(ld);
    return rc;
}
