/* fb_netem.c - delay, jitter and loss for the packets an iptables NFQUEUE
 * rule hands over: a stand-in for `tc qdisc add ... netem` on kernels built
 * without sch_netem (tests/netns/lib.sh uses it there).
 *
 *   fb_netem --queue N [--delay MS] [--jitter MS] [--loss PCT] [--seed S]
 *            [--maxlen N]
 *
 * Run it inside the network namespace whose outgoing packets it should shape,
 * next to a rule such as
 *   iptables -A OUTPUT -o eth0 -j NFQUEUE --queue-num N --queue-bypass
 * Each packet is dropped with probability PCT/100; every other one gets its
 * NF_ACCEPT verdict DELAY +- JITTER ms after it arrived (uniform in that range,
 * like netem's default distribution, never below 0, so packets may reorder as
 * they do under netem).  The kernel holds the packet until its verdict.
 *
 * Bounded: the queue's maxlen (nfq_set_queue_maxlen) caps the packets waiting
 * in the kernel for a verdict, and the queue fails open (NFQA_CFG_F_FAIL_OPEN):
 * a packet beyond maxlen is accepted at once, unshaped, rather than dropped.
 * The pending verdicts sit in a min-heap of the same capacity.  With
 * --queue-bypass on the rule, packets also pass unshaped while no fb_netem is
 * bound to the queue, so starting and stopping it never blackholes a link.
 *
 * Runs until SIGTERM or SIGINT; then it accepts every held packet, unbinds and
 * prints its counters on stderr.  One thread, ppoll() with a timeout to the
 * next due verdict (a timespec, for sub-millisecond timing).
 */
/* netinet/in.h (via arpa/inet.h) before linux/netfilter.h, or their in.h clash */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <linux/netfilter.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libnetfilter_queue/libnetfilter_queue.h>

#define MAX_DELAY_MS 60000.0
#define DEFAULT_MAXLEN 10000u
#define MAX_MAXLEN (1u << 20)
#define RCVBUF_BYTES (8u << 20) /* room for bursts while verdicts are being sent */
#define RECV_BUF_BYTES (256u << 10)

/* A packet waiting for its verdict: due time, then arrival order. */
typedef struct pending {
    uint64_t due_ns;
    uint64_t order;
    uint32_t id;
} pending;

typedef struct netem {
    /* settings */
    unsigned queue;
    double delay_ms, jitter_ms, loss_pct;
    uint64_t seed;
    uint32_t maxlen;
    /* state */
    struct nfq_q_handle *qh;
    pending *heap;
    size_t nheap;
    uint64_t rng, order;
    /* counters */
    uint64_t seen, dropped, delayed, overflow, verdict_errors, enobufs;
    size_t max_pending;
} netem;

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
    stop_signal = sig;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* splitmix64: small, seedable, good enough for a loss coin and a jitter. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static double rng_unit(uint64_t *s) /* uniform in [0, 1) */
{
    return (double)(rng_next(s) >> 11) * 0x1.0p-53;
}

/* ------------------------------------------------------------ the heap */

static bool before(const pending *a, const pending *b)
{
    return a->due_ns < b->due_ns || (a->due_ns == b->due_ns && a->order < b->order);
}

static void heap_push(netem *ne, pending p)
{
    size_t i = ne->nheap++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (!before(&p, &ne->heap[up]))
            break;
        ne->heap[i] = ne->heap[up];
        i = up;
    }
    ne->heap[i] = p;
}

static pending heap_pop(netem *ne)
{
    pending top = ne->heap[0];
    pending last = ne->heap[--ne->nheap];
    size_t i = 0, n = ne->nheap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && before(&ne->heap[c + 1], &ne->heap[c]))
            c++;
        if (!before(&ne->heap[c], &last))
            break;
        ne->heap[i] = ne->heap[c];
        i = c;
    }
    if (n > 0)
        ne->heap[i] = last;
    return top;
}

