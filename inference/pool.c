/* pool.c - kn_pool: a fixed set of worker threads that run one job at a
 * time and sleep in the kernel (futex) between jobs, never spinning.
 *
 * A job's tasks (iths) are claimed, not assigned.  The caller publishes
 * (fn, arg, n_tasks), bumps the generation (one FUTEX_WAKE for all workers),
 * runs ith = 0, then keeps claiming unclaimed iths itself; a worker that
 * wakes claims what is left.  Why: on the 2-vCPU KVM guest this was written
 * on (no guest halt polling), waking a sleeping worker costs the caller 7-9 us
 * in the wake system call and the worker 20-45 us before it runs, longer than
 * most of a decode step's matmuls take.  With claiming, a job that is done
 * before a worker is up never waits for it, and a slow wake costs at most
 * the serial time.  Every ith still runs exactly once, and run returns only
 * when all have returned.
 *
 * The caller sleeps only when a worker is inside a claimed ith when the
 * caller runs out of work; the last such worker wakes it, and only if the
 * caller said it was going to sleep.  The futexes are private words in the
 * pool, so no mutex is taken on the hot path.  Linux only. */
#include "kernels.h"

#include "fb_error.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef struct kn_worker {
    kn_pool *pool;
    int ith;
    pthread_t thread;
} kn_worker;

struct kn_pool {
    int n_threads; /* counting the caller */
    int n_started; /* workers created */
    kn_worker *workers;
    kn_task_fn fn; /* the current job, read only after a successful claim */
    void *arg;
    _Atomic int n_tasks; /* of the current job, stored before its claim word */
    uint32_t next_gen;
    _Atomic uint64_t claim;          /* generation << 32 | next unclaimed ith */
    _Atomic uint32_t gen;            /* the latest generation; workers sleep on it */
    _Atomic uint32_t busy;           /* workers claiming or running an ith */
    _Atomic uint32_t caller_waiting; /* the caller sleeps on busy */
    _Atomic int stop;
};

static void futex_wait(_Atomic uint32_t *addr, uint32_t expected)
{
    /* Returns at once when *addr != expected (no lost wake-up); EINTR and
     * spurious returns are handled by the callers' loops. */
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *addr, int n)
{
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

/* The next unclaimed ith of job g, or -1 when g is over or fully claimed. */
static int claim_next(kn_pool *p, uint32_t g)
{
    uint64_t c = atomic_load(&p->claim);
    for (;;) {
        /* n_tasks may already belong to a later job; then the claim word
         * has changed too and the exchange fails. */
        int n = atomic_load_explicit(&p->n_tasks, memory_order_relaxed);
        if ((uint32_t)(c >> 32) != g || (uint32_t)c >= (uint32_t)n)
            return -1;
        if (atomic_compare_exchange_weak(&p->claim, &c, c + 1))
            return (int)(uint32_t)c;
    }
}

static void busy_done(kn_pool *p)
{
    /* seq_cst pairs with the caller's store to caller_waiting: either we see
     * it set, or the caller sees busy at 0 and does not sleep. */
    if (atomic_fetch_sub(&p->busy, 1) == 1 && atomic_load(&p->caller_waiting))
        futex_wake(&p->busy, 1);
}

static void *worker_main(void *opaque)
{
    kn_worker *w = opaque;
    kn_pool *p = w->pool;
    uint32_t seen = 0;
    for (;;) {
        uint32_t g;
        while ((g = atomic_load(&p->gen)) == seen)
            futex_wait(&p->gen, seen);
        seen = g;
        if (atomic_load(&p->stop))
            return NULL;
        for (;;) {
            /* busy goes up before the claim, so a caller that finds every
             * ith claimed also finds this worker busy and waits for it. */
            atomic_fetch_add(&p->busy, 1);
            int ith = claim_next(p, g);
            if (ith < 0) {
                busy_done(p);
                break;
            }
            p->fn(p->arg, ith, atomic_load_explicit(&p->n_tasks, memory_order_relaxed));
            busy_done(p);
        }
    }
}

/* Publish job generation g (fn and arg already stored) and wake every
 * worker. */
static uint32_t start_job(kn_pool *p)
{
    uint32_t g = ++p->next_gen;
    if (g == 0) /* 0 is the workers' initial "seen"; skip it on wrap */
        g = ++p->next_gen;
    atomic_store(&p->claim, (uint64_t)g << 32 | 1); /* ith 0 is the caller's */
    atomic_store(&p->gen, g);
    futex_wake(&p->gen, INT_MAX);
    return g;
}

static void wait_workers(kn_pool *p)
{
    if (atomic_load(&p->busy) == 0)
        return;
    atomic_store(&p->caller_waiting, 1);
    uint32_t v;
    while ((v = atomic_load(&p->busy)) != 0)
        futex_wait(&p->busy, v);
    atomic_store(&p->caller_waiting, 0);
}

static void stop_workers(kn_pool *p)
{
    if (p->n_started == 0)
        return;
    atomic_store(&p->n_tasks, 0);
    atomic_store(&p->stop, 1);
    start_job(p);
    for (int i = 0; i < p->n_started; i++)
        pthread_join(p->workers[i].thread, NULL);
    p->n_started = 0;
}

int kn_pool_new(int n_threads, kn_pool **out)
{
    *out = NULL;
    if (n_threads < 1 || n_threads > 1024)
        return FB_EINVAL;
    kn_pool *p = calloc(1, sizeof *p);
    if (!p)
        return FB_ENOMEM;
    p->n_threads = n_threads;
    if (n_threads > 1) {
        p->workers = calloc((size_t)n_threads - 1, sizeof *p->workers);
        if (!p->workers) {
            free(p);
            return FB_ENOMEM;
        }
    }
    for (int i = 0; i < n_threads - 1; i++) {
        kn_worker *w = &p->workers[i];
        w->pool = p;
        w->ith = i + 1;
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            kn_pool_free(p);
            return FB_ENOMEM;
        }
        p->n_started++;
        char name[16];
        snprintf(name, sizeof name, "fb-kn%d", i + 1);
        pthread_setname_np(w->thread, name);
    }
    *out = p;
    return 0;
}

void kn_pool_free(kn_pool *p)
{
    if (!p)
        return;
    stop_workers(p);
    free(p->workers);
    free(p);
}

int kn_pool_threads(const kn_pool *p)
{
    return p->n_threads;
}

void kn_pool_run(kn_pool *p, kn_task_fn fn, void *arg)
{
    kn_pool_run_tasks(p, fn, arg, p->n_threads);
}

void kn_pool_run_tasks(kn_pool *p, kn_task_fn fn, void *arg, int n_tasks)
{
    if (n_tasks < 1)
        return;
    if (p->n_started == 0 || n_tasks == 1) {
        for (int ith = 0; ith < n_tasks; ith++)
            fn(arg, ith, n_tasks);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store_explicit(&p->n_tasks, n_tasks, memory_order_relaxed);
    uint32_t g = start_job(p);
    fn(arg, 0, n_tasks);
    int ith;
    while ((ith = claim_next(p, g)) >= 0)
        fn(arg, ith, n_tasks);
    wait_workers(p);
}