/* ------------------------------------------------------------ verdicts */

static void verdict(netem *ne, uint32_t id, uint32_t v)
{
    if (nfq_set_verdict(ne->qh, id, v, 0, NULL) < 0)
        ne->verdict_errors++;
}

/* A packet from the kernel: drop it now, or hold it until its due time. */
static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa,
                     void *data)
{
    (void)qh;
    (void)msg;
    netem *ne = data;
    struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
    if (!ph)
        return 0;
    uint32_t id = ntohl(ph->packet_id);
    ne->seen++;
    if (ne->loss_pct > 0 && rng_unit(&ne->rng) * 100.0 < ne->loss_pct) {
        ne->dropped++;
        verdict(ne, id, NF_DROP);
        return 0;
    }
    double ms = ne->delay_ms;
    if (ne->jitter_ms > 0)
        ms += (2.0 * rng_unit(&ne->rng) - 1.0) * ne->jitter_ms;
    if (ms <= 0 || ne->nheap == ne->maxlen) {
        if (ms > 0)
            ne->overflow++; /* cannot happen while the kernel honours maxlen */
        verdict(ne, id, NF_ACCEPT);
        return 0;
    }
    heap_push(ne, (pending){now_ns() + (uint64_t)(ms * 1e6), ne->order++, id});
    ne->delayed++;
    if (ne->nheap > ne->max_pending)
        ne->max_pending = ne->nheap;
    return 0;
}

/* Accept every held packet due by `now` (all of them with now = UINT64_MAX). */
static void release_due(netem *ne, uint64_t now)
{
    while (ne->nheap > 0 && ne->heap[0].due_ns <= now)
        verdict(ne, heap_pop(ne).id, NF_ACCEPT);
}

/* ------------------------------------------------------------ the loop */

/* Read every message waiting on the netlink socket; false on a fatal error. */
static bool drain(netem *ne, struct nfq_handle *h, int fd, char *buf)
{
    for (;;) {
        ssize_t n = recv(fd, buf, RECV_BUF_BYTES, MSG_DONTWAIT);
        if (n > 0) {
            nfq_handle_packet(h, buf, (int)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return true;
        if (n < 0 && errno == ENOBUFS) {
            /* The socket overflowed: the kernel dropped queue messages, and
             * their packets wait for a verdict that never comes (TCP sends
             * them again).  Counted; the loop goes on. */
            ne->enobufs++;
            continue;
        }
        fprintf(stderr, "fb_netem: reading queue %u: %s\n", ne->queue,
                n == 0 ? "socket closed" : strerror(errno));
        return false;
    }
}

static int run(netem *ne, struct nfq_handle *h)
{
    int fd = nfq_fd(h);
    char *buf = malloc(RECV_BUF_BYTES);
    if (!buf) {
        fprintf(stderr, "fb_netem: out of memory\n");
        return 1;
    }
    sigset_t block, orig;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigprocmask(SIG_BLOCK, &block, &orig);
    printf("fb_netem: queue %u ready: delay %.3g ms, jitter %.3g ms, loss %.3g%%, maxlen %u, "
           "seed %" PRIu64 "\n",
           ne->queue, ne->delay_ms, ne->jitter_ms, ne->loss_pct, ne->maxlen, ne->seed);
    fflush(stdout);
    int rc = 0;
    while (!stop_signal) {
        uint64_t now = now_ns();
        release_due(ne, now);
        struct timespec ts, *timeout = NULL;
        if (ne->nheap > 0) {
            uint64_t wait = ne->heap[0].due_ns - now;
            ts.tv_sec = (time_t)(wait / 1000000000u);
            ts.tv_nsec = (long)(wait % 1000000000u);
            timeout = &ts;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int n = ppoll(&pfd, 1, timeout, &orig); /* signals only arrive in here */
        if (n < 0 && errno != EINTR) {
            fprintf(stderr, "fb_netem: poll: %s\n", strerror(errno));
            rc = 1;
            break;
        }
        if (n > 0 && !drain(ne, h, fd, buf)) {
            rc = 1;
            break;
        }
    }
    release_due(ne, UINT64_MAX); /* nothing stays held after we go */
    free(buf);
    return rc;
}

/* ------------------------------------------------------------ options */

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: fb_netem --queue N [--delay MS] [--jitter MS] [--loss PCT] [--seed S]\n"
            "                [--maxlen N]\n"
            "\n"
            "Delay, jitter and loss for the packets of an iptables NFQUEUE, a stand-in for\n"
            "tc netem where the kernel has no sch_netem.  Run it in the network namespace\n"
            "whose packets it shapes, beside a rule such as\n"
            "  iptables -A OUTPUT -o eth0 -j NFQUEUE --queue-num N --queue-bypass\n"
            "Each packet is dropped with probability PCT/100; each other one is accepted\n"
            "DELAY +- JITTER ms after it arrived (uniform, never below 0).  Runs until\n"
            "SIGTERM or SIGINT, then accepts every held packet and prints its counters on\n"
            "stderr.  Prints one line on stdout once bound: \"fb_netem: queue N ready: ...\".\n"
            "\n"
            "Options:\n"
            "  --queue N    the NFQUEUE number, 0..65535 (required)\n"
            "  --delay MS   mean one-way delay in milliseconds, 0..60000 (default 0)\n"
            "  --jitter MS  uniform jitter around the delay, 0..60000 (default 0)\n"
            "  --loss PCT   percent of packets dropped, 0..100, e.g. 1 or 0.5%% (default 0)\n"
            "  --seed S     seed of the loss and jitter draws (default: time and pid)\n"
            "  --maxlen N   packets held at most, 1..%u (default %u); the queue fails open:\n"
            "               beyond N, packets pass at once\n"
            "  --help       show this help\n"
            "\n"
            "Needs CAP_NET_ADMIN (root) in the namespace.  Exit status: 0 after a signal,\n"
            "1 when the queue cannot be bound or read, 2 for a usage error.\n",
            MAX_MAXLEN, DEFAULT_MAXLEN);
}

__attribute__((format(printf, 1, 2))) static int bad(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fb_netem: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(fb_netem --help for the options)\n");
    va_end(ap);
    return 2;
}

/* A decimal number in [lo, hi], with an optional trailing '%' when pct. */
static bool parse_num(const char *s, double lo, double hi, bool pct, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (pct && end != s && *end == '%')
        end++;
    if (end == s || *end || errno || !isfinite(v) || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static bool parse_u64(const char *s, uint64_t hi, uint64_t *out)
{
    char *end;
    errno = 0;
    if (*s < '0' || *s > '9')
        return false;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno || v > hi)
        return false;
    *out = v;
    return true;
}

static int parse_args(int argc, char **argv, netem *ne)
{
    static const struct option opts[] = {
        {"queue", required_argument, NULL, 'q'},  {"delay", required_argument, NULL, 'd'},
        {"jitter", required_argument, NULL, 'j'}, {"loss", required_argument, NULL, 'l'},
        {"seed", required_argument, NULL, 's'},   {"maxlen", required_argument, NULL, 'm'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
    bool have_queue = false, have_seed = false;
    uint64_t v;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        switch (c) {
        case 'q':
            if (!parse_u64(optarg, 65535, &v))
                return bad("--queue %s: must be a queue number 0..65535", optarg);
            ne->queue = (unsigned)v;
            have_queue = true;
            break;
        case 'd':
            if (!parse_num(optarg, 0, MAX_DELAY_MS, false, &ne->delay_ms))
                return bad("--delay %s: must be milliseconds 0..60000", optarg);
            break;
        case 'j':
            if (!parse_num(optarg, 0, MAX_DELAY_MS, false, &ne->jitter_ms))
                return bad("--jitter %s: must be milliseconds 0..60000", optarg);
            break;
        case 'l':
            if (!parse_num(optarg, 0, 100, true, &ne->loss_pct))
                return bad("--loss %s: must be a percentage 0..100 (e.g. 1 or 0.5%%)", optarg);
            break;
        case 's':
            if (!parse_u64(optarg, UINT64_MAX, &ne->seed))
                return bad("--seed %s: must be a non-negative integer", optarg);
            have_seed = true;
            break;
        case 'm':
            if (!parse_u64(optarg, MAX_MAXLEN, &v) || v == 0)
                return bad("--maxlen %s: must be 1..1048576 packets", optarg);
            ne->maxlen = (uint32_t)v;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case ':':
            return bad("%s needs a value", argv[optind - 1]);
        default:
            return bad("unknown option %s", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return bad("unexpected argument %s", argv[optind]);
    if (!have_queue)
        return bad("--queue N is required (the --queue-num of the NFQUEUE rule)");
    if (!have_seed)
        ne->seed = (uint64_t)time(NULL) * 1000003u ^ (uint64_t)getpid();
    ne->rng = ne->seed;
    return 0;
}

/* ------------------------------------------------------------ setup */

static struct nfq_handle *bind_queue(netem *ne)
{
    struct nfq_handle *h = nfq_open();
    if (!h) {
        fprintf(stderr,
                "fb_netem: cannot open a netfilter queue socket: %s (needs root / CAP_NET_ADMIN "
                "and the nfnetlink_queue module)\n",
                strerror(errno));
        return NULL;
    }
    ne->qh = nfq_create_queue(h, (uint16_t)ne->queue, on_packet, ne);
    if (!ne->qh) {
        fprintf(stderr,
                "fb_netem: cannot bind queue %u: %s (another program holds it, or the "
                "kernel lacks NFQUEUE support)\n",
                ne->queue, strerror(errno));
        nfq_close(h);
        return NULL;
    }
    const char *what = NULL;
    if (nfq_set_mode(ne->qh, NFQNL_COPY_META, 0) < 0)
        what = "set copy mode (metadata only)";
    else if (nfq_set_queue_maxlen(ne->qh, ne->maxlen) < 0)
        what = "set the queue's maxlen";
    else if (nfq_set_queue_flags(ne->qh, NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO,
                                 NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO) < 0)
        what = "make the queue fail open";
    if (what) {
        fprintf(stderr, "fb_netem: queue %u: cannot %s: %s\n", ne->queue, what, strerror(errno));
        nfq_destroy_queue(ne->qh);
        nfq_close(h);
        return NULL;
    }
    nfnl_rcvbufsiz(nfq_nfnlh(h), RCVBUF_BYTES);
    return h;
}

int main(int argc, char **argv)
{
    netem ne = {.maxlen = DEFAULT_MAXLEN};
    int rc = parse_args(argc, argv, &ne);
    if (rc)
        return rc;
    ne.heap = calloc(ne.maxlen, sizeof *ne.heap);
    if (!ne.heap) {
        fprintf(stderr, "fb_netem: out of memory for %u pending packets\n", ne.maxlen);
        return 1;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    struct nfq_handle *h = bind_queue(&ne);
    if (!h) {
        free(ne.heap);
        return 1;
    }
    rc = run(&ne, h);
    nfq_destroy_queue(ne.qh);
    nfq_close(h);
    fprintf(stderr,
            "fb_netem: queue %u: %" PRIu64 " packets, %" PRIu64 " dropped, %" PRIu64
            " delayed (at most %zu held), %" PRIu64 " passed unshaped (heap full), %" PRIu64
            " verdict errors, %" PRIu64 " socket overflows\n",
            ne.queue, ne.seen, ne.dropped, ne.delayed, ne.max_pending, ne.overflow,
            ne.verdict_errors, ne.enobufs);
    free(ne.heap);
    return rc;
}
